"""The xLSTM (mLSTM) encoder: the parallel cell against its recurrence, a hand-computed case, the blocks'
direction (causality), the encoder contract, and a timing print."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import section

from sslam.models import xlstm
from sslam.models.registry import build_encoder
from sslam.models.xlstm import XlstmEncoder, mlstm_chunkwise, mlstm_parallel, mlstm_recurrent

FRAMES, MEL, PATCH = 32, 16, 4  # grid (8, 4): 32 patches


def _cell_inputs(b: int, heads: int, length: int, d: int, gate_scale: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    kw = dict(generator=g, dtype=torch.float64)
    q, k, v = (torch.randn(b, heads, length, d, **kw) for _ in range(3))
    i_pre = gate_scale * torch.randn(b, heads, length, **kw)
    f_pre = gate_scale * torch.randn(b, heads, length, **kw) + 2.0
    return [t.requires_grad_() for t in (q, k, v, i_pre, f_pre)]


@pytest.mark.parametrize("length", [1, 5, 64])
@pytest.mark.parametrize("gate_scale", [1.0, 30.0])
def test_parallel_matches_recurrent_values_and_gradients(length: int, gate_scale: float) -> None:
    # gate_scale 30: pre-activations of +-100 and more, exp(i~) overflows without the stabiliser
    inputs = _cell_inputs(2, 3, length, 4, gate_scale)
    hp = mlstm_parallel(*inputs)
    hr = mlstm_recurrent(*inputs)
    assert hp.shape == (2, 3, length, 4)
    assert torch.isfinite(hp).all()
    torch.testing.assert_close(hp, hr, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(hp)
    gp = torch.autograd.grad((hp * w).sum(), inputs)
    gr = torch.autograd.grad((hr * w).sum(), inputs)
    for a, b in zip(gp, gr):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("length", "chunk"), [(1, 4), (4, 4), (13, 4), (64, 16), (70, 32)])
@pytest.mark.parametrize("gate_scale", [1.0, 30.0])
def test_chunkwise_matches_recurrent_values_and_gradients(length: int, chunk: int, gate_scale: float) -> None:
    # several chunks, a partial last one, one chunk only; extreme gates move the row max between the
    # carried state and the chunk's own steps
    inputs = _cell_inputs(2, 3, length, 4, gate_scale, seed=length)
    hc = mlstm_chunkwise(*inputs, chunk=chunk)
    hr = mlstm_recurrent(*inputs)
    torch.testing.assert_close(hc, hr, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(hc)
    for a, b in zip(torch.autograd.grad((hc * w).sum(), inputs), torch.autograd.grad((hr * w).sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_encoder_switches_to_chunkwise_beyond_the_chunk(monkeypatch) -> None:
    enc = _encoder(depth=1).double()
    x = torch.randn(2, FRAMES, MEL, dtype=torch.float64)
    whole, _ = enc(x)  # 32 patches: the parallel form
    monkeypatch.setattr(xlstm, "MLSTM_CHUNK", 5)  # 32 > 5: chunks of 5
    chunked, _ = enc(x)
    torch.testing.assert_close(chunked, whole, rtol=1e-10, atol=1e-10)


def test_extreme_gates_stay_finite_in_float32() -> None:
    q, k, v, i_pre, f_pre = (t.detach().float() for t in _cell_inputs(1, 2, 32, 8, 1.0))
    i_pre = i_pre * 200.0  # exp(200) overflows float32
    f_pre = f_pre * 200.0
    hp, hr = mlstm_parallel(q, k, v, i_pre, f_pre), mlstm_recurrent(q, k, v, i_pre, f_pre)
    hc = mlstm_chunkwise(q, k, v, i_pre, f_pre, chunk=8)
    assert torch.isfinite(hp).all() and torch.isfinite(hc).all()
    torch.testing.assert_close(hp, hr, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(hc, hr, rtol=1e-4, atol=1e-4)


def test_hand_computed_case() -> None:
    # forget gate -> 1, input gate exp(0) = 1, d = 1 (so 1/sqrt(d) = 1): C_t = sum v_s k_s, n_t = sum k_s,
    # h_t = C_t q_t / max(|n_t q_t|, 1)
    q = torch.tensor([1.0, 1.0, 1.0, 0.2], dtype=torch.float64).view(1, 1, 4, 1)
    k = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=torch.float64).view(1, 1, 4, 1)
    v = torch.tensor([1.0, 1.0, 3.0, 2.0], dtype=torch.float64).view(1, 1, 4, 1)
    i_pre = torch.zeros(1, 1, 4, dtype=torch.float64)
    f_pre = torch.full((1, 1, 4), 60.0, dtype=torch.float64)  # log sigmoid(60) ~ -1e-26
    # C = 1, 3, 0, 1; n = 1, 3, 2, 2.5; n q = 1, 3, 2, 0.5 -> denominators 1, 3, 2, 1
    expected = torch.tensor([1.0, 1.0, 0.0, 0.2], dtype=torch.float64).view(1, 1, 4, 1)
    for fn in (mlstm_parallel, mlstm_recurrent, mlstm_chunkwise):
        torch.testing.assert_close(fn(q, k, v, i_pre, f_pre), expected, rtol=0, atol=1e-12)
    # forget gate -> 0 (pre-activation very negative): only the current step remains
    f0 = torch.full((1, 1, 4), -60.0, dtype=torch.float64)
    # h_t = v_t k_t q_t / max(|k_t q_t|, 1): 1 / 1, 2 / 2, -3 / 1, 0.2 / max(0.1, 1)
    only_now = torch.tensor([1.0, 1.0, -3.0, 0.2], dtype=torch.float64).view(1, 1, 4, 1)
    for fn in (mlstm_parallel, mlstm_recurrent, mlstm_chunkwise):
        torch.testing.assert_close(fn(q, k, v, i_pre, f0), only_now, rtol=0, atol=1e-12)


def _encoder(masked: str = "mask_token", cls_position: str = "none", depth: int = 2, **kw) -> XlstmEncoder:
    torch.manual_seed(0)
    return XlstmEncoder(
        32,
        depth,
        heads=4,
        expand=2,
        conv_kernel=3,
        cls_position=cls_position,
        patch=PATCH,
        frames=FRAMES,
        mel=MEL,
        masked_tokens=masked,
        **kw,
    )


def test_block_direction_is_causal_and_alternates() -> None:
    enc = _encoder(depth=2).eval()  # conv kernel 3
    x = torch.randn(2, 12, 32)
    cases = [(8, slice(0, 8), slice(9, 12)), (3, slice(4, 12), slice(0, 3))]
    with torch.no_grad():
        for i, (pos, same, changed) in enumerate(cases):
            blk = enc.blocks[i]
            y = x.clone()
            y[:, pos] += torch.randn(32)  # not a constant shift: the pre-LayerNorm would remove that
            tx, ty = blk(x)[1], blk(y)[1]  # the layer targets (the residual would hide a small block output)
            diff = (tx - ty).abs().amax(dim=(0, 2)) / tx.abs().max()
            # block 0 (forward): earlier outputs unchanged; block 1 (flipped): later outputs unchanged
            assert diff[same].max() < 1e-6
            # the other side sees the change, also beyond the conv's reach (through the mLSTM memory)
            assert diff[pos] > 1e-2 and diff[changed].min() > 1e-5


def _keep(b: int, k: int, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g)[:k].sort().values for _ in range(b)])


@pytest.mark.parametrize("masked", ["mask_token", "drop"])
@pytest.mark.parametrize("cls_position", ["start", "middle", "none"])
def test_encoder_contract_shapes(masked: str, cls_position: str) -> None:
    enc = _encoder(masked, cls_position, depth=3)
    n, b, clones, k = enc.num_patches, 2, 3, 10
    assert enc.grid == (FRAMES // PATCH, MEL // PATCH) and n == 32
    assert [blk.reverse for blk in enc.blocks] == [False, True, False]
    x = torch.randn(b, FRAMES, MEL)
    keep = _keep(b * clones, k, n)
    h, layers = enc(x, keep, clones=clones, return_layers=True)
    m = k if masked == "drop" else n
    assert h.shape == (b * clones, 1 + m, 32)
    assert len(layers) == 3 and all(t.shape == (b * clones, k, 32) for t in layers)
    pos = enc.output_positions(keep)
    assert (pos is keep) if masked == "drop" else pos is None
    h0, layers0 = enc(x)
    assert h0.shape == (b, 1 + n, 32) and layers0 == []
    if cls_position == "none":  # summary = mean of the final tokens
        torch.testing.assert_close(h0[:, 0], h0[:, 1:].mean(1))
    else:
        assert (h0[:, 0] - h0[:, 1:].mean(1)).abs().max() > 1e-3
    # every parameter is reached by the loss (the mask token only when something is masked)
    (h.square().mean() + sum(t.square().mean() for t in layers)).backward()
    missing = [name for name, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("masked", ["mask_token", "drop"])
@pytest.mark.parametrize("cls_position", ["start", "middle"])
def test_keep_all_equals_no_keep_and_clones_repeat(masked: str, cls_position: str) -> None:
    enc = _encoder(masked, cls_position).eval()
    x = torch.randn(2, FRAMES, MEL)
    all_pos = torch.arange(enc.num_patches).expand(2, -1)
    with torch.no_grad():
        h0, l0 = enc(x, return_layers=True)
        h1, l1 = enc(x, all_pos, return_layers=True)
        h2, _ = enc(x, all_pos.repeat_interleave(2, 0), clones=2)
    torch.testing.assert_close(h0, h1)
    for a, b in zip(l0, l1):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(h2[0::2], h0)
    torch.testing.assert_close(h2[1::2], h0)


def test_layer_target_is_the_block_output_before_the_residual() -> None:
    enc = _encoder(cls_position="start").eval()
    x = torch.randn(2, FRAMES, MEL)
    with torch.no_grad():
        _, layers = enc(x, return_layers=True)
        seq = torch.cat([enc.cls_token.expand(2, -1, -1), enc.tokens(x)], dim=1)
        _, t0 = enc.blocks[0](seq)
        after0 = seq + t0
        t1 = enc.blocks[1].layer(enc.blocks[1].norm(after0.flip(1))).flip(1)
    torch.testing.assert_close(layers[0], t0[:, 1:])
    torch.testing.assert_close(layers[1], t1[:, 1:])


def test_drop_path_only_in_training_and_layer_groups() -> None:
    enc = _encoder()
    x = torch.randn(4, FRAMES, MEL)
    enc.eval()
    with torch.no_grad():
        ref = enc(x)[0]
        enc.set_drop_path(0.5)
        assert [blk.drop_path for blk in enc.blocks] == [0.0, 0.5]
        torch.testing.assert_close(enc(x)[0], ref)
        enc.train()
        torch.manual_seed(3)
        outs = [enc(x)[0] for _ in range(4)]
    assert any((o - ref).abs().max() > 1e-4 for o in outs)
    groups = enc.layer_groups()
    assert len(groups) == 1 + len(enc.blocks)
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)) == len(list(enc.parameters()))
    outside = {id(p) for p in groups[0]}
    assert id(enc.patch_embed.proj.weight) in outside and id(enc.mask_token) in outside
    assert {id(p) for p in groups[2]} == {id(p) for p in enc.blocks[1].parameters()}


def test_init_and_from_config() -> None:
    cfg = section(
        "model",
        encoder="xlstm",
        embed_dim=32,
        depth=2,
        patch_size=PATCH,
        patch_init="xavier",
        xlstm={"num_heads": 2, "expand": 2, "conv_kernel": 4, "cls_position": "middle"},
    )
    enc = build_encoder(cfg, FRAMES, MEL)
    assert isinstance(enc, XlstmEncoder) and enc.masked_tokens == "mask_token"
    assert enc.cls_position == "middle" and enc.blocks[0].layer.heads == 2
    assert enc.blocks[0].layer.conv.kernel_size == (4,) and enc.blocks[0].layer.up.out_features == 2 * 64
    fb = enc.blocks[1].layer.fgate.bias
    torch.testing.assert_close(fb.detach(), torch.tensor([3.0, 6.0]))
    assert 0.005 < enc.cls_token.std() < 0.05 and 0.005 < enc.mask_token.std() < 0.05
    with pytest.raises(ValueError, match="cls_position"):
        _encoder(cls_position="end")


def test_timing_print() -> None:
    """Forward + backward of a tiny encoder (dim 64, depth 2, 128 tokens, batch 8); prints, asserts finiteness."""
    torch.manual_seed(0)
    enc = XlstmEncoder(64, 2, heads=4, expand=2, conv_kernel=4, patch=16, frames=256, mel=128)
    assert enc.num_patches == 128
    x = torch.randn(8, 256, 128)
    keep = _keep(8, 64, 128)
    times = []
    for _ in range(3):
        enc.zero_grad()
        t0 = time.perf_counter()
        h, layers = enc(x, keep, return_layers=True)
        (h.square().mean() + sum(t.square().mean() for t in layers)).backward()
        times.append(time.perf_counter() - t0)
    assert torch.isfinite(h).all() and all(torch.isfinite(p.grad).all() for p in enc.parameters())
    print(f"\nxLSTM tiny encoder fwd+bwd (dim 64, depth 2, 128 tokens, batch 8): {min(times) * 1e3:.1f} ms")
