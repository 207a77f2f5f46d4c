"""The pretraining objectives ``pretrain.objective`` can name: one module per objective, named as the
params name it, as ``sslam.data.layouts`` keeps one module per dataset layout. Adding an objective is adding
one module here that defines

    OBJECTIVE = Objective(heads=my_heads, stage1=my_losses, predicts_masked=True)

``heads(model_cfg, encoder)`` builds the modules the student trains beside its encoder (attribute name ->
module, set on :class:`~sslam.pretrain.student.Student` in that order); ``stage1(setup)`` returns the
stage-1 step: (clips, their store rows, seed) -> the loss terms, ``"loss"`` the one trained
(``docs/method.md``, "Adding an objective").

The objectives are found by their file names (``pkgutil``), and a module is imported only when its objective
is asked for. This registry imports no sslam module, so the params check (``PretrainConfig``) may ask it
which objectives exist; modules whose names start with ``_`` are helpers, not objectives.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch only: the registry imports no sslam module (the params check imports it)
    from pathlib import Path

    import torch
    from torch import nn

__all__ = [
    "LossSetup",
    "Objective",
    "StepLosses",
    "UnknownObjectiveError",
    "check_name",
    "get_objective",
    "objective_names",
]

StepLosses = Callable[["torch.Tensor", list[int], int], dict[str, "torch.Tensor"]]


class UnknownObjectiveError(ValueError):
    """An objective no module of ``sslam/pretrain/objectives`` provides."""


@dataclass(frozen=True)
class LossSetup:
    """What a stage's loss factory may read: the params, the models and the running target means.

    Typed loosely where the type lives in ``sslam`` (this registry imports no sslam module): ``cfg`` is the
    stage's ``PretrainParams``, ``centring`` a ``sslam.pretrain.targets.PositionCentring``, ``store`` the
    ``sslam.features.reader.FeatureStore`` stage 2's waveform mixing reads (None where nothing reads it)."""

    cfg: Any
    student: nn.Module  # as the loop prepared it (its encoder and the objective's heads as attributes)
    teacher: nn.Module  # the EMA teacher: a copy of the student's encoder (a PatchEncoder)
    centring: Any
    store: Any
    device: torch.device


LossFactory = Callable[[LossSetup], StepLosses]


@dataclass(frozen=True)
class Objective:
    """One registered objective.

    ``heads``: the modules the student trains beside its encoder, by attribute name (built right after the
    encoder, in the dict's order: it decides their initial weights and the checkpoint's tensor names).
    ``stage1``: the factory of a stage-1 step's losses. ``predicts_masked``: it predicts at the masked
    positions from the encoder's outputs there, so ``model.masked_tokens: auto`` means ``mask_token`` for
    every encoder and ``drop`` is refused. ``stage2``: the factory of SSLAM's stage-2 step (None: stage 2
    passes the stage-1 checkpoint through). ``options``: the ``pretrain.<key>`` section it reads (None: none).
    ``target_diagnostics``: (cfg, stage, features folder, final checkpoint folder) -> what the stage's metrics
    add under ``target_diagnostics`` (bootstrap: how much of the teacher's targets position alone explains).
    """

    heads: Callable[[Any, nn.Module], dict[str, nn.Module]]  # (the model section, the PatchEncoder) -> modules
    stage1: LossFactory
    predicts_masked: bool
    stage2: LossFactory | None = None
    options: str | None = None
    target_diagnostics: Callable[[Any, str, Path, Path], dict] | None = None

    @property
    def trains_stage2(self) -> bool:
        return self.stage2 is not None


DISCOVERS = "sslam.pretrain.objectives"  # the objective modules are found by name at run time (sslam.provenance)


def objective_names() -> tuple[str, ...]:
    """Every registered objective: the objective modules' names, sorted."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def check_name(name: str) -> str:
    """``name`` if an objective module has it, else an :class:`UnknownObjectiveError` listing the registered
    ones (imports no objective: the params check's)."""
    names = objective_names()
    if name not in names:
        raise UnknownObjectiveError(
            f"pretrain.objective {name!r} is not a registered objective; registered: {list(names)} "
            f"(one module each in src/sslam/pretrain/objectives/)"
        )
    return name


def get_objective(name: str) -> Objective:
    """The objective ``pretrain.objective: <name>`` trains, or an :class:`UnknownObjectiveError`."""
    module = importlib.import_module(f"{__name__}.{check_name(name)}")
    objective = getattr(module, "OBJECTIVE", None)
    if not isinstance(objective, Objective):
        raise TypeError(f"{module.__file__}: an objective module defines OBJECTIVE = Objective(...)")
    return objective
