"""Multi-label training pieces (`data.label_mode: multilabel`): the loss and its per-label weights.

One logit per label, each an independent sigmoid. The loss is BCE-with-logits averaged over
samples and labels, with per-label positive weights and label smoothing:

    target' = target * (1 - eps) + eps / 2          (eps = train.label_smoothing)
    loss    = mean over (i, l) of -[w_l * t'_il * log s(z_il) + (1 - t'_il) * log(1 - s(z_il))]

`w_l` is the robust class weighting of the binary case (`loop.class_weights`: counts floored at
one sample, the extreme capped at 100x the other) applied to each label's negatives and
positives, i.e. `n_neg / n_pos` clipped to [1/100, 100]. tests/unit/test_multilabel.py checks
both against direct formulas and torch's own loss.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MAX_WEIGHT_RATIO = 100.0


def pos_weights(labels: np.ndarray) -> torch.Tensor:
    """(L,) positive weights from the (N, L) 0/1 training labels."""
    y = np.asarray(labels, dtype=np.float64)
    pos = np.maximum(y.sum(axis=0), 1.0)
    neg = np.maximum(len(y) - y.sum(axis=0), 1.0)
    return torch.tensor(np.clip(neg / pos, 1.0 / MAX_WEIGHT_RATIO, MAX_WEIGHT_RATIO), dtype=torch.float32)


def smoothed(targets: torch.Tensor, eps: float) -> torch.Tensor:
    return targets * (1.0 - eps) + 0.5 * eps


class MultiLabelLoss(nn.Module):
    """BCE-with-logits with per-label `pos_weight` and label smoothing, mean over samples and labels."""

    def __init__(self, pos_weight: torch.Tensor, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)
        self.label_smoothing = float(label_smoothing)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N,) loss summed over the labels of each sample (the DDP path sums these globally)."""
        return F.binary_cross_entropy_with_logits(
            logits, smoothed(targets.to(logits.dtype), self.label_smoothing),
            pos_weight=self.pos_weight.to(logits.dtype), reduction="none").sum(dim=1)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.per_sample(logits, targets).sum() / targets.numel()


def macro_auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean over labels of each label's AUROC (torchmetrics, exact); labels with one value are
    skipped; NaN when none has both."""
    from torchmetrics.functional.classification import binary_auroc

    y, p = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    values = [float(binary_auroc(torch.as_tensor(p[:, k]), torch.as_tensor(y[:, k].astype(np.int64))))
              for k in range(y.shape[1]) if len(np.unique(y[:, k])) == 2]
    return float(np.mean(values)) if values else float("nan")
