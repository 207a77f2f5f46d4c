"""The published encoder layouts: the released EAT / SSLAM weights into this project's Transformer
encoder (:func:`import_checkpoint`), and this project's encoders out for other programs
(:func:`export_encoder`). This project's own checkpoint folder format lives in :mod:`sslam.checkpoints`.

Layouts read (``read_weights``) and written (``export_encoder``):

- ``hub``: the model-hub folder of the released weights, ``model.safetensors`` + ``config.json``, keys
  under ``model.``. Encoder names and where they land here (``models/vit.py``)::

      local_encoder.proj.{weight,bias}       patch conv (D, 1, p, p)         patch_embed.proj
      extra_tokens                           (1, 1, D) CLS, no position      cls_token
      fixed_positional_encoder.positions     (1, max_length * F', D)         checked equal to our sin-cos
      pre_norm.{weight,bias}                 LayerNorm before block 0        pre_norm
      blocks.N.{attn.qkv, attn.proj, norm1, norm2}                           the same names
      blocks.N.mlp.{fc1, fc2}                                                blocks.N.mlp.{0, 2}
      fc_norm, head                          fine-tuned: the AudioSet classifier (read, not the encoder's)

  Forward: patch conv -> + positions[:, :N] -> prepend CLS -> pre_norm -> post-LN blocks, no final norm:
  exactly ``models/vit.py``'s ViTEncoder.
- ``fairseq``: a ``.pt`` training checkpoint, weights under ``state["model"]``: ``modality_encoders.IMAGE.
  {local_encoder.proj, extra_tokens, fixed_positional_encoder.positions, context_encoder.norm (the
  pre-norm), decoder.* (pretraining's decoder, skipped)}``, ``blocks.N.*``, the EMA teacher's copy under
  ``_ema``; fine-tuned ones hold the encoder under ``model.`` and add ``fc_norm`` / ``head``. Read with
  ``weights_only``: no code from the file runs (anything that is not a tensor, a number, a string or a
  container becomes an inert :class:`Opaque` record).
- ``sslam``: this project's own encoder layout, for every encoder (the only one for Mamba and xLSTM):
  ``encoder.safetensors`` (the encoder's own state-dict names) + ``config.json`` (``format:
  sslam-encoder``, the ``model`` section, the input settings).

An encoder's *input* travels with it (``input``: sample rate, the log-mel settings, the window length
and the normalisation it was trained with): the released models read 16 kHz audio, the Kaldi fbank
(128 bins, 25 / 10 ms), 1024-frame windows and ``(x + 4.268) / (2 * 4.569)`` (:data:`RELEASED_INPUT`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sslam.checkpoints import (
    FRONT_END_KEYS,
    LOGMEL_KEYS,
    STUDENT,
    encoder_description,
    read_encoder,
    read_meta,
    staged_folder,
    write_encoder_folder,
)
from sslam.config.base import merged
from sslam.config.model import ModelConfig
from sslam.io import write_json_atomic
from sslam.models.contract import PatchEncoder, as_patch, sincos_2d
from sslam.models.registry import build_encoder, resolved_masked_tokens
from sslam.pretrain.objectives import get_objective

# The input the released EAT / SSLAM models were trained on (their fbank, window and AudioSet statistics).
RELEASED_INPUT: dict[str, Any] = {
    "sample_rate": 16000,
    "features": {
        "front_end": "kaldi",
        "num_mel_bins": 128,
        "frame_shift_ms": 10.0,
        "frame_length_ms": 25.0,
        "target_frames": 1024,
        "norm_mean": -4.268,
        "norm_std": 4.569,
    },
}
# The model fields the released weights do not decide (the student's decoder, the recurrent encoders'
# blocks): fixed, so an import's meta.json never depends on params.yaml.
IMPORTED_MODEL_REST: dict[str, Any] = {
    "decoder_layers": 4,
    "decoder_kernel": 3,
    "decoder_groups": 16,
    "decoder_fill": "noise",
    "patch_init": "pytorch",
    "mamba": {
        "d_state": 8,
        "d_conv": 4,
        "expand": 1,
        "bidirectional": False,
        "norm": "layernorm",
        "cls_position": "none",
    },
    "xlstm": {"num_heads": 4, "expand": 1, "conv_kernel": 4, "cls_position": "none"},
}
HUB_MAX_LENGTH = 768  # time patches in the released positions table (768 x 16 frames)
OWN_FORMAT = "sslam-encoder"
LAYOUTS = ("hub", "fairseq", "sslam")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as an encoder: names the file and the keys at fault."""


# ----------------------------------------------------------------------------- reading files


class Opaque:
    """Stands in for any object a ``.pt`` pickles outside torch's allow-list (numpy scalars and arrays in
    fairseq's training state): built instead of the named class and given nothing, so unpickling never
    runs the file's code. fairseq stores its config as plain containers, which load as they are."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def safe_torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` where every global outside torch's allow-list is an
    :class:`Opaque` record: tensors come back, nothing from the file is called."""
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    with torch.serialization.safe_globals([(Opaque, name) for name in unsafe]):
        return torch.load(path, map_location="cpu", weights_only=True)


def _flat_tensors(tree: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """{dotted name: tensor} of a nested state mapping (fairseq keeps the EMA copy as a nested dict)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, torch.Tensor):
            out[prefix + str(k)] = v
        elif isinstance(v, dict):
            out |= _flat_tensors(v, f"{prefix}{k}.")
    return out


def detect_layout(path: Path) -> tuple[str, Path]:
    """(layout, weights file) of a checkpoint path: a hub folder or its ``model.safetensors``, a fairseq
    ``.pt``, or a folder of this project's own layout."""
    if path.is_dir():
        if (path / "encoder.safetensors").is_file():
            return "sslam", path / "encoder.safetensors"
        if (path / "model.safetensors").is_file():
            return "hub", path / "model.safetensors"
        if (path / STUDENT).is_file():
            raise CheckpointError(
                f"{path}: a checkpoint folder of this project ({STUDENT}): name its run in "
                "evaluate.*_encoders, or write it out with python -m sslam.export"
            )
        raise CheckpointError(f"{path}: neither model.safetensors (hub layout) nor encoder.safetensors (sslam layout)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file or folder")
    if path.suffix == ".safetensors":
        return ("sslam" if path.name == "encoder.safetensors" else "hub"), path
    if path.suffix in (".pt", ".pth", ".ckpt"):
        return "fairseq", path
    raise CheckpointError(f"{path}: expected a folder, a .safetensors or a fairseq .pt/.pth/.ckpt checkpoint")


def _config_beside(weights: Path) -> dict:
    file = weights.with_name("config.json")
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (the hub and sslam layouts keep config.json beside the weights)")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file}: not valid JSON ({err})") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except Exception as err:  # safetensors raises its own error types for a truncated header or data
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}); truncated download?") from None


def read_weights(path: str | Path, weights: str = "student") -> tuple[str, dict[str, torch.Tensor], dict, Path]:
    """(layout, tensors under the layout's own names, its config, the weights file). ``weights``:
    ``student`` (the trained network) or ``teacher`` (a fairseq checkpoint's EMA copy, ``_ema``)."""
    layout, file = detect_layout(Path(path))
    if weights == "teacher" and layout != "fairseq":
        raise CheckpointError(f"{file}: weights: teacher needs a fairseq .pt (only it keeps the EMA copy)")
    if layout != "fairseq":
        return layout, _read_safetensors(file), _config_beside(file), file
    try:
        state = safe_torch_load(file)
    except Exception as err:  # a truncated zip, a pickle torch refuses
        raise CheckpointError(f"{file}: not a readable torch checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{file}: no state['model'] mapping (not a fairseq checkpoint)")
    model = state["model"]
    if weights == "teacher":
        if not isinstance(model.get("_ema"), dict):
            raise CheckpointError(f"{file}: weights: teacher, but state['model'] has no '_ema' teacher copy")
        tensors = _flat_tensors(model["_ema"])
        if tensors and all(re.match(r"\d+\.", k) for k in tensors):
            # ema_encoder_only (data2vec's default): the teacher is the block stack; the front end is shared
            front = {k: v for k, v in _flat_tensors(model).items() if not re.match(r"(model\.)?blocks\.|_ema\.", k)}
            tensors = front | {f"blocks.{k}": v for k, v in tensors.items()}
    else:
        tensors = _flat_tensors({k: v for k, v in model.items() if k != "_ema"})
    cfg = state.get("cfg")
    model_cfg = cfg.get("model") if isinstance(cfg, dict) else None
    return layout, tensors, model_cfg if isinstance(model_cfg, dict) else {}, file


# ----------------------------------------------------------------------------- key names

_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(attn\.qkv|attn\.proj|norm1|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)")
_FRONT = {
    "local_encoder.proj.weight": "patch_embed.proj.weight",
    "local_encoder.proj.bias": "patch_embed.proj.bias",
    "extra_tokens": "cls_token",
    "pre_norm.weight": "pre_norm.weight",
    "pre_norm.bias": "pre_norm.bias",
}
POSITIONS = "fixed_positional_encoder.positions"
CLASSIFIER = ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias")


def hub_name_to_ours(name: str) -> str | None:
    """This project's Encoder name for a hub encoder key (without ``model.``); None: not an encoder weight."""
    if name in _FRONT:
        return _FRONT[name]
    m = _BLOCK_KEY.fullmatch(name)
    if m:
        part = {"mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2"}.get(m.group(2), m.group(2))
        return f"blocks.{m.group(1)}.{part}.{m.group(3)}"
    return None


def ours_to_hub_name(name: str) -> str:
    for hub, ours in _FRONT.items():
        if ours == name:
            return hub
    return name.replace(".mlp.0.", ".mlp.fc1.").replace(".mlp.2.", ".mlp.fc2.")


def _fairseq_to_hub_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fairseq names -> hub names: the modality encoder's front end, the pre-norm (``context_encoder.norm``);
    pretraining's decoder dropped; a fine-tuned checkpoint's ``model.`` prefix removed."""
    out = {}
    for name, t in tensors.items():
        inner = name[len("model.") :] if name.startswith("model.") and name not in CLASSIFIER else name
        m = re.fullmatch(r"modality_encoders\.(\w+)\.(.*)", inner)
        if m:
            inner = m.group(2)
            if inner.startswith("decoder."):
                continue  # pretraining's CNN decoder: not part of the encoder
            inner = re.sub(r"^context_encoder\.norm\.", "pre_norm.", inner)
        out[inner] = t
    return out


def _strip_model_prefix(tensors: dict[str, torch.Tensor], file: Path) -> dict[str, torch.Tensor]:
    outside = sorted(k for k in tensors if not k.startswith("model."))
    if outside:
        raise CheckpointError(f"{file}: keys outside 'model.' in a hub checkpoint: {outside[:8]}")
    return {k[len("model.") :]: v for k, v in tensors.items()}


# ----------------------------------------------------------------------------- import


def _depth_of(names: list[str]) -> int:
    idx = [int(m.group(1)) for n in names if (m := re.match(r"blocks\.(\d+)\.", n))]
    return max(idx) + 1 if idx else 0


def hub_model_config(tensors: dict[str, torch.Tensor], config: dict, file: Path, num_heads: int | None) -> ModelConfig:
    """The Transformer's sizes from the weights' shapes, cross-checked against ``config``; the head
    count (not in any shape) from ``num_heads`` (params) or the config."""
    w = tensors.get("local_encoder.proj.weight")
    if w is None or w.dim() != 4:
        raise CheckpointError(f"{file}: missing the patch embedding local_encoder.proj.weight (D, 1, p, p)")
    dim, patch = int(w.shape[0]), [int(w.shape[2]), int(w.shape[3])]
    fc1 = tensors.get("blocks.0.mlp.fc1.weight")
    depth = _depth_of(list(tensors))
    if fc1 is None or depth == 0:
        raise CheckpointError(f"{file}: missing blocks.0.mlp.fc1.weight: no transformer blocks in the checkpoint")
    if config.get("layer_norm_first"):
        raise CheckpointError(
            f"{file}: layer_norm_first: true (pre-LN blocks); this encoder's blocks are post-LN, as EAT / SSLAM"
        )
    if config.get("fixed_positions") is False or config.get("norm_affine") is False:
        raise CheckpointError(f"{file}: fixed_positions and norm_affine must be true (as every released model)")
    found = {"embed_dim": dim, "depth": depth}
    for key, value in found.items():
        if key in config and int(config[key]) != value:
            raise CheckpointError(f"{file}: config.json says {key} {config[key]}, the weights have {value}")
    heads = num_heads or config.get("num_heads")
    if heads is None:
        raise CheckpointError(
            f"{file}: the checkpoint does not say its number of attention heads: set num_heads in its imports entry"
        )
    return ModelConfig.model_validate(
        IMPORTED_MODEL_REST
        | {
            "encoder": "transformer",
            "masked_tokens": "drop",
            "embed_dim": dim,
            "depth": depth,
            "num_heads": int(heads),
            "mlp_ratio": fc1.shape[0] / dim,
            "patch_size": patch[0] if patch[0] == patch[1] else patch,
        }
    )


def load_hub_state(encoder: PatchEncoder, tensors: dict[str, torch.Tensor], file: Path) -> dict[str, torch.Tensor]:
    """Load hub-named tensors into ``encoder`` (positions checked, not loaded); returns the classifier's
    tensors, if any. Errors name the keys as the file does."""
    state, unknown = {}, []
    for name, t in tensors.items():
        ours = hub_name_to_ours(name)
        if name == POSITIONS:
            _check_positions(t, encoder, file)
        elif ours is not None:
            state[ours] = t
        elif name not in CLASSIFIER:
            unknown.append(name)
    _load_checked(encoder, state, file, "an EAT / SSLAM encoder", ours_to_hub_name, unknown)
    return {k: t for k, t in tensors.items() if k in CLASSIFIER}


def _load_checked(
    encoder: PatchEncoder,
    state: dict[str, torch.Tensor],
    file: Path,
    what: str,
    shown: Callable[[str], str] = str,
    unknown: list[str] | None = None,
) -> None:
    """``encoder.load_state_dict(state)`` after naming every unknown, missing or mis-shaped key in one
    error (``shown``: a key as the file names it)."""
    expected = encoder.state_dict()
    unknown = sorted([*(unknown or []), *(shown(k) for k in state if k not in expected)])
    missing = sorted(shown(k) for k in expected if k not in state)
    shapes = [
        f"{shown(k)} {tuple(t.shape)} (expected {tuple(expected[k].shape)})"
        for k, t in state.items()
        if k in expected and t.shape != expected[k].shape
    ]
    problems = [
        f"{label} keys {keys[:8]}"
        for label, keys in (("unknown", unknown), ("missing", missing), ("mis-shaped", shapes))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{file}: not {what}: " + "; ".join(problems))
    encoder.load_state_dict({k: v.float() for k, v in state.items()})


def _check_positions(table: torch.Tensor, encoder: PatchEncoder, file: Path) -> None:
    """The stored positions must be the 2-D sin-cos this encoder computes (it does not store them)."""
    dim, freq = encoder.dim, encoder.grid[1]
    if table.dim() != 3 or table.shape[2] != dim or table.shape[1] % freq:
        raise CheckpointError(
            f"{file}: {POSITIONS} has shape {tuple(table.shape)}, expected (1, max_length * {freq}, {dim})"
        )
    ours = sincos_2d(dim, table.shape[1] // freq, freq)
    err = (table[0].float() - ours).abs().max().item()
    if err > 1e-4:
        raise CheckpointError(
            f"{file}: {POSITIONS} is not the fixed 2-D sin-cos table of EAT (max difference {err:.3g}): "
            "learned positions are not supported"
        )


def input_of(layout: str, config: dict, overrides: dict | None = None) -> dict:
    """The input an encoder expects: this project's exports carry it (``sslam`` layout, or the hub
    config's ``sslam`` entry); the released weights' is :data:`RELEASED_INPUT` with the config's mel
    bins; ``overrides`` (params) replace single values."""
    own = config if layout == "sslam" else config.get("sslam")  # an export of this project carries its input
    if own:
        spec = {"sample_rate": own["sample_rate"], "features": dict(own["features"])}
    else:
        spec = deepcopy(RELEASED_INPUT)
        spec["features"]["num_mel_bins"] = int(config.get("mel_bins", spec["features"]["num_mel_bins"]))
    for key, value in (overrides or {}).items():
        if value is not None:
            spec["features"][key] = value
    return spec


def load_weights(
    path: str | Path, weights: str = "student", num_heads: int | None = None, overrides: dict | None = None
) -> tuple[PatchEncoder, dict]:
    """Any supported checkpoint -> (the encoder, built at the input's window length, weights loaded;
    ``info``: model config, input, layout, file, classifier tensors if any)."""
    layout, tensors, config, file = read_weights(path, weights)
    if layout == "sslam" and config.get("format") != OWN_FORMAT:
        raise CheckpointError(
            f"{file.with_name('config.json')}: format is {config.get('format')!r}, expected {OWN_FORMAT!r}"
        )
    spec = input_of(layout, config, overrides)
    frames, mel = spec["features"]["target_frames"], spec["features"]["num_mel_bins"]
    if layout == "sslam":
        model_cfg = ModelConfig.model_validate(config["model"])
        encoder = build_encoder(model_cfg, frames, mel)
        _load_checked(encoder, tensors, file, "the encoder its config.json describes")
        classifier: dict = {}
    else:
        if layout == "fairseq":
            tensors = _fairseq_to_hub_names(tensors)
        else:
            tensors = _strip_model_prefix(tensors, file)
        model_cfg = hub_model_config(tensors, config, file, num_heads)
        encoder = build_encoder(model_cfg, frames, mel)
        classifier = load_hub_state(encoder, tensors, file)
    info = {"model": model_cfg, "input": spec, "layout": layout, "file": file, "classifier": classifier}
    return encoder.eval(), info


def import_checkpoint(
    path: str | Path,
    out: str | Path,
    weights: str = "student",
    num_heads: int | None = None,
    overrides: dict | None = None,
) -> dict:
    """Convert a checkpoint into this project's checkpoint folder ``out`` (``checkpoints/<name>/final``,
    :func:`sslam.checkpoints.write_encoder_folder`: the encoder's weights, ``meta.json`` with its model,
    its input and where it came from)."""
    encoder, info = load_weights(path, weights, num_heads, overrides)
    with open(info["file"], "rb") as f:
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    meta = {
        "fingerprint": {"model": info["model"].model_dump(), "objective": "bootstrap"},
        "input": info["input"],
        "imported": {
            "path": str(path),
            "layout": info["layout"],
            "weights": weights,
            "sha256": sha256,
            "classifier": sorted(info["classifier"]),
        },
    }
    write_encoder_folder(out, encoder, meta)
    return meta


def check_input(spec: dict, sample_rate: int, features: Any, where: str) -> None:
    """The task's (or caller's) log-mel must be the one the encoder was trained on; ``where`` names the
    params that set it. The window length and normalisation need not match: positions follow the input
    length, and the caller normalises with ``spec``'s statistics."""
    want = spec["features"]
    keys = FRONT_END_KEYS + (LOGMEL_KEYS if want.get("front_end") == "logmel" else ())
    wrong = [f"{k} {getattr(features, k)!r} (needs {want[k]!r})" for k in keys if getattr(features, k) != want.get(k)]
    if sample_rate != spec["sample_rate"]:
        wrong.insert(0, f"data.sample_rate {sample_rate} (needs {spec['sample_rate']})")
    if wrong:
        raise ValueError(f"{where}: the encoder was trained on another input: " + "; ".join(wrong))


# ----------------------------------------------------------------------------- export


def hub_state_from_encoder(encoder: PatchEncoder, max_length: int = HUB_MAX_LENGTH) -> dict[str, torch.Tensor]:
    """A Transformer encoder's weights under the hub names (``model.`` prefix), with the positions table
    of ``max_length`` time patches; the mask embedding of a ``mask_token`` encoder has no slot there."""
    state = {
        f"model.{ours_to_hub_name(k)}": v.detach().float().cpu().contiguous()
        for k, v in encoder.state_dict().items()
        if k != "mask_token"
    }
    table = sincos_2d(encoder.dim, max(max_length, encoder.grid[0]), encoder.grid[1])
    state[f"model.{POSITIONS}"] = table[None].contiguous()
    return state


def export_encoder(folder: str | Path, out: str | Path, input_spec: dict) -> str:
    """Write the encoder of a checkpoint folder of this project to ``out``: the hub layout for a
    Transformer, this project's own layout for Mamba and xLSTM. Returns the layout written."""
    folder, out = Path(folder), Path(out)
    model_cfg, objective = encoder_description(read_meta(folder), folder)
    feats = input_spec["features"]
    encoder = read_encoder(folder, feats["target_frames"], feats["num_mel_bins"])
    if model_cfg.encoder == "transformer":
        layout, weights = "hub", {"model.safetensors": hub_state_from_encoder(encoder)}
        patch = as_patch(model_cfg.patch_size)
        config = {
            "model_type": "eat",
            "embed_dim": model_cfg.embed_dim,
            "depth": model_cfg.depth,
            "num_heads": model_cfg.num_heads,
            "mlp_ratio": model_cfg.mlp_ratio,
            "patch_size": patch[0] if patch[0] == patch[1] else list(patch),
            "stride": patch[0] if patch[0] == patch[1] else list(patch),
            "in_chans": 1,
            "mel_bins": feats["num_mel_bins"],
            "max_length": max(HUB_MAX_LENGTH, encoder.grid[0]),
            "img_size": [feats["target_frames"], feats["num_mel_bins"]],
            "model_variant": "pretrain",  # no classifier: the encoder alone
            "qkv_bias": True,
            "norm_eps": 1e-6,
            "norm_affine": True,
            "fixed_positions": True,
            "layer_norm_first": False,
            "sslam": input_spec,  # this project's input settings (read back by the import)
        }
    else:
        layout = "sslam"
        weights = {"encoder.safetensors": {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}}
        masked = resolved_masked_tokens(model_cfg, predicts_masked=get_objective(objective).predicts_masked)
        own = merged(model_cfg, {"masked_tokens": masked})
        config = {"format": OWN_FORMAT, "version": 1, "model": own.model_dump()} | input_spec
    with staged_folder(out) as tmp:
        for name, tensors in weights.items():
            save_file(tensors, tmp / name)
        write_json_atomic(tmp / "config.json", config)
    return layout
