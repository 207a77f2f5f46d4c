"""This project's checkpoint folders, and the names of the encoders evaluation compares.

A checkpoint folder (``checkpoints/<name>/final/``: a pretraining run's, or an ``import_weights``
stage's) holds::

    student.safetensors   the student: the encoder under ``encoder.``, the pretraining head beside it
                          (an import: the encoder alone)
    teacher.safetensors   the EMA teacher's encoder (pretraining only)
    centring.safetensors  the running target means (pretraining under ``center_targets: running``)
    meta.json             what the encoder is:
                            fingerprint.model      the model section it was built with
                            fingerprint.objective  pretrain.objective (it decides masked_tokens: auto)
                            fingerprint.stage      stage1 / stage2 (a pretraining run; with the resume
                                                   guard's inputs and world size)
                            input                  sample rate, front end, window and normalisation it
                                                   was trained on (runs written before it: params')
                            imported               an import: the file it came from
                            step, passed_through_from

The encoder is always built from the folder's own ``meta.json``, never from params.yaml, so an edited
params.yaml cannot mis-build a checkpoint that already exists.

Encoder names (:func:`resolve`): ``stage1``, ``stage2``, a key of ``pretrain.stage2_runs`` (a run's
``final/``), a key of ``imports`` (an imported folder), ``random<N>`` (a fresh encoder of params' model
section from seed N), ``fbank_stats`` (the non-learned floor). The names with a meaning of their own,
:data:`BUILTIN_ENCODERS`, are defined in ``sslam.config.base``, where params validation refuses them as a
run's or an import's name: a stage that only reads params then never depends on this module's code.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from sslam.config.base import BUILTIN_ENCODERS
from sslam.config.features import FeaturesConfig
from sslam.config.model import ModelConfig
from sslam.io import TMP_PREFIX, write_json_atomic
from sslam.models.contract import PatchEncoder
from sslam.models.registry import build_encoder
from sslam.pretrain.objectives import get_objective

# ----------------------------------------------------------------------------- layout and names

FINAL = "final"
STUDENT = "student.safetensors"
TEACHER = "teacher.safetensors"
CENTRING = "centring.safetensors"
META = "meta.json"
ENCODER_PREFIX = "encoder."  # the student's encoder weights in student.safetensors
WEIGHTS = {"student": STUDENT, "teacher": TEACHER}

# The input settings: the log-mel that must equal the encoder's for a task or a caller to feed it
FRONT_END_KEYS = ("front_end", "num_mel_bins", "frame_shift_ms", "frame_length_ms")
LOGMEL_KEYS = ("f_min", "f_max")  # front_end: logmel only

# The encoder-name grammar (:func:`resolve`); BUILTIN_ENCODERS: the names no run or import may take
FBANK_STATS = "fbank_stats"
STAGES = ("stage1", "stage2")
EncoderKind = Literal["fbank_stats", "random", "stage", "run", "import"]


class UnknownEncoder(ValueError):
    """An encoder name the grammar does not know; the message lists what may be named."""


@dataclass(frozen=True)
class EncoderSource:
    """What an encoder name stands for: ``folder`` for a stage, a run or an import, ``seed`` for random."""

    name: str
    kind: EncoderKind
    folder: Path | None = None
    seed: int | None = None


def final_folder(checkpoints: str | Path, name: str) -> Path:
    """``<checkpoints>/<name>/final``: where the weights of run or import ``name`` live."""
    return Path(checkpoints) / name / FINAL


def resolve(name: str, cfg: Any, checkpoints: str | Path = "checkpoints") -> EncoderSource:
    """The encoder ``name`` means under ``cfg`` (the params ``Config``: its ``pretrain.stage2_runs`` and
    ``imports``); :class:`UnknownEncoder` for any other name."""
    if re.fullmatch(BUILTIN_ENCODERS, name):
        if name == FBANK_STATS:
            return EncoderSource(name, "fbank_stats")
        if name not in STAGES:
            return EncoderSource(name, "random", seed=int(name.removeprefix("random")))
    runs, imports = sorted(cfg.pretrain.stage2_runs), sorted(cfg.imports)
    kind: EncoderKind
    if name in STAGES:
        kind = "stage"
    elif name in runs:
        kind = "run"
    elif name in imports:
        kind = "import"
    else:
        raise UnknownEncoder(
            f"encoder {name!r}: not a known name; an encoder is stage1, stage2, random<N>, fbank_stats, "
            f"a key of pretrain.stage2_runs ({runs}) or a key of imports ({imports})"
        )
    return EncoderSource(name, kind, folder=final_folder(checkpoints, name))


# ----------------------------------------------------------------------------- reading


def read_meta(folder: str | Path) -> dict:
    """A checkpoint folder's ``meta.json``; FileNotFoundError when the folder is not a checkpoint."""
    folder = Path(folder)
    if not (folder / META).is_file() or not (folder / STUDENT).is_file():
        raise FileNotFoundError(f"{folder}: expected a checkpoint folder with {META} and {STUDENT}")
    return json.loads((folder / META).read_text())


def encoder_description(meta: dict, where: str | Path) -> tuple[ModelConfig, str]:
    """(model section, objective) the meta describes its encoder with; ValueError when it does not (a
    folder written before a pass-through carried its source's description: rerun the stage)."""
    fp = meta.get("fingerprint")
    if not isinstance(fp, dict) or not isinstance(fp.get("model"), dict):
        raise ValueError(
            f"{where}: {META} does not describe its encoder (no fingerprint.model); rerun the stage that wrote it"
        )
    return ModelConfig.model_validate(fp["model"]), fp.get("objective", "bootstrap")


def folder_input(folder: str | Path) -> dict | None:
    """The input settings a checkpoint folder records (None: a run written before they were recorded)."""
    return read_meta(folder).get("input")


def read_encoder(folder: str | Path, frames: int, mel: int, weights: str = "student") -> PatchEncoder:
    """The encoder of a checkpoint folder, built as its ``meta.json`` says (positions for ``frames`` x
    ``mel``), its weights loaded: the student's (``student``) or the EMA teacher's (``teacher``). The
    global RNG is left as it was (the initial weights drawn here are all overwritten)."""
    folder = Path(folder)
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {sorted(WEIGHTS)}, got {weights!r}")
    model, objective = encoder_description(read_meta(folder), folder)
    file = folder / WEIGHTS[weights]
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing (an import keeps the student's encoder only)")
    state = load_file(file)
    if weights == "student":
        state = {k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    with torch.random.fork_rng(devices=[]):
        encoder = build_encoder(model, frames, mel, predicts_masked=get_objective(objective).predicts_masked)
    encoder.load_state_dict(state)
    return encoder


def own_input(features: FeaturesConfig, sample_rate: int, stats: str | Path) -> dict:
    """The input an encoder of this project's pipeline expects: the features section's log-mel and
    window, normalised with the pinned ``features.norm_*`` or the features stage's ``stats.json``."""
    if features.norm_mean is not None:
        mean, std = features.norm_mean, features.norm_std
    elif Path(stats).is_file():
        st = json.loads(Path(stats).read_text())
        mean, std = st["mean"], st["std"]
    else:
        raise FileNotFoundError(f"{stats}: no normalisation statistics (run the features stage or pin features.norm_*)")
    keys = (*FRONT_END_KEYS, *(LOGMEL_KEYS if features.front_end == "logmel" else ()), "target_frames")
    return {
        "sample_rate": sample_rate,
        "features": {k: getattr(features, k) for k in keys} | {"norm_mean": float(mean), "norm_std": float(std)},
    }


# ----------------------------------------------------------------------------- writing


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out``, renamed onto it when the block succeeds: a killed writer never
    leaves a half-written folder that a later run would take for whole."""
    tmp = out.with_name(f"{TMP_PREFIX}{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def save_weights(folder: Path, student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    """``student.safetensors`` and ``teacher.safetensors`` (the step checkpoints' weights too)."""
    for file, module in ((STUDENT, student), (TEACHER, teacher)):
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, folder / file)


def _check_describes(meta: dict, where: Path) -> None:
    """A folder is only written when its meta builds its encoder."""
    encoder_description(meta, where)
    if "input" not in meta:
        raise ValueError(f"{where}: {META} must record the input settings the encoder was trained on")


def write_final(
    ckpt_dir: str | Path,
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    meta: dict,
    extra: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """``ckpt_dir/final``: a pretraining run's weights (student, EMA teacher, ``extra`` files such as
    :data:`CENTRING`) and ``meta`` (which must describe the encoder: model, objective, input)."""
    out = Path(ckpt_dir) / FINAL
    _check_describes(meta, out)
    with staged_folder(out) as tmp:
        save_weights(tmp, student, teacher)
        for file, tensors in (extra or {}).items():
            save_file(tensors, tmp / file)
        write_json_atomic(tmp / META, meta)
    return out


def write_encoder_folder(out: str | Path, encoder: torch.nn.Module, meta: dict) -> Path:
    """A checkpoint folder holding an encoder alone (an import): ``student.safetensors`` with its weights
    under ``encoder.``, and ``meta`` (which must describe it)."""
    out = Path(out)
    _check_describes(meta, out)
    with staged_folder(out) as tmp:
        save_file({f"{ENCODER_PREFIX}{k}": v.contiguous() for k, v in encoder.state_dict().items()}, tmp / STUDENT)
        write_json_atomic(tmp / META, meta)
    return out


def pass_through(init_from: str | Path, ckpt_dir: str | Path, note: dict) -> Path:
    """``ckpt_dir/final`` = a copy of checkpoint folder ``init_from``, its meta with ``note`` added (so the
    copy still describes its encoder)."""
    init_from, out = Path(init_from), Path(ckpt_dir) / FINAL
    meta = read_meta(init_from) | note
    with staged_folder(out) as tmp:
        shutil.copytree(init_from, tmp, ignore=shutil.ignore_patterns(META), dirs_exist_ok=True)
        write_json_atomic(tmp / META, meta)
    return out
