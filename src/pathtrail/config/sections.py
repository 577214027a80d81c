"""One frozen dataclass per params section. Loaded strictly by `pathtrail.config.loading.load_section`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pathtrail.config.criteria import CriterionError, parse_all
from pathtrail.config.label_section import check_labels
from pathtrail.config.loading import ParamsError, from_dict, require
from pathtrail.config.subsections import StainAugmentParams, VitParams
from pathtrail.config.tile_section import TileParams  # noqa: F401 - imported from here by the stages
from pathtrail.config.training_sections import TRAINING_SECTIONS, training_sections  # noqa: F401 - re-exported
from pathtrail.core.system import usable_cpus

# The architectures `pathtrail.train.models.build_model` knows: the demo's small CNN, MONAI's networks
# (`pathtrail.train.monai_nets`, always installed) and torchvision's (only when torchvision is installed).
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "densenet121", "vit_b_16")
MONAI_ARCHS = ("monai_densenet121", "monai_resnet18", "monai_resnet34", "monai_resnet50", "monai_vit")
ARCHITECTURES = ("small_cnn", *MONAI_ARCHS, *TORCHVISION_ARCHS)


_SITE_NAME = re.compile(r"^[a-z0-9_]+$")
_CARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def site_prefix(site: str) -> str:
    """ID prefix of a site: "site_a" -> "a"."""
    return site.removeprefix("site_")


@dataclass(frozen=True)
class DemoParams:
    """The `data.demo` params section."""

    seed: int
    patch_size: int
    internal_sites: list[str]
    external_site: str
    patients_per_site: int
    external_patients: int
    patches_per_patient: int
    max_slides_per_patient: int
    findings: list[str] = field(default_factory=list)  # multilabel demo (data.demo_findings)

    def __post_init__(self) -> None:
        sites = [*self.internal_sites, self.external_site]
        prefixes = [site_prefix(s) for s in sites]
        problems = [
            f"{name} must be >= {low}, got {value}"
            for name, value, low in [
                ("seed", self.seed, 0),
                ("patch_size", self.patch_size, 16),
                ("patients_per_site", self.patients_per_site, 2),
                ("external_patients", self.external_patients, 2),
                ("patches_per_patient", self.patches_per_patient, 1),
                ("max_slides_per_patient", self.max_slides_per_patient, 1),
            ]
            if value < low
        ]
        problems += [
            f"site name {s!r} must match {_SITE_NAME.pattern}"
            for s in sites
            if not _SITE_NAME.match(s)
        ]
        if not self.internal_sites:
            problems.append("internal_sites must not be empty")
        if len(set(prefixes)) != len(prefixes):
            problems.append(f"site ID prefixes must be unique, got {prefixes}")
        if problems:
            raise ValueError("invalid data.demo params: " + "; ".join(problems))


@dataclass(frozen=True)
class SplitParams:
    seed: int
    val_fraction: float
    test_fraction: float

    def check(self) -> None:
        require(0 < self.val_fraction < 1, "data.split.val_fraction", "must be between 0 and 1")
        require(0 < self.test_fraction < 1, "data.split.test_fraction", "must be between 0 and 1")
        require(self.val_fraction + self.test_fraction < 1, "data.split", "val + test fractions must be < 1")


@dataclass(frozen=True)
class DataParams:
    data_root: str
    internal_manifest: str
    external_manifest: str | None
    classes: list[str]
    patch_size: int
    mode_policy: Literal["convert", "reject"]
    size_policy: Literal["reject", "resize"]
    min_tissue_fraction: float
    tissue_policy: Literal["warn", "reject"]
    min_per_class: int
    duplicate_content: Literal["error", "merge"]
    max_image_pixels: int     # budget: larger images are refused from their header, never decoded
    max_manifest_bytes: int   # budget: larger manifests are refused from their size, never read
    max_manifest_rows: int    # budget: longer manifests are refused (memory grows with rows)
    allow_shared_site: bool   # may the external cohort share a site with the internal one?
    split: SplitParams
    demo: DemoParams | None = None  # the demo cohorts (data=demo); absent when the data are the user's
    label_mode: Literal["binary", "multiclass", "multilabel"] = "binary"  # config.label_section
    label_columns: list[str] = field(default_factory=list)  # multilabel: the 0/1 manifest columns

    def check(self) -> None:
        require(len(self.classes) >= 2, "data.classes", "needs at least two classes")
        require(len(set(self.classes)) == len(self.classes), "data.classes", "has duplicates")
        require(self.patch_size > 0, "data.patch_size", "must be positive")
        require(self.min_per_class >= 1, "data.min_per_class", "must be >= 1")
        require(self.max_image_pixels >= self.patch_size ** 2, "data.max_image_pixels",
                "must be at least patch_size squared")
        require(self.max_manifest_bytes >= 1024, "data.max_manifest_bytes", "must be >= 1024")
        require(self.max_manifest_rows >= 1, "data.max_manifest_rows", "must be >= 1")
        check_labels(self)


@dataclass(frozen=True)
class ExecutionParams:
    """The `execution` section: the reproducible execution contract (`pathtrail.core.execution`).

    A result-changing param: every computing stage lists it in dvc.yaml and the card records it.
    """

    threads: int                                  # intra-op threads; 0 = all cores (lifts the contract)
    cpu_isa: Literal["avx2", "default", "native"]  # pinned CPU kernel level; native lifts the contract

    def check(self) -> None:
        require(0 <= self.threads <= 1024, "execution.threads",
                "must be between 0 (every core, not reproducible) and 1024")


@dataclass(frozen=True)
class RuntimeParams:
    """The `runtime` section: knobs that change speed or output on the terminal, never a result.

    No stage lists it as a DVC param and no artifact hashes it, so changing it re-runs nothing;
    each stage's start entry in the audit trail records the values it ran with.
    """

    num_workers: int          # data-loader worker processes (-1: usable cores - 1, at most 8)
    prefetch_factor: int
    persistent_workers: bool
    pin_memory: bool
    progress: Literal["auto", "always", "never"]  # progress bars (auto: only on a terminal)
    log_level: Literal["debug", "info", "warning", "error"]

    def check(self) -> None:
        require(-1 <= self.num_workers <= 256, "runtime.num_workers",
                "must be between 0 and 256, or -1 for the default (usable cores - 1, at most 8)")
        require(self.prefetch_factor >= 1, "runtime.prefetch_factor", "must be >= 1")

    @property
    def loader(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "prefetch_factor": self.prefetch_factor,
                "persistent_workers": self.persistent_workers, "pin_memory": self.pin_memory}


def runtime_of(params: Mapping[str, Any]) -> RuntimeParams:
    """The `runtime` section of `params`, or its defaults when the section is absent."""
    return from_dict(RuntimeParams, {**RUNTIME_DEFAULTS, **(params.get("runtime") or {})}, "runtime")


RUNTIME_DEFAULTS: dict[str, Any] = {"num_workers": 2, "prefetch_factor": 2, "persistent_workers": False,
                                    "pin_memory": True, "progress": "auto", "log_level": "info"}


@dataclass(frozen=True)
class StainParams:
    enable_stain_norm: bool
    io: float
    alpha: float
    beta: float
    scope: Literal["patch", "slide"]
    # For patches whose own stain estimate is unusable (pathtrail.stain.macenko.FALLBACKS); loading
    # rejects any other value, naming `stain.fallback` and these three.
    fallback: Literal["reference", "passthrough", "slide"]
    min_tissue_fraction: float
    chunk_size: int
    fit_max_patches: int
    shard_size: int

    def check(self) -> None:
        require(0 < self.alpha < 50, "stain.alpha", "must be a percentile in (0, 50)")
        require(self.beta > 0, "stain.beta", "must be positive")
        require(self.chunk_size >= 1, "stain.chunk_size", "must be >= 1")
        require(self.shard_size >= 1, "stain.shard_size", "must be >= 1")
        require(self.fit_max_patches >= 1, "stain.fit_max_patches", "must be >= 1")


@dataclass(frozen=True)
class ModelParams:
    arch: str
    width: int
    dropout: float
    weights_path: str | None  # local initial / pretrained weights (never downloaded); sha256 recorded
    # Recompute the main stages' activations in backward (activation checkpointing): same results,
    # less memory, more compute. For large models; an arch that cannot do it fails in build_model.
    gradient_checkpointing: bool
    # Only monai_vit has (and needs) this subsection; absent elsewhere, so the other architectures'
    # params (and the hashes of them in models/model.pt) are what they were before it existed.
    vit: VitParams | None = None

    def check(self) -> None:
        require(self.arch in ARCHITECTURES, "model.arch",
                f"is {self.arch!r}, which is not a known architecture; choose one of: {', '.join(ARCHITECTURES)}")
        require(self.width >= 4, "model.width", "must be >= 4")
        require(0 <= self.dropout < 1, "model.dropout", "must be in [0, 1)")
        if self.arch == "monai_vit":
            require(self.vit is not None, "model.vit",
                    "is missing: model.arch=monai_vit needs it (image_size, patch_size, num_layers, num_heads, "
                    "mlp_ratio); select the whole config group with `-S model=monai_vit`")
            require(self.width % self.vit.num_heads == 0, "model.vit.num_heads",
                    f"is {self.vit.num_heads}, which must divide model.width={self.width} (the ViT's hidden size)")
        else:
            require(self.vit is None, "model.vit", f"is only used by model.arch=monai_vit, not {self.arch!r}; "
                    "remove it (or select the whole config group, e.g. `-S model=small_cnn`)")
        if self.arch.startswith("monai_resnet"):
            require(self.dropout == 0, "model.dropout", f"must be 0 for {self.arch} (MONAI's ResNet has no dropout)")
        if self.arch == "monai_densenet121":
            require(self.width % 2 == 0, "model.width", "must be even for monai_densenet121 (growth rate width/2)")


@dataclass(frozen=True)
class EarlyStopping:
    patience: int
    min_delta: float


@dataclass(frozen=True)
class Distributed:
    """`nproc_per_node > 1`: the train stage relaunches itself under torchrun on this node.

    Multi-node runs are launched by the user with `torchrun --nnodes ...`; the world size then
    comes from torchrun's environment and this value is not used to launch anything.
    """

    nproc_per_node: int


@dataclass(frozen=True)
class TrainParams:
    seed: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    scheduler: Literal["none", "cosine", "onecycle", "plateau"]
    warmup_fraction: float
    grad_clip_norm: float
    accumulation_steps: int
    label_smoothing: float
    amp: Literal["none", "bf16", "fp16"]
    use_compile: bool
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"]
    deterministic: bool
    channels_last: bool
    cudnn_benchmark: bool
    allow_tf32: bool
    augment: bool
    early_stopping: EarlyStopping
    checkpoint_every: int
    stain_augment: StainAugmentParams  # HED colour jitter (off by default)
    distributed: Distributed = field(default_factory=lambda: Distributed(1))
    optimizer_impl: Literal["auto", "foreach", "fused"] = "auto"  # AdamW's kernels; auto: fused on CUDA

    def check(self) -> None:
        require(self.epochs >= 1, "train.epochs", "must be >= 1")
        require(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        require(self.lr > 0, "train.lr", f"must be positive, got {self.lr}")
        require(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        require(self.grad_clip_norm >= 0, "train.grad_clip_norm", "must be >= 0 (0 disables clipping)")
        require(self.accumulation_steps >= 1, "train.accumulation_steps", f"must be >= 1, got {self.accumulation_steps}")
        require(0 <= self.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)")
        require(0 <= self.warmup_fraction < 1, "train.warmup_fraction", "must be in [0, 1)")
        require(self.checkpoint_every >= 1, "train.checkpoint_every", "must be >= 1")
        require(self.early_stopping.patience >= 1, "train.early_stopping.patience", "must be >= 1")
        n = self.distributed.nproc_per_node
        require(n >= 1, "train.distributed.nproc_per_node", f"must be >= 1, got {n}")
        available, kind = _available_devices()
        require(n <= available, "train.distributed.nproc_per_node",
                f"is {n}, but this machine has only {available} {kind} available (one process per {kind[:-1]})")
        require(self.batch_size % n == 0, "train.batch_size",
                f"is {self.batch_size}, which does not divide among train.distributed.nproc_per_node={n} "
                f"processes; train.batch_size is the global batch, so use a multiple of {n}")


def _available_devices() -> tuple[int, str]:
    """(count, "GPUs") on a CUDA machine, else (usable CPU cores, "CPUs")."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count(), "GPUs"
    return usable_cpus(), "CPUs"


@dataclass(frozen=True)
class CompileCheckParams:
    enabled: bool
    auc_tolerance: float
    loss_step0_tolerance: float
    loss_max_tolerance: float
    loss_mean_tolerance: float
    n_bootstrap: int
    fallback_random: bool


@dataclass(frozen=True)
class EvalParams:
    threshold_rule: Literal["youden", "target_sensitivity", "fixed"]
    target_sensitivity: float
    fixed_threshold: float
    n_bootstrap: int
    seed: int
    ece_bins: int
    n_failures: int
    compile_mode: Literal["none", "default", "reduce-overhead", "max-autotune"] = "none"  # scoring

    def check(self) -> None:
        require(self.n_bootstrap >= 100, "eval.n_bootstrap", "must be >= 100 for a usable interval")
        require(0 < self.target_sensitivity <= 1, "eval.target_sensitivity", "must be in (0, 1]")
        require(self.ece_bins >= 2, "eval.ece_bins", "must be >= 2")


@dataclass(frozen=True)
class CardParams:
    name: str
    intended_use: str

    def check(self) -> None:
        require(bool(_CARD_NAME.match(self.name)) and ".." not in self.name, "card.name",
                f"must be a file name of letters, digits, '.', '_' or '-' (at most 100, starting with a letter "
                f"or digit), e.g. 'lymph-node-v1'; got {self.name!r}")


@dataclass(frozen=True)
class ProfileParams:
    name: Literal["production", "fast", "benchmark"]


@dataclass(frozen=True)
class ReleaseParams:
    """The `release` params section: acceptance criteria fixed before evaluation, and warning levels."""

    criteria: dict[str, str]
    min_ci_patients: int          # a CI from fewer patients than this gets a warning in the card
    max_fallback_fraction: float  # a stain-normalization fallback share above this gets a warning

    def check(self) -> None:
        require(bool(self.criteria), "release.criteria", "must name at least one criterion")
        require(self.min_ci_patients >= 1, "release.min_ci_patients", "must be >= 1")
        require(0 <= self.max_fallback_fraction <= 1, "release.max_fallback_fraction", "must be in [0, 1]")
        try:
            parse_all(self.criteria)
        except CriterionError as exc:
            raise ParamsError(str(exc)) from None


@dataclass(frozen=True)
class DriftParams:
    """The `drift` section: limits of `pathtrail drift` / `predict`'s drift report (a check above its
    limit makes the verdict DRIFT); the sampling of the patches whose stain statistics it reports."""

    score_bins: int
    score_psi_max: float
    score_ks_max: float
    stain_angle_max: float
    concentration_ratio_max: float
    intensity_bins: int
    intensity_psi_max: float
    max_patches: int
    seed: int

    def check(self) -> None:
        require(2 <= self.score_bins <= 1000, "drift.score_bins", "must be between 2 and 1000")
        require(2 <= self.intensity_bins <= 256, "drift.intensity_bins", "must be between 2 and 256")
        for key in ("score_psi_max", "score_ks_max", "stain_angle_max", "intensity_psi_max"):
            require(getattr(self, key) > 0, f"drift.{key}", "must be > 0")
        require(self.concentration_ratio_max >= 1, "drift.concentration_ratio_max", "must be >= 1")
        require(self.max_patches >= 1, "drift.max_patches", "must be >= 1")
