"""Training: the loop and its pieces, resume checkpoints, DDP, the model registry, the compile gate.

Modules: `loop` (fit), `steps` (one optimizer step, one epoch, validation), `resume` (the resumable
checkpoint), `scoring` (predict, auroc), `model_file` (models/model.pt), `models` (build_model),
`distributed` (torchrun/DDP), `compile_gate` (eager vs compiled comparison), `curves`, `inputs`
(params, store and split tables for a training run). Imports core, config, data and evaluation.
"""
