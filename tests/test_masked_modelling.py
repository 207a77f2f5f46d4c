"""The raw-patch objectives' pieces (SSAST's cluster masking and InfoNCE, the overview's unstructured
masking and MSE, raw patch targets) on hand-made cases and against direct computations."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import section

from sslam.pretrain.masking import visible_indices
from sslam.pretrain.raw_patch import cluster_mask, info_nce, patch_mse, random_mask, raw_patches


@pytest.mark.parametrize(("grid", "count"), [((19, 8), 120), ((64, 8), 400), ((3, 2), 6), ((5, 5), 1)])
def test_cluster_mask_hits_the_count_exactly(grid, count):
    g = torch.Generator().manual_seed(count)
    m = cluster_mask(6, grid, count, generator=g)
    assert m.shape == (6, grid[0] * grid[1]) and m.dtype == torch.bool
    assert (m.sum(1) == count).all()
    if count < grid[0] * grid[1]:
        assert not torch.equal(m[0], m[1])  # each mask its own draw


def test_cluster_mask_is_made_of_clusters_on_the_grid():
    """When the first cluster alone reaches the count, the mask is that cluster's first cells in drawing
    order, clipped at the grid's edges (never wrapped to the next time row, as a flat index would)."""
    checked = clipped = 0
    for seed in range(200):
        m = cluster_mask(1, (6, 4), 4, cluster_sizes=(3,), generator=torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(seed)  # the same draws: the cluster size, then the start patch
        torch.randint(1, (1,), generator=g)
        t0, f0 = divmod(int(torch.randint(24, (1,), generator=g)), 4)
        expect = [t * 4 + f for t in range(t0, min(t0 + 3, 6)) for f in range(f0, min(f0 + 3, 4))][:4]
        if len(expect) == 4:
            assert sorted(m[0].nonzero().flatten().tolist()) == sorted(expect), seed
            checked += 1
            clipped += f0 == 2  # a 3-wide cluster from f = 2 keeps f = 2, 3 only
    assert checked > 50 and clipped > 5


def test_cluster_mask_rejects_impossible_counts():
    with pytest.raises(ValueError, match="mask count must be in 1..6"):
        cluster_mask(1, (3, 2), 7)


def test_random_mask_exact_count_and_uniform():
    m = random_mask(4000, 10, 0.5, generator=torch.Generator().manual_seed(0))
    assert (m.sum(1) == 5).all()
    freq = m.float().mean(0)
    assert (freq - 0.5).abs().max() < 0.04  # every position masked about half the time


def test_info_nce_against_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    loss, acc = info_nce(pred, target)
    total, correct = 0.0, 0
    for b in range(2):
        for i in range(5):
            s = [float(target[b, i] @ pred[b, j]) for j in range(5)]
            total += -(s[i] - math.log(sum(math.exp(v) for v in s)))
        for j in range(5):
            col = [float(target[b, i] @ pred[b, j]) for i in range(5)]
            correct += int(max(range(5), key=col.__getitem__) == j)
    assert loss.item() == pytest.approx(total / 10, rel=1e-5)
    assert acc.item() == pytest.approx(correct / 10)


def test_info_nce_known_similarity_matrix():
    # orthonormal targets, predictions = 10 x targets: scores 10 on the diagonal, 0 elsewhere
    target = torch.eye(3)[None]
    loss, acc = info_nce(10 * target, target)
    assert loss.item() == pytest.approx(math.log1p(2 * math.exp(-10)), rel=1e-3)  # float32 near 0
    assert acc.item() == 1.0
    # predictions rolled by one: every prediction matches another patch's target
    loss, acc = info_nce(10 * target.roll(1, dims=1), target)
    assert acc.item() == 0.0 and loss.item() == pytest.approx(math.log(math.exp(10) + 2), rel=1e-6)


def test_patch_mse_by_hand():
    assert patch_mse(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 2.0]])).item() == 2.25


def test_raw_patches_follow_the_patch_conv_token_order():
    x = torch.randn(2, 12, 8)
    for patch in ((4, 4), (2, 4), (4, 2)):
        got = raw_patches(x, patch)
        conv = torch.nn.Conv2d(1, patch[0] * patch[1], patch, stride=patch, bias=False)
        with torch.no_grad():  # one output channel per pixel of the patch, time-major: a patch extractor
            conv.weight.copy_(torch.eye(patch[0] * patch[1]).view(-1, 1, *patch))
        ref = conv(x[:, None]).flatten(2).transpose(1, 2)
        torch.testing.assert_close(got, ref)
    # by hand: the first patch of a (4, 4) grid is x[:, :4, :4] flattened time-major
    torch.testing.assert_close(raw_patches(x, (4, 4))[:, 0], x[:, :4, :4].reshape(2, 16))
    torch.testing.assert_close(raw_patches(x, (4, 4))[:, 1], x[:, :4, 4:8].reshape(2, 16))


# ----------------------------------------------------------------------------- the objectives on every encoder

from sslam.models.heads import RawPatchHead  # noqa: E402
from sslam.models.registry import build_encoder  # noqa: E402
from sslam.pretrain.objectives.msm import msm_losses  # noqa: E402
from sslam.pretrain.objectives.ssast import ssast_losses  # noqa: E402

FRAMES, MEL = 96, 32  # grid 6 x 2 with 16 x 16 patches


def _encoder(name: str, masked: str = "mask_token"):
    torch.manual_seed(0)
    cfg = section(
        "model",
        encoder=name,
        masked_tokens=masked,
        embed_dim=32,
        depth=2,
        num_heads=2,
        xlstm={"num_heads": 2, "expand": 2, "conv_kernel": 4, "cls_position": "none"},
    )
    return build_encoder(cfg, FRAMES, MEL)


@pytest.mark.parametrize("name", ["transformer", "mamba", "xlstm"])
@pytest.mark.parametrize("two_passes", [True, False])
def test_ssast_losses_compose_and_train_every_encoder(name, two_passes):
    enc = _encoder(name)
    heads = torch.nn.ModuleDict({k: RawPatchHead(32, 256) for k in ("discriminative", "generative")})
    x = torch.randn(3, FRAMES, MEL)
    cfg = section("pretrain.ssast", mask_count=8, mse_weight=10.0, two_passes=two_passes)
    out = ssast_losses(enc, heads, x, cfg, seed=0)
    assert out["loss"].item() == pytest.approx(out["nce"].item() + 10.0 * out["mse"].item(), rel=1e-6)
    # InfoNCE over 8 masked patches starts near log(8); the accuracy is a share
    assert 0.5 * math.log(8) < out["nce"].item() < 3 * math.log(8)
    assert 0.0 <= out["accuracy"].item() <= 1.0
    out["loss"].backward()
    assert enc.mask_token.grad is not None and enc.mask_token.grad.abs().sum() > 0
    assert all(p.grad is not None for p in heads.parameters())
    # same seed, same masks and losses
    again = ssast_losses(enc, heads, x, cfg, seed=0)
    assert again["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-6)


def test_ssast_generative_loss_by_hand_and_visible_patches_do_not_count():
    """With a zero head the MSE is the mean square of the masked raw patches; changing a patch that is never
    masked (count = 1 of 12 and a fixed seed) leaves the targets of the masked patch unchanged."""
    enc = _encoder("transformer")
    zero = RawPatchHead(32, 256)
    for p in zero.parameters():
        torch.nn.init.zeros_(p)
    heads = torch.nn.ModuleDict({"discriminative": RawPatchHead(32, 256), "generative": zero})
    x = torch.randn(2, FRAMES, MEL)
    cfg = section("pretrain.ssast", mask_count=1, cluster_sizes=[1], two_passes=False)
    g = torch.Generator().manual_seed(5)
    masked = cluster_mask(2, enc.grid, 1, (1,), g)
    out = ssast_losses(enc, heads, x, cfg, seed=5)
    patches = raw_patches(x, (16, 16))[masked]
    assert out["mse"].item() == pytest.approx(patches.pow(2).mean().item(), rel=1e-6)


@pytest.mark.parametrize("name", ["transformer", "mamba", "xlstm"])
@pytest.mark.parametrize("loss_on", ["masked", "all"])
def test_msm_loss_by_hand_on_every_encoder(name, loss_on):
    enc = _encoder(name)
    head = RawPatchHead(32, 256, "gelu")
    x = torch.randn(2, FRAMES, MEL)
    out = msm_losses(enc, head, x, section("pretrain.msm", mask_ratio=0.5, loss_on=loss_on), seed=3)
    # recompute: the same mask from the same seed, the encoder's prediction, MSE on the chosen patches
    masked = random_mask(2, 12, 0.5, torch.Generator().manual_seed(3))
    h, _ = enc(x, keep=visible_indices(masked))
    pred, target = head(h[:, 1:]), raw_patches(x, (16, 16))
    chosen = masked if loss_on == "masked" else torch.ones_like(masked)
    ref = (pred[chosen] - target[chosen]).pow(2).mean()
    assert out["loss"].item() == pytest.approx(ref.item(), rel=1e-6)
    out["loss"].backward()
    assert enc.mask_token.grad.abs().sum() > 0


def test_raw_patch_objectives_need_mask_tokens():
    enc = _encoder("transformer", masked="drop")
    with pytest.raises(ValueError, match="needs model.masked_tokens mask_token"):
        msm_losses(enc, RawPatchHead(32, 256), torch.randn(1, FRAMES, MEL), section("pretrain.msm"), seed=0)
