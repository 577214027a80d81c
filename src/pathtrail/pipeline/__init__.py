"""One `run(params, paths)` per DVC stage: what a stage does, without argparse or DVC.

`stages/<name>.py` parses its paths and calls `pathtrail.pipeline.<name>.run`; `stagekit` holds
what the stage entry points share (options, logging, clean exits). It imports every package the
stages need (all but review and cli); nothing imports it but `stages/`.
"""
