"""The student (encoder + decoder, what the optimizer trains) and one stage-1 step's losses."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from sslam.config import ModelConfig
from sslam.models.decoder import CnnDecoder
from sslam.models.vit import Encoder
from sslam.pretrain.losses import cls_loss, patch_loss
from sslam.pretrain.masking import inverse_block_mask, visible_indices
from sslam.pretrain.targets import PositionCentring, average_top_layers, cls_target, final_target


class Student(nn.Module):
    def __init__(self, cfg: ModelConfig, frames: int, mel: int):
        super().__init__()
        if cfg.encoder != "transformer":
            raise NotImplementedError(f"model.encoder {cfg.encoder!r}: only 'transformer' is built so far")
        self.encoder = Encoder(cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.patch_size, frames, mel,
                               cfg.patch_init)
        self.decoder = CnnDecoder(cfg.embed_dim, self.encoder.grid, cfg.decoder_layers, cfg.decoder_kernel,
                                  cfg.decoder_groups, fill=cfg.decoder_fill)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, clones: int, noise: torch.Generator | None = None):
        """-> (CLS outputs (B*C, D), patch predictions (B*C, N, D))."""
        h, _ = self.encoder(x, keep=keep, clones=clones)
        return h[:, 0], self.decoder(h[:, 1:], keep, noise)


def make_teacher(student: Student) -> Encoder:
    """A full copy of the encoder (own patch conv, CLS, norms), fp32, never trained by gradients."""
    teacher = copy.deepcopy(student.encoder).float()
    teacher.requires_grad_(False)
    return teacher.eval()


@dataclass(frozen=True)
class StepSettings:
    clones: int
    mask_ratio: float
    block: int
    adjust: float
    top_k: int
    cls_weight: float
    cls_reduction: str
    center: str = "none"  # pretrain.<stage>.center_targets: none (reference) | batch | running


def stage1_losses(student: nn.Module, teacher: Encoder, x: torch.Tensor, s: StepSettings, seed: int,
                  centring: PositionCentring | None = None) -> dict[str, torch.Tensor]:
    """Masked latent bootstrapping (paper Section 3.1): local loss on masked patches, global on CLS.

    ``seed`` fixes this step's masks and decoder noise, so a resumed run repeats an uninterrupted one.
    ``centring`` carries the running means of ``center_targets: running`` from step to step.
    """
    centring = centring or PositionCentring(s.center)
    b = x.shape[0]
    grid = teacher.grid
    g_mask = torch.Generator().manual_seed(seed)
    mask = inverse_block_mask(b * s.clones, grid, s.mask_ratio, s.block, s.adjust, g_mask).to(x.device)
    keep = visible_indices(mask)
    with torch.no_grad():  # the teacher sees each whole clip once, not once per clone
        _, layers = teacher(x.float(), return_layers=True)
        y = final_target(centring(average_top_layers(layers, s.top_k), "local"))
        y_cls = cls_target(y).repeat_interleave(s.clones, dim=0)
        y = y.repeat_interleave(s.clones, dim=0)
    g_noise = torch.Generator(device=x.device).manual_seed(seed + 1)
    cls, pred = student(x, keep, s.clones, g_noise)
    local = patch_loss(pred, y, mask)
    glob = cls_loss(cls, y_cls, s.cls_reduction)
    return {"loss": local + s.cls_weight * glob, "local": local, "global": glob}


# ----------------------------------------------------------------------------- stage 2 (SSLAM)

VARIANTS = ("mb_ua", "mb_pma", "mb_ua_pma", "sslam")


@dataclass(frozen=True)
class Stage2Settings:
    base: StepSettings
    variant: str  # mb_ua | mb_pma | mb_ua_pma | sslam (paper Tables 2 and 3)
    global_top_k: int  # teacher layers for the CLS targets (reference stage 2: the last one)
    global_unmixed: bool
    global_mixed: bool
    srl_weight: float
    srl_aggregation: str  # mean | max (Table 11)
    strategy: str  # max | average | waveform (Table 10)
    partial: bool
    partial_mode: str
    mixed_fraction: float
    patch: int
    srl_global: bool = False  # srl.global_loss: a CLS term of the SRL too (Table 5's last row)


@dataclass(frozen=True)
class WaveformInputs:
    """What the ``waveform`` strategy needs: the clips' waveforms and how to turn a mix into log-mel."""

    waves: torch.Tensor
    lengths: torch.Tensor  # (B,) valid samples of each clip (the rest of ``waves`` is zero padding)
    hop: int
    mean: float
    std: float
    sample_rate: int
    num_mel_bins: int
    frame_length_ms: float = 25.0


def srl_target(own: torch.Tensor, partner_part: torch.Tensor, mixed_tokens: torch.Tensor, aggregation: str) -> torch.Tensor:
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


def stage2_losses(student: nn.Module, teacher: Encoder, x: torch.Tensor, s: Stage2Settings, seed: int,
                  wave: WaveformInputs | None = None, centring: PositionCentring | None = None
                  ) -> dict[str, torch.Tensor]:
    """Algorithm 1: unmixed batch B and its partial mixture B_m go through student and teacher together
    (2B); the mixed clip i reuses clip i's masks; five losses, as ``variant`` selects (six with the
    global SRL term of Table 5). ``wave``: the clips' waveforms (and valid lengths) for waveform mixing."""
    centring = centring or PositionCentring(s.base.center)
    from sslam.pretrain.mixing import frames_mask, mix_spectrograms, mix_waveforms, mixed_time_patches, partner

    if s.variant not in VARIANTS:
        raise ValueError(f"pretrain.stage2.variant must be one of {VARIANTS}, got {s.variant!r}")
    b, frames, _ = x.shape
    gt, gf = teacher.grid
    c = s.base.clones
    g_mask = torch.Generator().manual_seed(seed)
    mixed_tp = mixed_time_patches(b, gt, s.partial, s.partial_mode, s.mixed_fraction, g_mask)  # (B, T')
    halves = {"mb_ua": ("unmixed",), "mb_pma": ("mixed",)}.get(s.variant, ("unmixed", "mixed"))
    parts = []
    for h in halves:
        if h == "unmixed":
            parts.append(x)
        elif s.strategy == "waveform":
            if wave is None:
                raise ValueError("mix.strategy 'waveform' needs the stored waveforms (features.store_waveforms: true)")
            fm = frames_mask(mixed_tp, s.patch, frames)
            parts.append(mix_waveforms(wave.waves, wave.lengths, fm, wave.hop, wave.mean, wave.std,
                                       wave.sample_rate, wave.num_mel_bins, frames, wave.frame_length_ms).to(x.dtype))
        else:
            parts.append(mix_spectrograms(x, frames_mask(mixed_tp, s.patch, frames), s.strategy))
    inputs = torch.cat(parts)
    mask_b = inverse_block_mask(b * c, (gt, gf), s.base.mask_ratio, s.base.block, s.base.adjust, g_mask).to(x.device)
    mask = mask_b.repeat(len(halves), 1)  # mixed clip i reuses clip i's masks
    keep = visible_indices(mask)
    with torch.no_grad():
        _, layers = teacher(inputs.float(), return_layers=True)
        y = final_target(centring(average_top_layers(layers, s.base.top_k), "local"))
        y_cls = cls_target(final_target(centring(average_top_layers(layers, s.global_top_k), "global")))
    g_noise = torch.Generator(device=x.device).manual_seed(seed + 1)
    cls, pred = student(inputs, keep, c, g_noise)

    out: dict[str, torch.Tensor] = {}
    rep = lambda t: t.repeat_interleave(c, dim=0)  # noqa: E731  per clip -> per clone
    for k, h in enumerate(halves):
        rows = slice(k * b * c, (k + 1) * b * c)
        out[f"local_{h}"] = patch_loss(pred[rows], rep(y[k * b : (k + 1) * b]), mask[rows])
        out[f"global_{h}"] = cls_loss(cls[rows], rep(y_cls[k * b : (k + 1) * b]), s.base.cls_reduction)
    local = patch_loss(pred, y.repeat_interleave(c, dim=0), mask)  # mean over all masked tokens
    total = local
    for h in halves:
        if (h == "unmixed" and s.global_unmixed) or (h == "mixed" and s.global_mixed):
            total = total + s.base.cls_weight * out[f"global_{h}"]
    if s.variant == "sslam":
        mixed_tok = mixed_tp.to(x.device)[:, :, None].expand(b, gt, gf).reshape(b, gt * gf)
        with torch.no_grad():  # teacher pass 2: the partner, only its tokens that enter the mixture
            where = visible_indices(~mixed_tok)
            _, layers2 = teacher(partner(x).float(), keep=where, return_layers=True)
            t_part = final_target(centring(average_top_layers(layers2, s.base.top_k), "local", where))
            target = srl_target(y[:b], t_part, mixed_tok, s.srl_aggregation)
            if s.srl_global:
                part_cls = cls_target(final_target(centring(average_top_layers(layers2, s.global_top_k), "global", where)))
                target_cls = srl_cls_target(y_cls[:b], part_cls, s.srl_aggregation)
        out["srl"] = patch_loss(pred[b * c :], rep(target), mask_b)
        total = total + s.srl_weight * out["srl"]
        if s.srl_global:
            out["global_srl"] = cls_loss(cls[b * c :], rep(target_cls), s.base.cls_reduction)
            total = total + s.srl_weight * s.base.cls_weight * out["global_srl"]
    out["local"] = local
    out["loss"] = total
    return out
