"""``pretrain.objective: bootstrap``: masked latent bootstrapping (EAT / data2vec 2.0) in stage 1, then
SSLAM's stage 2. One function per paper step; the typed params sections come in whole, so each key reaches
the math under its own name (``mask.block_size``, ``stage.top_k_layers``, ...).

- :func:`stage1_losses`: masked latent bootstrapping (Section 3.1, eqs. 1 and 2): the student predicts
  the EMA teacher's averaged top-k layer targets of the masked patches (local) and their mean (global).
- :func:`stage2_losses`: SSLAM (Algorithm 1): the unmixed batch and its partial mixtures, with the
  source retention loss (eq. 4, :func:`srl_target`) on the mixed clips.

The student trains a CNN ``decoder`` beside its encoder (:func:`build_heads`), to the teacher's targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import torch
from torch import nn

from sslam.config.features import FeaturesConfig
from sslam.config.model import ModelConfig
from sslam.config.pretrain import MaskConfig, MixConfig, SrlConfig, Stage2Config, StageConfig, Variant
from sslam.models.contract import PatchEncoder
from sslam.models.decoder import CnnDecoder
from sslam.pretrain.diagnostics import checkpoint_diagnostics
from sslam.pretrain.losses import cls_loss, patch_loss
from sslam.pretrain.masking import inverse_block_mask, visible_indices
from sslam.pretrain.mixing import frames_mask, mix_spectrograms, mix_waveforms, mixed_time_patches, partner
from sslam.pretrain.objectives import LossSetup, Objective, StepLosses
from sslam.pretrain.targets import PositionCentring, average_top_layers, cls_target, final_target

VARIANTS = get_args(Variant)  # the rows of Tables 2 and 3


def clones_per_clip(mask: MaskConfig, stage: StageConfig, masked_tokens: str) -> int:
    """Masked copies of each clip: the stage's ``clone_batch``, else ``mask.clone_batch``; a per-mode
    setting is read for the encoder's resolved ``masked_tokens`` (``drop`` | ``mask_token``)."""
    value = stage.clone_batch or mask.clone_batch
    return value if isinstance(value, int) else getattr(value, masked_tokens)


@dataclass(frozen=True)
class WaveformInputs:
    """What the ``waveform`` strategy needs: the clips' waveforms and how to turn a mix into log-mel."""

    waves: torch.Tensor
    lengths: torch.Tensor  # (B,) valid samples of each clip (the rest of ``waves`` is zero padding)
    mean: float
    std: float
    sample_rate: int
    features: FeaturesConfig  # the features stage's settings: the mixtures' log-mel is the stage's


def stage1_losses(
    student: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,
    mask: MaskConfig,
    stage: StageConfig,
    seed: int,
    centring: PositionCentring | None = None,
) -> dict[str, torch.Tensor]:
    """Masked latent bootstrapping (paper Section 3.1): local loss on masked patches, global on CLS.

    ``seed`` fixes this step's masks and decoder noise, so a resumed run repeats an uninterrupted one.
    ``centring`` carries the running means of ``center_targets: running`` from step to step.
    """
    centring = centring or PositionCentring(stage.center_targets)
    clones = clones_per_clip(mask, stage, teacher.masked_tokens)
    b = x.shape[0]
    g_mask = torch.Generator().manual_seed(seed)
    masked = inverse_block_mask(b * clones, teacher.grid, mask.ratio, mask.block_size, mask.prob_adjust, g_mask)
    masked = masked.to(x.device)
    keep = visible_indices(masked)
    with torch.no_grad():  # the teacher sees each whole clip once, not once per clone
        _, layers = teacher(x.float(), return_layers=True)
        y = final_target(centring(average_top_layers(layers, stage.top_k_layers), "local"))
        y_cls = cls_target(y).repeat_interleave(clones, dim=0)
        y = y.repeat_interleave(clones, dim=0)
    g_noise = torch.Generator(device=x.device).manual_seed(seed + 1)
    cls, pred = student(x, keep, clones, g_noise)
    local = patch_loss(pred, y, masked)
    glob = cls_loss(cls, y_cls, stage.cls_loss_reduction)
    return {"loss": local + stage.cls_loss_weight * glob, "local": local, "global": glob}


def srl_target(
    own: torch.Tensor, partner_part: torch.Tensor, mixed_tokens: torch.Tensor, aggregation: str
) -> torch.Tensor:
    """Source retention target (eq. 4) for each mixed clip: its own unmixed target everywhere, and in the
    mixed tokens the aggregate of its own target and the partner's target there. No renormalisation.

    own (B, N, D): teacher target of the unmixed clip; partner_part (B, M, D): teacher target of the
    partner computed on the mixed tokens only (other tokens dropped after the positions);
    mixed_tokens (B, N) bool with M True per row, in token order."""
    out = own.clone()
    idx = visible_indices(~mixed_tokens)  # the mixed token positions, sorted, M per row
    mine = torch.gather(own, 1, idx[:, :, None].expand(-1, -1, own.shape[2]))
    if aggregation == "mean":
        agg = 0.5 * (mine + partner_part)
    elif aggregation == "max":
        agg = torch.maximum(mine, partner_part)
    else:
        raise ValueError(f"srl.aggregation must be 'mean' or 'max', got {aggregation!r}")
    return out.scatter(1, idx[:, :, None].expand(-1, -1, own.shape[2]), agg)


def srl_cls_target(own_cls: torch.Tensor, partner_cls: torch.Tensor, aggregation: str) -> torch.Tensor:
    """Global source retention target (Table 5, last row): the mixed clip's CLS should hold both
    sources, so its target aggregates its own unmixed CLS target and the partner's CLS target (the mean
    of the partner's teacher target over the tokens that enter the mixture)."""
    if aggregation == "mean":
        return 0.5 * (own_cls + partner_cls)
    if aggregation == "max":
        return torch.maximum(own_cls, partner_cls)
    raise ValueError(f"srl.aggregation must be 'mean' or 'max', got {aggregation!r}")


def mixed_inputs(
    x: torch.Tensor, mixed_tp: torch.Tensor, patch_size: int, mix: MixConfig, wave: WaveformInputs | None
) -> torch.Tensor:
    """The partial mixtures B_m of Algorithm 1: clip i with its partner (clip i-1) in the mixed time patches."""
    frames = x.shape[1]
    fm = frames_mask(mixed_tp, patch_size, frames)  # patch_size: the time side
    if mix.strategy != "waveform":
        return mix_spectrograms(x, fm, mix.strategy)
    if wave is None:
        raise ValueError("mix.strategy 'waveform' needs the stored waveforms (features.store_waveforms: true)")
    return mix_waveforms(wave.waves, wave.lengths, fm, wave.mean, wave.std, wave.sample_rate, wave.features, frames).to(
        x.dtype
    )


def stage2_losses(
    student: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,
    mask: MaskConfig,
    stage: Stage2Config,
    mix: MixConfig,
    srl: SrlConfig,
    seed: int,
    wave: WaveformInputs | None = None,
    centring: PositionCentring | None = None,
) -> dict[str, torch.Tensor]:
    """Algorithm 1: unmixed batch B and its partial mixture B_m go through student and teacher together
    (2B); the mixed clip i reuses clip i's masks; five losses, as ``stage.variant`` selects (six with the
    global SRL term of Table 5). ``wave``: the clips' waveforms (and valid lengths) for waveform mixing."""
    if stage.variant not in VARIANTS:
        raise ValueError(f"pretrain.stage2.variant must be one of {VARIANTS}, got {stage.variant!r}")
    centring = centring or PositionCentring(stage.center_targets)
    b = x.shape[0]
    gt, gf = teacher.grid
    c = clones_per_clip(mask, stage, teacher.masked_tokens)
    g_mask = torch.Generator().manual_seed(seed)
    mixed_tp = mixed_time_patches(b, gt, mix.partial, mix.partial_mode, mix.mixed_fraction, g_mask)  # (B, T')
    halves = {"mb_ua": ("unmixed",), "mb_pma": ("mixed",)}.get(stage.variant, ("unmixed", "mixed"))
    inputs = torch.cat(
        [x if h == "unmixed" else mixed_inputs(x, mixed_tp, teacher.patch_size[0], mix, wave) for h in halves]
    )
    mask_b = inverse_block_mask(b * c, (gt, gf), mask.ratio, mask.block_size, mask.prob_adjust, g_mask).to(x.device)
    masked = mask_b.repeat(len(halves), 1)  # mixed clip i reuses clip i's masks
    keep = visible_indices(masked)
    with torch.no_grad():
        _, layers = teacher(inputs.float(), return_layers=True)
        y = final_target(centring(average_top_layers(layers, stage.top_k_layers), "local"))
        y_cls = cls_target(final_target(centring(average_top_layers(layers, stage.global_top_k_layers), "global")))
    g_noise = torch.Generator(device=x.device).manual_seed(seed + 1)
    cls, pred = student(inputs, keep, c, g_noise)

    out: dict[str, torch.Tensor] = {}
    rep = lambda t: t.repeat_interleave(c, dim=0)  # per clip -> per clone
    for k, h in enumerate(halves):
        rows = slice(k * b * c, (k + 1) * b * c)
        out[f"local_{h}"] = patch_loss(pred[rows], rep(y[k * b : (k + 1) * b]), masked[rows])
        out[f"global_{h}"] = cls_loss(cls[rows], rep(y_cls[k * b : (k + 1) * b]), stage.cls_loss_reduction)
    local = patch_loss(pred, y.repeat_interleave(c, dim=0), masked)  # mean over all masked tokens
    total = local
    for h in halves:
        if (h == "unmixed" and stage.global_unmixed) or (h == "mixed" and stage.global_mixed):
            total = total + stage.cls_loss_weight * out[f"global_{h}"]
    if stage.variant == "sslam":
        mixed_tok = mixed_tp.to(x.device)[:, :, None].expand(b, gt, gf).reshape(b, gt * gf)
        with torch.no_grad():  # teacher pass 2: the partner, only its tokens that enter the mixture
            where = visible_indices(~mixed_tok)
            _, layers2 = teacher(partner(x).float(), keep=where, return_layers=True)
            t_part = final_target(centring(average_top_layers(layers2, stage.top_k_layers), "local", where))
            target = srl_target(y[:b], t_part, mixed_tok, srl.aggregation)
            if srl.global_loss:
                part_cls = cls_target(
                    final_target(centring(average_top_layers(layers2, stage.global_top_k_layers), "global", where))
                )
                target_cls = srl_cls_target(y_cls[:b], part_cls, srl.aggregation)
        out["srl"] = patch_loss(pred[b * c :], rep(target), mask_b)
        total = total + srl.weight * out["srl"]
        if srl.global_loss:
            out["global_srl"] = cls_loss(cls[b * c :], rep(target_cls), stage.cls_loss_reduction)
            total = total + srl.weight * stage.cls_loss_weight * out["global_srl"]
    out["local"] = local
    out["loss"] = total
    return out


# ----------------------------------------------------------------------------- the registered objective


def build_heads(cfg: ModelConfig, encoder: PatchEncoder) -> dict[str, nn.Module]:
    """The light CNN decoder from the encoder's tokens at their patch positions to the teacher's targets."""
    return {
        "decoder": CnnDecoder(
            cfg.embed_dim,
            encoder.grid,
            cfg.decoder_layers,
            cfg.decoder_kernel,
            cfg.decoder_groups,
            fill=cfg.decoder_fill,
        )
    }


def stage1_step(setup: LossSetup) -> StepLosses:
    cfg = setup.cfg
    return lambda x, idx, seed: stage1_losses(
        setup.student, setup.teacher, x, cfg.mask, cfg.pretrain.stage1, seed, setup.centring
    )


def stage2_step(setup: LossSetup) -> StepLosses:
    """SSLAM's stage 2; waveform mixing reads the clips' waveforms from the store."""
    cfg, store = setup.cfg, setup.store
    scfg = cfg.pretrain.stage2

    def losses(x: torch.Tensor, idx: list[int], seed: int) -> dict[str, torch.Tensor]:
        wave = None
        if cfg.mix.strategy == "waveform" and scfg.variant != "mb_ua":
            wave = WaveformInputs(
                store.waves(idx).to(setup.device),
                store.wave_lengths(idx),
                store.mean,
                store.std,
                cfg.data.sample_rate,
                cfg.features,
            )
        return stage2_losses(
            setup.student, setup.teacher, x, cfg.mask, scfg, cfg.mix, cfg.srl, seed, wave, setup.centring
        )

    return losses


OBJECTIVE = Objective(
    heads=build_heads,
    stage1=stage1_step,
    stage2=stage2_step,
    predicts_masked=False,
    target_diagnostics=checkpoint_diagnostics,
)
