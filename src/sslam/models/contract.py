"""The encoder contract: what the objectives, the EMA teacher, layer-wise lr decay, drop path and the
downstream evaluation need from an encoder, defined once. The Transformer (``models/vit.py``), the Mamba
(``models/mamba.py``) and the xLSTM (``models/xlstm.py``) encoders implement it; nothing outside
``models/`` looks into an encoder's blocks.

Every encoder turns a normalised log-mel (B, frames, mel) into patch tokens the same way (Conv2d patch x
patch, time-major order ``t * F' + f``, fixed 2-D sin-cos positions) and promises:

- ``grid`` (T', F'), ``num_patches``, ``patch_size`` (time, frequency), ``dim``;
- ``forward(x, keep=None, clones=1, return_layers=False) -> (h, layers)``: each clip repeated ``clones``
  times; ``keep`` (B * clones, K) the sorted indices of the visible patches (None: all). ``h`` is
  (B * clones, 1 + M, D): the summary token first (a CLS token, wherever the encoder keeps it, or the
  mean of the final tokens for an encoder without one), then the final states of the tokens at
  :meth:`output_positions` (M of them). ``layers`` holds, per block, the block's *layer target* at the
  ``keep`` positions only (B * clones, K, D): what the EMA teacher's top-k average is built from;
- how masked patches enter, ``masked_tokens``: ``drop`` (only visible tokens enter the blocks: the
  Transformer's clone batch, M = K) or ``mask_token`` (a learned mask embedding replaces each masked
  patch embedding, positions still added, so a recurrent encoder reads the whole sequence in order:
  SSAST / SSAMBA / the overview; M = N, the decoder gets every position);
- ``layer_groups()``: the parameters outside the blocks first, then each block's (lr decay);
- ``set_drop_path(rate)``: stochastic depth rising linearly over the blocks to ``rate``;
- ``from_config(cfg, options, frames, mel, masked_tokens)``: how ``model`` (and the encoder's own section
  ``model.<name>``, ``options``) sizes it, and ``check_config`` for the checks across those keys. An encoder
  joins ``model.encoder``'s choices by registering (``sslam.models.registry.register_encoder``).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from sslam.config.base import Section

MASKED_TOKENS = ("drop", "mask_token")


class ModelSettings(Protocol):
    """What an encoder reads of params.yaml's ``model`` section (``sslam.config.model.ModelConfig``): named
    here so the encoders need only the config's base module, never the section built from their registry."""

    encoder: str
    masked_tokens: str
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    patch_init: str

    @property
    def patch(self) -> tuple[int, int]: ...


def as_patch(patch: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """A patch size (``model.patch_size``) as (time frames, mel bins): n means n x n."""
    return (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(len(positions), dim): sin on the first half of the channels, cos on the second (MAE style)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = positions.double()[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).float()


def sincos_2d(dim: int, grid_t: int, grid_f: int) -> torch.Tensor:
    """(grid_t * grid_f, dim), time-major; first half of channels: frequency index, second: time index."""
    if dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for 2-D sin-cos positions, got {dim}")
    t = torch.arange(grid_t).repeat_interleave(grid_f)
    f = torch.arange(grid_f).repeat(grid_t)
    return torch.cat([sincos_1d(dim // 2, f), sincos_1d(dim // 2, t)], dim=1)


class PatchEmbed(nn.Module):
    """Conv2d with kernel = stride = the patch, (time, frequency): non-square patches (the overview's 4 x 16)."""

    def __init__(self, dim: int, patch: int | tuple[int, int] = 16):
        super().__init__()
        self.patch = as_patch(patch)
        self.proj = nn.Conv2d(1, dim, kernel_size=self.patch, stride=self.patch)

    def grid(self, frames: int, mel: int) -> tuple[int, int]:
        return frames // self.patch[0], mel // self.patch[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, frames, mel) -> (B, N, D), time-major."""
        return self.proj(x[:, None]).flatten(2).transpose(1, 2)


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop a residual branch for whole samples, rescale the kept ones."""
    if rate <= 0.0 or not training:
        return x
    keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= rate
    return x * keep.to(x.dtype) / (1.0 - rate)


def masked_from_keep(keep: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(B, N) bool, True at the patches NOT in ``keep``."""
    masked = torch.ones(keep.shape[0], num_patches, dtype=torch.bool, device=keep.device)
    return masked.scatter(1, keep, False)


def gather_tokens(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, N, D) -> (B, K, D) at the indices (B, K)."""
    return torch.gather(t, 1, idx[:, :, None].expand(-1, -1, t.shape[2]))


class PatchEncoder(nn.Module):
    """The shared front end and the promises above; subclasses set ``blocks`` and write ``forward``.

    ``blocks`` must be a ModuleList whose members carry a ``drop_path`` rate attribute."""

    blocks: nn.ModuleList

    def __init__(self, dim: int, patch: int | tuple[int, int], frames: int, mel: int, masked_tokens: str):
        super().__init__()
        patch = as_patch(patch)
        if masked_tokens not in MASKED_TOKENS:
            raise ValueError(f"model.masked_tokens must resolve to one of {MASKED_TOKENS}, got {masked_tokens!r}")
        self.dim, self.patch_size, self.masked_tokens = dim, patch, masked_tokens
        self.patch_embed = PatchEmbed(dim, patch)
        gt, gf = self.patch_embed.grid(frames, mel)
        if gt < 1 or gf < 1:
            raise ValueError(
                f"input of {frames} frames x {mel} mel bins is smaller than one {patch[0]}x{patch[1]} patch"
            )
        self.grid = (gt, gf)
        self.register_buffer("pos", sincos_2d(dim, gt, gf), persistent=False)
        # created (zeros) only where used, so a `drop` encoder's state dict and init draws are unchanged
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim)) if masked_tokens == "mask_token" else None

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        tok = self.patch_embed(x)
        if tok.shape[1] != self.num_patches:
            raise ValueError(
                f"input gives {tok.shape[1]} patches, the encoder was built for {self.num_patches} "
                f"(frames x mel {x.shape[1]}x{x.shape[2]} vs grid {self.grid})"
            )
        return tok

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, frames, mel) -> (B, N, D) patch tokens with positions."""
        return self._patches(x) + self.pos.to(x.dtype)

    def input_tokens(self, x: torch.Tensor, keep: torch.Tensor | None, clones: int) -> torch.Tensor:
        """The token sequence the blocks read: (B * clones, K, D) visible tokens (``drop``) or (B * clones,
        N, D) with the mask embedding in the masked slots (``mask_token``); positions added either way."""
        if keep is None or self.masked_tokens == "drop":
            tok = self.tokens(x)
            if clones > 1:
                tok = tok.repeat_interleave(clones, dim=0)
            return tok if keep is None else gather_tokens(tok, keep)
        tok = self._patches(x)
        if clones > 1:
            tok = tok.repeat_interleave(clones, dim=0)
        masked = masked_from_keep(keep, self.num_patches)[:, :, None]
        return torch.where(masked, self.mask_token.to(tok.dtype), tok) + self.pos.to(tok.dtype)

    def output_positions(self, keep: torch.Tensor | None) -> torch.Tensor | None:
        """The patch index of each token after the summary in ``h``: ``keep`` (drop), None = all N in order."""
        return keep if self.masked_tokens == "drop" else None

    def layer_targets_at(self, t: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """A block's layer target over the sequence the blocks read, reduced to the ``keep`` positions."""
        if keep is None or self.masked_tokens == "drop":
            return t
        return gather_tokens(t, keep)

    def init_front_end(self, patch_init: str) -> None:
        """The shared front end's init, run last by every encoder: the patch conv as ``model.patch_init``
        (``xavier``: EAT's xavier-uniform of the weight as a (D, patch * patch) matrix; ``pytorch``: Conv2d's
        default, kept), then the mask embedding (if any) N(0, 0.02)."""
        if patch_init == "xavier":
            w = self.patch_embed.proj.weight
            nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))
        elif patch_init != "pytorch":
            raise ValueError(f"model.patch_init must be 'xavier' or 'pytorch', got {patch_init!r}")
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """[parameters outside the blocks, block 0's, ..., block L-1's]: the groups of layer-wise lr decay."""
        in_blocks = {id(p) for p in self.blocks.parameters()}
        return [[p for p in self.parameters() if id(p) not in in_blocks]] + [list(b.parameters()) for b in self.blocks]

    def set_drop_path(self, rate: float) -> None:
        """Linearly increasing stochastic depth over the blocks, up to ``rate`` (fine-tuning)."""
        n = len(self.blocks)
        for i, blk in enumerate(self.blocks):
            blk.drop_path = rate * i / max(1, n - 1)

    @classmethod
    def from_config(
        cls, cfg: ModelSettings, options: Section | None, frames: int, mel: int, masked_tokens: str
    ) -> PatchEncoder:
        """The encoder ``model`` sizes; ``options``: its own section ``model.<name>`` (None if it has none);
        ``masked_tokens`` already resolved (never ``auto``)."""
        raise NotImplementedError(f"{cls.__name__} does not say how params.yaml's model section builds it")

    @classmethod
    def check_config(cls, cfg: ModelSettings, options: Section | None) -> None:
        """Raise ValueError where ``model``'s keys do not fit together for this encoder (run when params are
        validated, so a bad combination stops a stage at start-up)."""

    def forward(
        self, x: torch.Tensor, keep: torch.Tensor | None = None, clones: int = 1, return_layers: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        raise NotImplementedError


CLS_POSITIONS = ("start", "middle", "none")


class SequenceEncoder(PatchEncoder):
    """A stack of residual sequence blocks (Mamba, mLSTM) with the CLS token where ``cls_position`` puts it
    (start, middle as SSAMBA, or none: the summary is the mean of the tokens) and a final norm.

    Subclasses set ``blocks`` (each block: ``h -> (h, layer target)``) and ``final_norm``."""

    final_norm: nn.Module

    def __init__(
        self, dim: int, patch: int | tuple[int, int], frames: int, mel: int, masked_tokens: str, cls_position: str
    ):
        super().__init__(dim, patch, frames, mel, masked_tokens)
        if cls_position not in CLS_POSITIONS:
            raise ValueError(f"cls_position must be one of {CLS_POSITIONS}, got {cls_position!r}")
        self.cls_position = cls_position
        self.cls_token = None if cls_position == "none" else nn.Parameter(torch.zeros(1, 1, dim))

    def init_front_end(self, patch_init: str) -> None:
        super().init_front_end(patch_init)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    def forward(
        self, x: torch.Tensor, keep: torch.Tensor | None = None, clones: int = 1, return_layers: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """([summary; final states of the tokens at :meth:`output_positions`], per block the layer target at
        the ``keep`` patches), as the contract says."""
        tok = self.input_tokens(x, keep, clones)
        length = tok.shape[1]
        h = with_summary(tok, self.cls_token, self.cls_position)
        layers = []
        for blk in self.blocks:
            h, t = blk(h)
            if return_layers:
                layers.append(self.layer_targets_at(split_summary(t, self.cls_position, length)[1], keep))
        summary, tokens = split_summary(self.final_norm(h), self.cls_position, length)
        return torch.cat([summary[:, None], tokens], dim=1), layers


def with_summary(tok: torch.Tensor, cls: torch.Tensor | None, position: str) -> torch.Tensor:
    """Insert the CLS token (1, 1, D) into the sequence at ``start`` or ``middle`` (SSAMBA); ``none``: as is."""
    if position == "none" or cls is None:
        return tok
    c = cls.expand(tok.shape[0], -1, -1).to(tok.dtype)
    at = 0 if position == "start" else tok.shape[1] // 2
    return torch.cat([tok[:, :at], c, tok[:, at:]], dim=1)


def split_summary(h: torch.Tensor, position: str, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(summary (B, D), tokens (B, length, D)) from a sequence built by :func:`with_summary`; without a CLS
    token the summary is the mean of the tokens."""
    if position == "none":
        return h.mean(dim=1), h
    at = 0 if position == "start" else length // 2
    return h[:, at], torch.cat([h[:, :at], h[:, at + 1 :]], dim=1)
