"""One `run(params, paths)` per DVC stage: what a stage does, without argparse or DVC.

`stages/<name>.py` parses its paths and calls `pathtrail.pipeline.<name>.run`; `stagekit` holds
what the stage entry points share (options, logging, clean exits). The only package that imports
every other one; nothing imports it but `stages/`.
"""
