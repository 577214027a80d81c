"""Scoring a trained model: class probabilities for a loader, and the AUROC of a probability matrix."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pathtrail.train import distributed as D
from pathtrail.train.distributed import World
from pathtrail.train.multilabel import MultiLabelLoss, macro_auroc


def scoring_device() -> torch.device:
    """Where the pipeline scores: CUDA when present (as training uses it), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Binary or macro one-vs-rest AUROC (torchmetrics); NaN when a class is missing. With (N, L)
    0/1 labels (multi-label): the macro AUROC over the labels (`multilabel.macro_auroc`)."""
    from torchmetrics.functional.classification import binary_auroc, multiclass_auroc

    if np.ndim(labels) == 2:
        return macro_auroc(labels, probs)
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64).copy())
    if len(np.unique(labels)) < 2:
        return float("nan")
    p = torch.as_tensor(probs, dtype=torch.float64)
    if p.shape[1] == 2:
        return float(binary_auroc(p[:, 1], y))
    return float(multiclass_auroc(p, y, num_classes=p.shape[1], average="macro"))


@torch.no_grad()
def predict(model: nn.Module, loader, criterion: nn.Module | None, device: torch.device,
            amp_dtype: torch.dtype | None = None, *, world: World | None = None,
            multilabel: bool = False) -> tuple[np.ndarray, float]:
    """Class probabilities (float64, one row per dataset item, in dataset order) and the mean loss.

    With several ranks, each scores its shard and the logits are gathered; the sampler's padding
    repeats are dropped, so every sample counts once. The loss is the class-weighted mean over the
    whole set (independent of batch size and number of ranks). With `multilabel` (or a
    `MultiLabelLoss` criterion), per-label sigmoid probabilities instead of the softmax.
    """
    multilabel = multilabel or isinstance(criterion, MultiLabelLoss)
    world = world or D.SINGLE
    model.eval()
    logits: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    order: list[torch.Tensor] = []
    for x, y, idx in loader:
        x = x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(x)
        logits.append(out.float())
        labels.append(y)
        order.append(idx)
    lg = torch.cat(logits)
    y_all = torch.cat(labels).to(lg.device)
    idx_all = torch.cat(order).to(lg.device)
    if world.distributed:
        # float32 logits and integer ids are exact in float64: one gather carries all three
        ys = y_all.double().reshape(len(y_all), -1)  # (n, 1), or (n, L) multi-label
        width = ys.shape[1]
        packed = torch.cat([lg.double(), ys, idx_all.double()[:, None]], dim=1)
        gathered = D.all_gather_rows(packed, world)  # (world, per_rank, C + width + 1)
        packed = gathered.transpose(0, 1).reshape(-1, packed.shape[1])  # the sampler's padded order
        ys = packed[:, -1 - width:-1]
        lg, idx_all = packed[:, :-1 - width].float(), packed[:, -1].long()
        y_all = ys.float() if multilabel else ys[:, 0].long()
    uniq, first = np.unique(idx_all.cpu().numpy(), return_index=True)  # drop padding repeats
    keep = torch.as_tensor(first, device=lg.device)
    lg, y_all = lg[keep], y_all[keep]
    probs = (torch.sigmoid(lg.double()) if multilabel else torch.softmax(lg.double(), dim=1)).cpu().numpy()
    out_probs = np.full((int(uniq.max()) + 1, probs.shape[1]), np.nan)
    out_probs[uniq] = probs
    loss = float(criterion(lg, y_all)) if criterion is not None and len(y_all) else float("nan")
    return out_probs, loss
