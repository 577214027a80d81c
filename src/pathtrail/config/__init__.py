"""Configuration: Hydra composition of pipelines/ into params.yaml, one typed section per stage.

Imports only `pathtrail.core`. Modules: `compose` (compose_params; `python -m pathtrail.config`
regenerates params.yaml), `loading` (read_params, load_section, from_dict, ParamsError), `sections`
(the frozen dataclass of every params section).
"""
