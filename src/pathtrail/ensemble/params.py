"""The `ensemble` params section (ensemble/params.yaml): members, the reused main model and the meta-learner.

It lives in its own file, `ensemble/params.yaml`, composed by Hydra from `pipelines/ensemble/`
(`python -m pathtrail.ensemble.params demo`, i.e. `make ensemble-params`), so that the
main pipeline's `params.yaml`, and every output hashed from it (the card records all of it), is
exactly what it is without the ensemble. The ensemble's stages read both files: the main params
(data, train, execution, ...) and this section; `member_params` gives the params one member is
trained with (the main ones with the member's `model` and its `train` changes).
"""

from __future__ import annotations

import argparse
import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pathtrail.config.loading import ParamsError, ParamsFile, from_dict, read_params, require

ENSEMBLE_PARAMS = "ensemble/params.yaml"
REGENERATE = "make ensemble-params   (or: .venv/bin/python -m pathtrail.ensemble.params demo)"
NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class MemberParams:
    model: dict[str, Any]                                  # a `model` section (checked as ModelParams)
    train: dict[str, Any] = field(default_factory=dict)    # keys of the train section this member changes


@dataclass(frozen=True)
class MetaParams:
    kind: Literal["logistic"]
    l2: float
    folds: int
    seed: int

    def check(self) -> None:
        require(self.l2 > 0, "ensemble.meta.l2", "must be > 0 (it keeps the fit finite when the members separate "
                "the classes)")
        require(2 <= self.folds <= 20, "ensemble.meta.folds", "must be between 2 and 20")


@dataclass(frozen=True)
class EnsembleParams:
    reuse: str | None
    members: dict[str, Any]
    meta: MetaParams

    def check(self) -> None:
        names = self.names()
        for n in names:
            require(bool(NAME.match(n)), f"ensemble.members.{n}",
                    "is not a usable member name: lower-case letters, digits and _, starting with a letter")
        require(len(names) >= 2, "ensemble.members",
                f"gives {len(names)} member(s) ({', '.join(names) or 'none'}); a stacking ensemble needs at least 2 "
                "(the trained members plus `ensemble.reuse`)")
        require(self.reuse is None or self.reuse not in self.members, "ensemble.reuse",
                f"is {self.reuse!r}, which is also the name of a trained member; give them different names")
        for n in self.members:
            self.member(n)

    def names(self) -> list[str]:
        """Every member, in the meta-learner's feature order: sorted by name."""
        return sorted([*self.members, *([self.reuse] if self.reuse else [])])

    def member(self, name: str) -> MemberParams:
        if name not in self.members:
            known = ", ".join(sorted(self.members)) or "none"
            raise ParamsError(f"'{name}' is not a trained member of the ensemble; ensemble.members has: {known}")
        return from_dict(MemberParams, self.members[name], f"ensemble.members.{name}")


def read_ensemble(path: str | Path = ENSEMBLE_PARAMS) -> tuple[EnsembleParams, dict[str, Any]]:
    """The parsed section of `path` and its raw mapping (what the trail records)."""
    if not Path(path).is_file():
        raise ParamsError(f"{path}: not found. The ensemble's params are composed from pipelines/ensemble/: "
                          f"run {REGENERATE}")
    params = read_params(path)
    if set(params) != {"ensemble"}:
        raise ParamsError(f"{path}: must hold the `ensemble` section only, found {sorted(params)}; regenerate it "
                          f"with {REGENERATE}")
    try:
        return from_dict(EnsembleParams, params["ensemble"], "ensemble"), params["ensemble"]
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None


def member_params(params: Mapping[str, Any], ensemble: EnsembleParams, name: str) -> dict[str, Any]:
    """The params member `name` is trained with: `params` with its model section and train changes."""
    member = ensemble.member(name)
    train = dict(copy.deepcopy(params.get("train") or {}))
    unknown = sorted(set(member.train) - set(train))
    if unknown:
        raise ParamsError(f"'ensemble.members.{name}.train' changes unknown train key(s) {unknown}; known: "
                          f"{', '.join(sorted(train))}")
    for key, value in member.train.items():
        train[key] = ({**train[key], **value} if isinstance(train[key], dict) and isinstance(value, dict)
                      else copy.deepcopy(value))
    out = {**params, "model": copy.deepcopy(member.model), "train": train}
    return ParamsFile(out, getattr(params, "source", "params.yaml"))


def with_ensemble(params: Mapping[str, Any], raw: Mapping[str, Any]) -> dict[str, Any]:
    """`params` with the `ensemble` section beside the main ones (what `pathtrail verify` compares with)."""
    return ParamsFile({**params, "ensemble": dict(raw)}, getattr(params, "source", "params.yaml"))


def compose_ensemble(choice: str, config_dir: str | Path = "pipelines", overrides: list[str] | None = None) -> str:
    """The YAML text of `ensemble/params.yaml` for `pipelines/ensemble/<choice>.yaml` (Hydra)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(Path(config_dir).resolve()), version_base=None):
        cfg = compose(config_name="config", overrides=[f"+ensemble={choice}", *(overrides or [])])
    OmegaConf.resolve(cfg)
    return OmegaConf.to_yaml(OmegaConf.create({"ensemble": cfg.ensemble}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Compose ensemble/params.yaml from pipelines/ensemble/ (Hydra).")
    parser.add_argument("choice", nargs="?", default="demo", help="a config of pipelines/ensemble/ (default: demo)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. ensemble.meta.l2=0.5")
    parser.add_argument("--config-dir", default="pipelines")
    parser.add_argument("--out", default=ENSEMBLE_PARAMS)
    args = parser.parse_args(argv)
    from pathtrail.core.files import write_text

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text(compose_ensemble(args.choice, args.config_dir, args.overrides), args.out)


if __name__ == "__main__":
    main()
