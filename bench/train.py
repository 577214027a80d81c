"""Training throughput: `pathtrail.train.loop.fit` against a bare PyTorch loop doing the same work.

    python bench/train.py [--out bench/results/train.json] [--repeats 11] [--steps 32] [--batch 32]

Both sides train the same SmallCNN from the same seed on the same synthetic patch store (64x64,
read through `PatchStore` and `to_tensor` in the main process), with the same batch size and number
of optimizer steps, the same AdamW / cosine schedule / class-weighted loss / gradient clipping,
and the same determinism flags (`use_deterministic_algorithms(True)`). The bare loop is what a
person would write by hand: a plain DataLoader, forward, loss, backward, clip, step. It is given
the same sample order as `fit`'s keyed shuffle, so both do the very same arithmetic: the bench
checks that they end with bitwise-identical weights (`same_weights`), and CPU speed cannot differ
through the data (e.g. denormals met on one trajectory and not the other).
What `fit` adds is measured: the keyed batch sampler, the per-step bookkeeping (loss, lr),
the stop-signal check and timing; plus, outside the timed loop, its validation pass.

Figures: samples/s over the training loop (from creating the loader iterator to the last optimizer
step), the median of `--repeats` runs after one warm-up run of each, the two sides interleaved
(alternating which goes first) so that other load on the machine hits both alike. `overhead_pct` = (fit time / bare time - 1) x 100
on those medians; target <= 5 %. `paired_overhead_pct` is the median of the per-repeat ratios (less
sensitive to load that drifts during the run), `min_overhead_pct` compares the fastest repeats
(the least disturbed), and `noisy` flags a run whose repeats spread by more
than 25 % (another job was using the cores: rerun it). End-to-end wall times (model build, loaders,
fit's validation pass over 32 patches) are reported alongside.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pathtrail.config.loading import from_dict
from pathtrail.config.sections import ModelParams, RuntimeParams, TrainParams
from pathtrail.core.files import write_json
from pathtrail.data.loaders import SHUFFLE_KEY, to_tensor
from pathtrail.data.store import PatchStore, StoreWriter, open_store
from pathtrail.train.loop import Split, class_weights, configure_determinism, fit
from pathtrail.train.models import build_model

REPO = Path(__file__).resolve().parents[1]
TARGET_OVERHEAD_PCT = 5.0
PATCH = 64
N_VAL = 32


def synthetic_store(root: Path, n: int, seed: int = 0) -> tuple[PatchStore, Split, Split]:
    """`n` training + N_VAL validation patches; class 1 has a dark blob."""
    rng = np.random.default_rng(seed)
    total = n + N_VAL
    labels = np.arange(total) % 2
    imgs = rng.integers(170, 240, size=(total, PATCH, PATCH, 3), dtype=np.uint8)
    imgs[labels == 1, 16:40, 16:40] //= 2
    writer = StoreWriter(root, shard_size=256, patch_shape=(PATCH, PATCH, 3))
    writer.add(imgs, pd.DataFrame({"path": [f"p{i:05d}.png" for i in range(total)], "label": labels}))
    writer.close()
    store = open_store(root)
    return store, Split(np.arange(n), labels[:n]), Split(np.arange(n, total), labels[n:])


def bench_params(batch: int, width: int) -> tuple[TrainParams, ModelParams, RuntimeParams]:
    """The committed params, set to one epoch, no augmentation, in-process loading, no compile."""
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["train"].update(epochs=1, batch_size=batch, augment=False, use_compile=False, deterministic=True,
                      scheduler="cosine", grad_clip_norm=1.0, accumulation_steps=1, amp="none",
                      distributed={"nproc_per_node": 1})
    p["model"].update(arch="small_cnn", width=width, weights_path=None)
    p["runtime"].update(num_workers=0, persistent_workers=False, pin_memory=False)
    return (from_dict(TrainParams, p["train"], "train"), from_dict(ModelParams, p["model"], "model"),
            from_dict(RuntimeParams, p["runtime"], "runtime"))


class _Plain(Dataset):
    def __init__(self, store: PatchStore, split: Split) -> None:
        self.store, self.split = store, split

    def __len__(self) -> int:
        return len(self.split.rows)

    def __getitem__(self, i: int):
        return to_tensor(self.store.patch(int(self.split.rows[i]))), int(self.split.labels[i])


def bare_loop(store: PatchStore, train: Split, params: TrainParams, model_params: ModelParams) -> dict[str, float]:
    """The hand-written baseline; returns loop and wall seconds, and the final weights."""
    t_wall = time.perf_counter()
    configure_determinism(params)
    torch.manual_seed(params.seed)
    net = build_model("small_cnn", 2, model_params.width, model_params.dropout)
    criterion = nn.CrossEntropyLoss(weight=class_weights(train.labels, 2), label_smoothing=params.label_smoothing)
    opt = torch.optim.AdamW(net.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    order = np.random.default_rng([params.seed, 0, SHUFFLE_KEY]).permutation(len(train.rows)).tolist()
    loader = DataLoader(_Plain(store, train), batch_size=params.batch_size, sampler=order,
                        generator=torch.Generator().manual_seed(params.seed))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=len(loader))
    net.train()
    t_loop = time.perf_counter()
    for x, y in loader:
        loss = criterion(net(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), params.grad_clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
    end = time.perf_counter()
    return {"loop_s": end - t_loop, "wall_s": end - t_wall, "weights": net.state_dict()}


def fit_run(store: PatchStore, train: Split, val: Split, params, checkpoint: Path) -> dict[str, float]:
    t_wall = time.perf_counter()
    result = fit(store, train, val, *params, num_classes=2, fingerprint="bench", checkpoint=checkpoint)
    wall = time.perf_counter() - t_wall
    samples = len(train.rows)
    # one epoch: the best (and only) state is the final one
    return {"loop_s": samples / result.monitor["samples_per_s"], "wall_s": wall, "weights": result.state_dict}


def machine() -> dict[str, object]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu_model": model, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "system": platform.system()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench/results/train.json"))
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args(argv)

    n_train = args.steps * args.batch
    params = bench_params(args.batch, args.width)
    with tempfile.TemporaryDirectory() as tmp:
        store, train, val = synthetic_store(Path(tmp) / "store", n_train)
        ckpt = Path(tmp) / "ckpt/last.pt"
        runs: dict[str, list[dict[str, float]]] = {"fit": [], "bare": []}
        fit_run(store, train, val, params, ckpt)           # warm-up (allocator, caches, imports)
        bare_loop(store, train, params[0], params[1])
        for k in range(args.repeats):  # interleaved, alternating which side goes first
            for side in (("fit", "bare") if k % 2 == 0 else ("bare", "fit")):
                runs[side].append(fit_run(store, train, val, params, ckpt) if side == "fit"
                                  else bare_loop(store, train, params[0], params[1]))

    med = {side: {k: statistics.median(r[k] for r in rs) for k in ("loop_s", "wall_s")} for side, rs in runs.items()}
    overhead = (med["fit"]["loop_s"] / med["bare"]["loop_s"] - 1) * 100
    paired = statistics.median(f["loop_s"] / b["loop_s"] for f, b in zip(runs["fit"], runs["bare"], strict=True))
    a, b = runs["fit"][-1]["weights"], runs["bare"][-1]["weights"]
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    spread = max(max(r["loop_s"] for r in rs) / min(r["loop_s"] for r in rs) for rs in runs.values())
    report = {
        "batch_size": args.batch, "steps": args.steps, "samples_per_run": n_train, "patch_size": PATCH,
        "model": f"small_cnn width {args.width}", "repeats": args.repeats, "warmup_runs": 1,
        "fit_samples_per_s": round(n_train / med["fit"]["loop_s"], 1),
        "bare_samples_per_s": round(n_train / med["bare"]["loop_s"], 1),
        "overhead_pct": round(overhead, 2),
        "paired_overhead_pct": round((paired - 1) * 100, 2),
        "min_overhead_pct": round((min(r["loop_s"] for r in runs["fit"]) / min(r["loop_s"] for r in runs["bare"]) - 1)
                                  * 100, 2),
        "noisy": spread > 1.25,
        "same_weights": same,
        "max_over_min": round(spread, 3),
        "target_overhead_pct": TARGET_OVERHEAD_PCT,
        "passed": overhead <= TARGET_OVERHEAD_PCT,
        "fit_wall_s": round(med["fit"]["wall_s"], 3),
        "bare_wall_s": round(med["bare"]["wall_s"], 3),
        "wall_overhead_pct": round((med["fit"]["wall_s"] / med["bare"]["wall_s"] - 1) * 100, 2),
        "loop_seconds": {side: [round(r["loop_s"], 4) for r in rs] for side, rs in runs.items()},
        "machine": machine(),
    }
    write_json(report, args.out)  # temp file in the same folder, fsync, os.replace; sorted keys
    print(f"fit {report['fit_samples_per_s']} samples/s, bare loop {report['bare_samples_per_s']} samples/s: "
          f"overhead {report['overhead_pct']:+.2f} % (target <= {TARGET_OVERHEAD_PCT} %); "
          f"end to end {report['fit_wall_s']} s vs {report['bare_wall_s']} s"
          f"{' [NOISY: rerun]' if report['noisy'] else ''} -> {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
