"""Inverse block masking (data2vec 2.0 / EAT), as the reference computes it.

On the (T', F') patch grid, per mask: draw ``int(N * (keep + adjust) / block**2)`` random centres, stamp
``block x block`` VISIBLE blocks around them with indices clamped at the grid edges, then force the
visible count to exactly ``int(N * keep)`` by dropping random visible cells or adding random single
cells, so every mask keeps the same number of patches and a batch packs into one tensor.
(ViT-B on 1024 frames: N = 512, keep 0.2, adjust 0.07 -> 5 centres, 102 visible, 410 masked.)
"""

from __future__ import annotations

import torch


def inverse_block_mask(
    num_masks: int,
    grid: tuple[int, int],
    mask_ratio: float,
    block: int = 5,
    adjust: float = 0.07,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(num_masks, T' * F') bool, True = masked. Time-major like the tokens."""
    gt, gf = grid
    n = gt * gf
    keep_ratio = 1.0 - mask_ratio
    target = int(n * keep_ratio)
    centres = max(1, int(n * (keep_ratio + adjust) / block**2))
    visible = torch.zeros(num_masks, gt, gf, dtype=torch.bool)
    ct = torch.randint(0, gt, (num_masks, centres), generator=generator)
    cf = torch.randint(0, gf, (num_masks, centres), generator=generator)
    off = torch.arange(block) - block // 2
    rows = torch.arange(num_masks)[:, None, None, None].expand(-1, centres, block, block)
    tt = (ct[:, :, None, None] + off[None, None, :, None]).clamp(0, gt - 1).expand(-1, -1, -1, block)
    ff = (cf[:, :, None, None] + off[None, None, None, :]).clamp(0, gf - 1).expand(-1, -1, block, -1)
    visible[rows, tt, ff] = True
    visible = visible.view(num_masks, n)
    # exact visible count: random order of the cells, visible first when trimming, masked first when adding
    scores = torch.rand(num_masks, n, generator=generator)
    count = visible.sum(1, keepdim=True)
    # rank cells: visible ones by score (lowest dropped first when too many), then masked ones
    order = torch.argsort(scores + (~visible).float() * 2.0, dim=1)  # visible cells first
    too_many = count > target
    keep_vis = torch.zeros_like(visible)
    keep_vis.scatter_(1, order[:, :target], True)
    trimmed = torch.where(too_many, keep_vis & visible, visible)
    # too few: add masked cells with the lowest scores
    order_masked = torch.argsort(scores + trimmed.float() * 2.0, dim=1)  # masked cells first
    need = (target - trimmed.sum(1)).clamp(min=0)
    add = torch.zeros_like(visible)
    ranks = torch.arange(n)[None, :].expand(num_masks, -1)
    add.scatter_(1, order_masked, ranks < need[:, None])
    final_visible = trimmed | add
    return ~final_visible


def visible_indices(mask: torch.Tensor) -> torch.Tensor:
    """(B, K) sorted indices of the visible patches. Every row must keep the same number K of patches
    (the masks of a batch pack into one tensor); unequal counts would silently misalign tokens."""
    counts = (~mask).sum(dim=1)
    if mask.shape[0] and not bool((counts == counts[0]).all()):
        raise ValueError(
            f"visible_indices: every mask row must keep the same number of patches, got counts "
            f"{sorted(set(counts.tolist()))} over {mask.shape[0]} rows"
        )
    k = int(counts[0]) if mask.shape[0] else 0
    idx = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :k]
    return idx.sort(dim=1).values
