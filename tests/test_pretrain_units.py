"""Stage-1 pieces against hand computations: masks, EMA, targets, losses, schedule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslam.config.pretrain import MaskConfig
from sslam.models.contract import sincos_2d
from sslam.models.decoder import CnnDecoder
from sslam.models.vit import ViTEncoder
from sslam.pretrain.ema import ema_decay, ema_update
from sslam.pretrain.loop import param_groups, step_seed
from sslam.pretrain.losses import cls_loss, patch_loss, token_loss
from sslam.pretrain.masking import inverse_block_mask, visible_indices
from sslam.pretrain.targets import cls_target, layer_averaged_targets


def test_mask_ratio_equal_counts_and_clones_differ():
    g = torch.Generator().manual_seed(0)
    m = inverse_block_mask(32, (64, 8), 0.8, block=5, generator=g)
    assert m.shape == (32, 512)
    assert ((~m).sum(1) == 102).all()  # int(512 * 0.2), the reference's ViT-B count
    assert len({tuple(r.tolist()) for r in m}) == 32  # every clone has its own mask
    small = inverse_block_mask(16, (19, 8), 0.8, generator=torch.Generator().manual_seed(1))
    assert ((~small).sum(1) == int(152 * 0.2)).all()
    again = inverse_block_mask(32, (64, 8), 0.8, block=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(m, again)


def test_visible_patches_come_in_blocks():
    """Inverse block masking keeps square blocks: far more visible cells have visible neighbours than
    a uniform random mask with the same count would give."""

    def neighbour_share(mask):
        v = (~mask).view(-1, 64, 8).float()
        pad = F.pad(v, (1, 1, 1, 1))
        nb = pad[:, :-2, 1:-1] + pad[:, 2:, 1:-1] + pad[:, 1:-1, :-2] + pad[:, 1:-1, 2:]
        return ((nb >= 3) & (v > 0)).sum() / v.sum()

    block = inverse_block_mask(64, (64, 8), 0.8, generator=torch.Generator().manual_seed(2))
    scores = torch.rand(64, 512, generator=torch.Generator().manual_seed(3))
    rand = torch.ones(64, 512, dtype=torch.bool)
    rand.scatter_(1, scores.argsort(1)[:, :102], False)
    assert neighbour_share(block) > 0.5 > 3 * neighbour_share(rand)


def test_visible_indices_sorted_and_gather_drops_masked_tokens():
    mask = torch.tensor([[True, False, True, False], [False, True, True, False]])
    idx = visible_indices(mask)
    assert idx.tolist() == [[1, 3], [0, 3]]


def test_ema_by_hand():
    student, teacher = nn.Linear(2, 1), nn.Linear(2, 1)
    student.weight.data = torch.tensor([[1.0, 2.0]])
    student.bias.data = torch.tensor([4.0])
    teacher.weight.data = torch.tensor([[3.0, -2.0]])
    teacher.bias.data = torch.tensor([0.0])
    ema_update(teacher, student, 0.75)
    assert teacher.weight.tolist() == [[0.75 * 3 + 0.25 * 1, 0.75 * -2 + 0.25 * 2]]
    assert teacher.bias.tolist() == [1.0]
    bn_s, bn_t = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    bn_s.running_mean.fill_(5.0)
    ema_update(bn_t, bn_s, 0.9)
    assert bn_t.running_mean.tolist() == [5.0, 5.0]  # buffers copied, not averaged
    assert ema_decay(0, 0.9998, 0.99999, 100) == 0.9998
    assert ema_decay(50, 0.9998, 0.99999, 100) == pytest.approx((0.9998 + 0.99999) / 2)
    assert ema_decay(500, 0.9998, 0.99999, 100) == 0.99999


def test_layer_averaged_targets_against_direct_computation():
    torch.manual_seed(0)
    layers = [torch.randn(2, 5, 6) * (k + 1) + k for k in range(3)]
    got = layer_averaged_targets(layers, top_k=2)
    inst = []
    for t in layers[1:]:
        mu = t.mean(dim=1, keepdim=True)
        var = t.var(dim=1, unbiased=False, keepdim=True)
        inst.append((t - mu) / torch.sqrt(var + 1e-5))
    y = (inst[0] + inst[1]) / 2
    y = (y - y.mean(-1, keepdim=True)) / torch.sqrt(y.var(-1, unbiased=False, keepdim=True) + 1e-5)
    assert torch.allclose(got, y, atol=1e-5)
    assert torch.allclose(cls_target(got), got.mean(1))
    with pytest.raises(ValueError, match="top_k_layers"):
        layer_averaged_targets(layers, 4)


def test_losses_by_hand():
    pred = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]])
    tgt = torch.tensor([[[1.0, 0.0, 3.0, 2.0], [1.0, 1.0, 1.0, 1.0]]])
    # token 0: (0 + 4 + 0 + 4) / sqrt(4) = 4; token 1: 4 / 2 = 2
    assert token_loss(pred, tgt).tolist() == [[4.0, 2.0]]
    assert patch_loss(pred, tgt, torch.tensor([[True, False]])).item() == 4.0
    assert patch_loss(pred, tgt, torch.tensor([[True, True]])).item() == 3.0
    assert cls_loss(pred[0], tgt[0], "sum").item() == 6.0 and cls_loss(pred[0], tgt[0], "mean").item() == 3.0


def test_step_seeds_are_distinct_and_param_groups():
    seeds = {step_seed(s, t, j, r) for s in range(3) for t in range(50) for j in range(4) for r in range(8)}
    assert len(seeds) == 3 * 50 * 4 * 8  # no two micro-batches on any rank share masks or noise
    enc = ViTEncoder(32, 1, 2, frames=32, mel=32)
    assert len(param_groups(enc, 0.05, True)) == 1
    decay, no_decay = param_groups(enc, 0.05, False)
    assert all(p.ndim == 2 or p.ndim == 4 for p in decay["params"]) and no_decay["weight_decay"] == 0.0


def test_encoder_shapes_positions_and_targets():
    enc = ViTEncoder(32, 2, 2, frames=64, mel=32)
    assert enc.grid == (4, 2) and enc.num_patches == 8
    pos = sincos_2d(32, 4, 2)
    assert torch.allclose(pos[3, :16], pos[1, :16])  # same frequency index 1 -> same first half
    assert torch.allclose(pos[2, 16:], pos[3, 16:])  # same time index 1 -> same second half
    x = torch.randn(3, 64, 32)
    keep = torch.tensor([[0, 5]] * 6)
    h, layers = enc(x, keep=keep, clones=2, return_layers=True)
    assert h.shape == (6, 3, 32) and len(layers) == 2 and layers[0].shape == (6, 2, 32)
    full, _ = enc(x)
    assert full.shape == (3, 9, 32)
    # the student's visible tokens see only each other: masked patches change nothing
    x2 = x.clone()
    x2[:, 16:32] += 5.0  # time patch 1 -> patches 2, 3 (masked)
    h2, _ = enc(x2, keep=keep, clones=2)
    assert torch.allclose(h, h2, atol=1e-5)


def test_decoder_puts_tokens_back_in_place():
    dec = CnnDecoder(16, (2, 4), layers=0, groups=4, fill="learned")
    dec.proj = nn.Identity()
    vis = torch.arange(32.0).view(1, 2, 16)
    out = dec(vis, torch.tensor([[1, 6]]))
    assert torch.equal(out[0, 1], vis[0, 0]) and torch.equal(out[0, 6], vis[0, 1]) and out[0, 0].abs().sum() == 0
    noisy = CnnDecoder(16, (2, 4), layers=2, groups=4)(vis, torch.tensor([[1, 6]]), torch.Generator().manual_seed(0))
    assert noisy.shape == (1, 8, 16)


def test_center_by_position_by_hand():
    from sslam.pretrain.targets import center_by_position

    y = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 10.0]]])  # (B=2, N=2, D=2)
    want = torch.tensor([[[-2.0, -2.0], [-2.0, -3.0]], [[2.0, 2.0], [2.0, 3.0]]])
    assert torch.equal(center_by_position(y), want)
    # tokens at given grid positions: clip 0 holds positions (0, 2), clip 1 holds (2, 1)
    pos = torch.tensor([[0, 2], [2, 1]])
    sub = torch.tensor([[[1.0, 1.0], [2.0, 4.0]], [[4.0, 8.0], [9.0, 9.0]]])
    # position 0: only clip 0 -> mean itself; position 2: (2,4) and (4,8) -> (3,6); position 1: itself
    want = torch.tensor([[[0.0, 0.0], [-1.0, -2.0]], [[1.0, 2.0], [0.0, 0.0]]])
    assert torch.equal(center_by_position(sub, pos, 3), want)
    # all positions given in order: the same as the plain batch mean
    full = torch.arange(2).expand(2, 2)
    assert torch.allclose(center_by_position(y, full), center_by_position(y))
    # centred targets: the layer norm still holds (zero mean, unit variance per token)
    layers = [torch.randn(3, 5, 8) for _ in range(2)]
    t = layer_averaged_targets(layers, 2, center=True)
    assert torch.allclose(t.mean(-1), torch.zeros(3, 5), atol=1e-5)
    raw = sum(F.instance_norm(y.transpose(1, 2)).transpose(1, 2) for y in layers) / 2
    assert torch.allclose(t, F.layer_norm(raw - raw.mean(0, keepdim=True), (8,)), atol=1e-5)


HALF_MASKED = MaskConfig(ratio=0.5, block_size=1, prob_adjust=0.0, clone_batch=1)


def test_target_diagnostics_see_a_purely_positional_target():
    """A teacher whose targets depend only on position: position alone explains all of them."""
    from sslam.pretrain.diagnostics import target_diagnostics

    class PositionalTeacher(nn.Module):
        grid = (4, 2)

        def forward(self, x, return_layers=False):
            pattern = torch.linspace(-1, 1, 8 * 6).reshape(1, 8, 6).sin() * torch.arange(1, 7.0)
            return None, [pattern.expand(x.shape[0], -1, -1).clone()]

    class ZeroStudent(nn.Module):
        def forward(self, x, keep, clones, noise=None):
            return None, torch.zeros(x.shape[0], 8, 6)

    d = target_diagnostics(ZeroStudent(), PositionalTeacher(), torch.randn(6, 64, 32), 1, HALF_MASKED)
    assert d["position_only_loss"] == pytest.approx(0.0, abs=1e-6) and d["position_share"] == pytest.approx(1.0)
    assert d["student_loss"] == pytest.approx(d["zero_loss"]) and d["zero_loss"] > 0
    # centring removes the positional pattern from the trained targets entirely (layer norm of zeros),
    # while the position share is still judged on the reference targets
    from sslam.pretrain.targets import PositionCentring

    c = target_diagnostics(
        ZeroStudent(), PositionalTeacher(), torch.randn(6, 64, 32), 1, HALF_MASKED, centring=PositionCentring("batch")
    )
    assert c["trained_zero_loss"] == pytest.approx(0.0, abs=1e-5) and c["position_share"] == pytest.approx(1.0)
    assert c["zero_loss"] == pytest.approx(d["zero_loss"])
