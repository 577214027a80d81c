"""Scoring through loader workers: the probabilities are bitwise those scored in-process."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pathtrail.config.sections import runtime_of
from pathtrail.data.store import StoreWriter, open_store
from pathtrail.train.compiling import scoring_module
from pathtrail.train.inputs import score_table
from pathtrail.train.models import build_model
from pathtrail.train.scoring import scoring_device


@pytest.fixture
def scored_inputs(tmp_path):
    rng = np.random.default_rng(0)
    n = 70
    writer = StoreWriter(tmp_path / "store", shard_size=16, patch_shape=(16, 16, 3))
    writer.add(rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
               pd.DataFrame({"path": [f"p{i:03d}.png" for i in range(n)]}))
    writer.close()
    table = pd.DataFrame({"path": [f"p{i:03d}.png" for i in rng.permutation(n)[:50]],
                          "label": rng.integers(0, 2, 50)})
    torch.manual_seed(0)
    model = build_model("small_cnn", 2, width=4, dropout=0.0)
    return model, open_store(tmp_path / "store"), table


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers", [1, 3])
def test_probabilities_do_not_depend_on_loader_workers(scored_inputs, workers):
    model, store, table = scored_inputs
    alone = score_table(model, store, table, None, 8, 0)
    knobs = {"num_workers": workers, "persistent_workers": workers == 3, "prefetch_factor": 1 + workers}
    through_workers = score_table(model, store, table, None, 8, 0, runtime=runtime_of({"runtime": knobs}),
                                  device=torch.device("cpu"))
    assert alone.shape == (50, 2) and np.isfinite(alone).all()
    assert np.array_equal(alone.view(np.int64), through_workers.view(np.int64))


def test_scoring_device_follows_cuda_availability():
    assert scoring_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_scores_close_to_cpu(scored_inputs):
    model, store, table = scored_inputs
    cpu = score_table(model, store, table, None, 8, 0)
    cuda = score_table(model, store, table, None, 8, 0, device=torch.device("cuda"))
    np.testing.assert_allclose(cuda, cpu, atol=1e-4)


# ------------------------------------------------------------- eval.compile_mode (scoring_module)
def test_eager_scoring_is_the_module_itself(scored_inputs):
    model = scored_inputs[0]
    scored, info = scoring_module(model, "none", torch.device("cpu"))
    assert scored is model and info == {"compile_mode": "none", "compiled": False, "device": "cpu"}


def test_cuda_graphs_on_a_cpu_score_eagerly_and_say_so(scored_inputs):
    model, store, table = scored_inputs
    eager = score_table(model, store, table, None, 8, 0)
    scored, info = scoring_module(model, "reduce-overhead", torch.device("cpu"))
    assert scored is model and info["compiled"] is False and "CUDA" in info["fallback"]
    assert np.array_equal(eager.view(np.int64), score_table(scored, store, table, None, 8, 0).view(np.int64))


def test_scoring_compile_mode_is_checked():
    from pathtrail.config.loading import ParamsError, from_dict
    from pathtrail.config.sections import EvalParams

    base = {"threshold_rule": "youden", "target_sensitivity": 0.9, "fixed_threshold": 0.5, "n_bootstrap": 200,
            "seed": 0, "ece_bins": 10, "n_failures": 4}
    assert from_dict(EvalParams, base, "eval").compile_mode == "none"
    with pytest.raises(ParamsError, match="compile_mode"):
        from_dict(EvalParams, base | {"compile_mode": "fast"}, "eval")


@pytest.mark.slow
def test_compiled_scoring_on_a_cpu_is_close_to_eager(scored_inputs):
    # batches of 10 for the 50 rows: one shape, no recompile (a recompile after another test's
    # monkeypatched dynamo config hits torch's hidden `error_on_recompile` option in this process)
    torch._dynamo.reset()
    model, store, table = scored_inputs
    eager = score_table(model, store, table, None, 10, 0)
    scored, info = scoring_module(model, "default", torch.device("cpu"))
    assert info["compiled"] is True and scored is not model
    np.testing.assert_allclose(score_table(scored, store, table, None, 10, 0), eager, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_scoring_is_close_to_eager(scored_inputs):
    model, store, table = scored_inputs
    device = torch.device("cuda")
    eager = score_table(model, store, table, None, 8, 0, device=device)
    scored, info = scoring_module(model, "reduce-overhead", device)
    assert info["compiled"] is True and "fallback" not in info
    np.testing.assert_allclose(score_table(scored, store, table, None, 8, 0, device=device), eager, atol=1e-4)
