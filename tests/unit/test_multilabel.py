"""Multi-label training pieces against direct formulas and torch's own loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pathtrail.train.loop import class_weights
from pathtrail.train.multilabel import MultiLabelLoss, macro_auroc, pos_weights, smoothed
from pathtrail.train.scoring import auroc


def test_pos_weights_are_negatives_over_positives_floored_and_capped():
    y = np.zeros((300, 4), dtype=np.float32)
    y[:100, 0] = 1   # 100 positives, 200 negatives -> 2
    y[:150, 1] = 1   # balanced -> 1
    y[:1, 2] = 1     # 1 positive, 299 negatives -> capped at 100
    # label 3: no positive at all -> floored at one sample, capped at 100
    w = pos_weights(y).numpy()
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, [2.0, 1.0, 100.0, 100.0])
    y_all = np.ones((10, 1), dtype=np.float32)  # no negative: floored at one, 1/9
    np.testing.assert_allclose(pos_weights(y_all).numpy(), [1 / 10], rtol=1e-6)


def test_pos_weights_extend_the_binary_class_weights_per_label():
    rng = np.random.default_rng(0)
    y = (rng.random((500, 3)) < [0.1, 0.3, 0.6]).astype(np.float32)
    w = pos_weights(y).numpy()
    for k in range(3):
        neg, pos = class_weights(y[:, k].astype(np.int64), 2).numpy()
        assert w[k] == pytest.approx(pos / neg, rel=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_loss_is_torch_bce_with_logits_with_pos_weight_and_smoothed_targets(eps):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(32, 3, generator=g, dtype=torch.float64)
    y = (torch.rand(32, 3, generator=g) < 0.4).double()
    pw = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    loss = MultiLabelLoss(pw, eps)(logits, y)
    t = y * (1 - eps) + eps / 2
    expected = nn.BCEWithLogitsLoss(pos_weight=pw)(logits, t)
    assert float(loss) == pytest.approx(float(expected), rel=1e-12)
    # the formula itself: -[w t log s + (1 - t) log(1 - s)], mean over samples and labels
    s = torch.sigmoid(logits)
    direct = -(pw * t * torch.log(s) + (1 - t) * torch.log(1 - s)).mean()
    assert float(loss) == pytest.approx(float(direct), rel=1e-10)
    # per_sample sums the labels (what the DDP path all-reduces)
    per = MultiLabelLoss(pw, eps).per_sample(logits, y)
    assert float(per.sum() / y.numel()) == pytest.approx(float(loss), rel=1e-12)


def test_smoothing_pulls_targets_towards_one_half():
    t = smoothed(torch.tensor([0.0, 1.0]), 0.2)
    assert t.tolist() == pytest.approx([0.1, 0.9])


def test_loss_gradients_flow_and_weights_raise_the_positive_term():
    logits = torch.zeros(4, 2, requires_grad=True)
    y = torch.tensor([[1.0, 0.0]] * 4)
    light = MultiLabelLoss(torch.tensor([1.0, 1.0]))(logits, y)
    heavy = MultiLabelLoss(torch.tensor([5.0, 1.0]))(logits, y)
    assert float(heavy.detach()) > float(light.detach())
    heavy.backward()
    assert logits.grad is not None and float(logits.grad[:, 0].sum()) < 0  # pushes the positive logit up


def test_macro_auroc_matches_sklearn_and_skips_one_valued_labels():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = (rng.random((80, 3)) < 0.4).astype(np.float32)
    p = np.clip(0.3 * y + rng.random((80, 3)) * 0.7, 0, 1)
    expected = np.mean([roc_auc_score(y[:, k], p[:, k]) for k in range(3)])
    assert macro_auroc(y, p) == pytest.approx(expected, abs=1e-6)
    assert auroc(y, p) == pytest.approx(expected, abs=1e-6)  # the loop's AUROC takes (N, L) labels
    y[:, 1] = 0
    expected = np.mean([roc_auc_score(y[:, k], p[:, k]) for k in (0, 2)])
    assert macro_auroc(y, p) == pytest.approx(expected, abs=1e-6)
    assert np.isnan(macro_auroc(np.zeros((5, 2)), np.random.default_rng(0).random((5, 2))))


def test_loader_and_predict_carry_label_rows_and_return_sigmoids(tmp_path):
    import pandas as pd

    from pathtrail.data.loaders import KeyedBatchSampler, PatchDataset, make_loader
    from pathtrail.data.store import StoreWriter, open_store
    from pathtrail.train.models import build_model
    from pathtrail.train.scoring import predict

    rng = np.random.default_rng(0)
    writer = StoreWriter(tmp_path / "store", 8, (16, 16, 3))
    writer.add(rng.integers(0, 255, (10, 16, 16, 3), dtype=np.uint8), pd.DataFrame({"path": [f"p{i}" for i in range(10)]}))
    writer.close()
    store = open_store(tmp_path / "store")
    y = (rng.random((10, 3)) < 0.5).astype(np.float32)
    ds = PatchDataset(store, np.arange(10), y, augment=False, seed=0)
    _, label, _ = ds[(0, 4)]
    assert label.dtype == torch.float32 and label.tolist() == y[4].tolist()
    loader = make_loader(ds, KeyedBatchSampler(10, 4, 0, shuffle=False), num_workers=0, prefetch_factor=2,
                         persistent_workers=False, pin_memory=False, seed=0)
    model = build_model("small_cnn", 3, width=8, dropout=0.0)
    criterion = MultiLabelLoss(pos_weights(y))
    probs, loss = predict(model, loader, criterion, torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _, _ in loader]).double()
    np.testing.assert_allclose(probs, torch.sigmoid(logits).numpy(), rtol=1e-12)
    assert not np.allclose(probs.sum(axis=1), 1.0)
    assert loss == pytest.approx(float(criterion(logits.float(), torch.from_numpy(y))), rel=1e-6)
