"""Compose `pipelines/` into `params.yaml` exactly as `dvc exp run` does (Hydra, no run dirs)."""

from __future__ import annotations

import argparse
from pathlib import Path

REGENERATE = "make params   (or: .venv/bin/python -m pathtrail.config)"


def compose_params(config_dir: str | Path = "pipelines", overrides: list[str] | None = None) -> str:
    """The YAML text DVC writes to params.yaml for this config root and these overrides."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(Path(config_dir).resolve()), version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides or []))
    OmegaConf.resolve(cfg)
    return OmegaConf.to_yaml(cfg)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate params.yaml from pipelines/ (Hydra).")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. profile=fast train.epochs=2")
    parser.add_argument("--config-dir", default="pipelines")
    parser.add_argument("--out", default="params.yaml")
    args = parser.parse_args(argv)
    from pathtrail.core.files import write_text

    write_text(compose_params(args.config_dir, args.overrides), args.out)


if __name__ == "__main__":
    main()
