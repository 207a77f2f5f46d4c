"""The Mamba encoder (models/mamba.py): the parallel selective scan against the step-by-step reference, the
bidirectional (Vim v2) block against a hand computation, mamba-ssm's parameter names, and the contract."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import section
from torch import nn

from sslam.models import mamba
from sslam.models.mamba import (
    HAS_MAMBA_KERNEL,
    Mamba,
    MambaEncoder,
    _linear_scan,
    _Scan,
    selective_scan,
    selective_scan_sequential,
    selective_scan_torch,
)
from sslam.models.registry import build_encoder

SCAN_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def scan_inputs(batch: int, d: int, length: int, n: int, dtype: torch.dtype, seed: int = 0) -> dict:
    """Random scan inputs spanning slow (delta*A near 0) to very fast (delta*A << -100) decays."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    bias = torch.linspace(-6.0, 4.0, d, dtype=torch.float64)  # softplus: 2.5e-3 .. 4 (times A up to -12)
    ins = {
        "u": r(batch, d, length),
        "delta": 0.5 * r(batch, d, length),
        "A": -torch.exp(r(d, n)) * 3.0,
        "B": r(batch, n, length),
        "C": r(batch, n, length),
        "D": r(d),
        "z": r(batch, d, length),
        "delta_bias": bias,
    }
    return {k: v.to(dtype).requires_grad_() for k, v in ins.items()}


def value_and_grads(fn, ins: dict) -> list[torch.Tensor]:
    y = fn(**ins)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(y.dtype)
    return [y, *torch.autograd.grad((y * w).sum(), list(ins.values()))]


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


# ----------------------------------------------------------------------------- the scan


@pytest.mark.parametrize("per_tile", [6, 4, 1])  # channels per block of the CPU scan: 1, 2 (4 + 2), 6 blocks
@pytest.mark.parametrize("length", [1, 2, 7, 300])
def test_parallel_scan_matches_sequential_float64(length, per_tile, monkeypatch):
    monkeypatch.setattr(mamba, "TILE_ELEMENTS", per_tile * 2 * length * 3)
    assert len(mamba._channel_tiles(torch.empty(2, 6, length), 3)) == math.ceil(6 / per_tile)
    ins = scan_inputs(2, 6, length, 3, torch.float64)
    ref = value_and_grads(selective_scan_sequential, ins)
    got = value_and_grads(selective_scan_torch, ins)
    for name, g, r in zip(("y", *SCAN_ARGS), got, ref):
        assert torch.allclose(g, r, rtol=1e-10, atol=1e-10), (name, (g - r).abs().max().item())


@pytest.mark.parametrize("length", [1, 7, 300])
def test_parallel_scan_float32_close_to_float64_reference(length):
    ins64 = scan_inputs(2, 6, length, 3, torch.float64)
    ref = value_and_grads(selective_scan_sequential, ins64)
    ins32 = {k: v.detach().float().requires_grad_() for k, v in ins64.items()}
    got = value_and_grads(selective_scan_torch, ins32)
    for name, g, r in zip(("y", *SCAN_ARGS), got, ref):
        assert g.dtype == torch.float32
        assert rel_err(g, r) < 1e-4, (name, rel_err(g, r))


def test_scan_gradcheck_and_no_delta_softplus():
    """The hand-written backward against finite differences; the optional arguments off."""
    ins = scan_inputs(1, 3, 9, 2, torch.float64)
    core = [ins[k] for k in ("u", "A", "B", "C")]
    delta = F.softplus(ins["delta"].detach()).requires_grad_()
    assert torch.autograd.gradcheck(lambda u, d, a, b, c: _Scan.apply(u, d, a, b, c), [core[0], delta, *core[1:]])
    plain = dict(u=core[0], delta=delta, A=core[1], B=core[2], C=core[3], delta_softplus=False)
    assert torch.allclose(selective_scan_torch(**plain), selective_scan_sequential(**plain), atol=1e-12)


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 8, 9, 33, 130])
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_forward_and_reverse(length, reverse):
    g = torch.Generator().manual_seed(length)
    a = torch.rand(2, length, 3, generator=g, dtype=torch.float64)
    x = torch.randn(2, length, 3, generator=g, dtype=torch.float64)
    h, ref = torch.zeros(2, 3, dtype=torch.float64), torch.empty_like(x)
    for t in reversed(range(length)) if reverse else range(length):
        h = a[:, t] * h + x[:, t]
        ref[:, t] = h
    got = _linear_scan(a.clone(), x.clone(), reverse)
    assert torch.allclose(got, ref, atol=1e-12)


def test_scan_low_precision_input_computes_in_float32():
    ins = {k: v.detach() for k, v in scan_inputs(1, 4, 20, 2, torch.float64).items()}
    ref = selective_scan_sequential(**ins)
    got = selective_scan_torch(**{k: v.bfloat16() for k, v in ins.items()})
    assert got.dtype == torch.bfloat16
    assert rel_err(got, ref) < 5e-2  # bf16 rounding of inputs and output only


@pytest.mark.skipif(not (HAS_MAMBA_KERNEL and torch.cuda.is_available()), reason="needs CUDA and mamba_ssm")
def test_cuda_kernel_matches_torch_scan():
    ins = {k: v.detach().float().cuda().requires_grad_() for k, v in scan_inputs(2, 16, 300, 8, torch.float64).items()}
    kernel = value_and_grads(selective_scan, ins)  # dispatches to mamba_ssm's selective_scan_fn
    ours = value_and_grads(selective_scan_torch, ins)
    for name, k, o in zip(("y", *SCAN_ARGS), kernel, ours):
        assert rel_err(k, o) < 1e-3, (name, rel_err(k, o))


# ----------------------------------------------------------------------------- the mixer


def mamba_ssm_names(d_model: int, d_state: int, d_conv: int, expand: int) -> dict[str, tuple[int, ...]]:
    """What mamba-ssm's ``Mamba(d_model, d_state, d_conv, expand)`` holds, written out by hand."""
    e, r = expand * d_model, math.ceil(d_model / 16)
    return {
        "in_proj.weight": (2 * e, d_model),
        "conv1d.weight": (e, 1, d_conv),
        "conv1d.bias": (e,),
        "x_proj.weight": (r + 2 * d_state, e),
        "dt_proj.weight": (e, r),
        "dt_proj.bias": (e,),
        "A_log": (e, d_state),
        "D": (e,),
        "out_proj.weight": (d_model, e),
    }


def test_parameter_names_and_shapes_as_mamba_ssm_and_vim():
    d_model, d_state, d_conv, expand = 40, 5, 3, 3  # dt_rank = ceil(40 / 16) = 3
    expected = mamba_ssm_names(d_model, d_state, d_conv, expand)
    uni = Mamba(d_model, d_state, d_conv, expand, bidirectional=False)
    assert {k: tuple(v.shape) for k, v in uni.state_dict().items()} == expected
    vim = {
        "conv1d_b.weight": expected["conv1d.weight"],
        "conv1d_b.bias": expected["conv1d.bias"],
        "x_proj_b.weight": expected["x_proj.weight"],
        "dt_proj_b.weight": expected["dt_proj.weight"],
        "dt_proj_b.bias": expected["dt_proj.bias"],
        "A_b_log": expected["A_log"],
        "D_b": expected["D"],
    }
    bi = Mamba(d_model, d_state, d_conv, expand, bidirectional=True)
    assert {k: tuple(v.shape) for k, v in bi.state_dict().items()} == {**expected, **vim}
    assert bi.conv1d.groups == expand * d_model and bi.conv1d.padding == (d_conv - 1,)


def test_mamba_ssm_init():
    m = Mamba(32, d_state=6, expand=2, bidirectional=True)
    r = math.ceil(32 / 16)
    for s in ("", "_b"):
        a_log = m.A_log if not s else m.A_b_log
        assert torch.allclose(a_log, torch.log(torch.arange(1.0, 7.0)).expand(64, 6))
        assert torch.equal(getattr(m, f"D{s}"), torch.ones(64))
        dt_proj = getattr(m, f"dt_proj{s}")
        dt = F.softplus(dt_proj.bias)
        assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5) and dt.std() > 0
        assert dt_proj.weight.abs().max() <= r**-0.5 and dt_proj.weight.std() > 0.2 * r**-0.5
    assert not torch.equal(m.dt_proj.bias, m.dt_proj_b.bias)  # drawn separately, as Vim


def test_bidirectional_block_is_average_of_forward_and_flipped_backward_scan():
    torch.manual_seed(0)
    m = Mamba(16, d_state=4, d_conv=3, expand=2, bidirectional=True).double()
    with torch.no_grad():  # make the backward parameters differ from the forward ones everywhere
        m.A_b_log.add_(torch.rand_like(m.A_b_log))
        m.D_b.mul_(torch.rand_like(m.D_b))
    h = torch.randn(2, 11, 16, dtype=torch.float64)
    xz = h @ m.in_proj.weight.t()
    x, z = xz[..., :32].transpose(1, 2), xz[..., 32:].transpose(1, 2)

    def direction(x, z, conv, x_proj, dt_proj, a_log, d):
        x = F.silu(F.conv1d(F.pad(x, (2, 0)), conv.weight, conv.bias, groups=32))
        dt, b, c = (x.transpose(1, 2) @ x_proj.weight.t()).split([1, 4, 4], dim=-1)
        delta = (dt @ dt_proj.weight.t() + dt_proj.bias).transpose(1, 2)
        return selective_scan_sequential(x, delta, -torch.exp(a_log), b.mT, c.mT, d, z)

    fwd = direction(x, z, m.conv1d, m.x_proj, m.dt_proj, m.A_log, m.D)
    bwd = direction(x.flip(-1), z.flip(-1), m.conv1d_b, m.x_proj_b, m.dt_proj_b, m.A_b_log, m.D_b).flip(-1)
    expected = ((fwd + bwd) / 2).transpose(1, 2) @ m.out_proj.weight.t()
    got = m(h)
    assert torch.allclose(got, expected, atol=1e-12)
    assert not torch.allclose(got, fwd.transpose(1, 2) @ m.out_proj.weight.t(), atol=1e-3)


def test_unidirectional_block_is_causal_and_bidirectional_is_not():
    torch.manual_seed(0)
    h = torch.randn(1, 12, 16, dtype=torch.float64)
    h2 = h.clone()
    h2[:, 8:] += 1.0
    uni = Mamba(16, 4, 4, 2, bidirectional=False).double()
    assert torch.allclose(uni(h)[:, :8], uni(h2)[:, :8], atol=1e-12)
    assert not torch.allclose(uni(h)[:, 8:], uni(h2)[:, 8:], atol=1e-6)
    bi = Mamba(16, 4, 4, 2, bidirectional=True).double()
    assert not torch.allclose(bi(h)[:, :8], bi(h2)[:, :8], atol=1e-6)


# ----------------------------------------------------------------------------- the encoder

FRAMES, MEL, PATCH = 16, 8, 4  # grid (4, 2): 8 patches, time-major


def tiny(masked: str = "mask_token", cls: str = "start", bidirectional: bool = True, **kw) -> MambaEncoder:
    torch.manual_seed(0)
    enc = MambaEncoder(
        16, 2, d_state=4, d_conv=3, expand=2, bidirectional=bidirectional, cls_position=cls, patch=PATCH,
        frames=FRAMES, mel=MEL, masked_tokens=masked, **kw,
    )  # fmt: skip
    return enc.double().eval()


def clip(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, FRAMES, MEL, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def random_keep(rows: int, n: int, k: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.stack([torch.randperm(n, generator=g)[:k].sort().values for _ in range(rows)])


@pytest.mark.parametrize("masked", ["mask_token", "drop"])
@pytest.mark.parametrize("cls", ["start", "middle", "none"])
def test_encoder_output_shapes(masked, cls):
    enc = tiny(masked, cls)
    assert enc.grid == (4, 2) and enc.num_patches == 8 and enc.num_layers == 2 and enc.dim == 16
    keep = random_keep(2 * 3, 8, 3)
    h, layers = enc(clip(), keep=keep, clones=3, return_layers=True)
    m = 8 if masked == "mask_token" else 3
    assert h.shape == (6, 1 + m, 16)
    assert len(layers) == 2 and all(t.shape == (6, 3, 16) for t in layers)
    assert enc.output_positions(keep) is (None if masked == "mask_token" else keep)
    h, layers = enc(clip())
    assert h.shape == (2, 9, 16) and layers == []


@pytest.mark.parametrize("masked", ["mask_token", "drop"])
@pytest.mark.parametrize("cls", ["start", "middle", "none"])
def test_keep_all_equals_no_mask_and_clones_repeat(masked, cls):
    enc, x = tiny(masked, cls), clip()
    h, layers = enc(x, return_layers=True)
    keep = torch.arange(8).expand(4, -1)
    hk, layers_k = enc(x, keep=keep, clones=2, return_layers=True)
    assert torch.allclose(hk, h.repeat_interleave(2, 0), atol=1e-12)
    for a, b in zip(layers_k, layers):
        assert torch.allclose(a, b.repeat_interleave(2, 0), atol=1e-12)


def test_layer_targets_are_mixer_outputs_at_keep():
    enc, x = tiny("mask_token", "middle"), clip()
    keep = random_keep(2, 8, 3)
    seen = []
    hooks = [blk.mixer.register_forward_hook(lambda m, i, o: seen.append(o)) for blk in enc.blocks]
    _, layers = enc(x, keep=keep, return_layers=True)
    for hk in hooks:
        hk.remove()
    for out, t in zip(seen, layers):
        assert out.shape[1] == 9  # CLS in the sequence, at 8 // 2
        tokens = torch.cat([out[:, :4], out[:, 5:]], dim=1)
        assert torch.allclose(t, torch.gather(tokens, 1, keep[:, :, None].expand(-1, -1, 16)))


def test_mask_token_mode_ignores_masked_patches_and_drop_mode_sees_only_visible():
    keep = torch.tensor([[0, 2, 5], [1, 3, 4]])
    x, x2 = clip(), clip()
    x2[:, :, :] += 3.0 * (torch.rand_like(x2) > 0.5)
    for slot in range(8):  # restore the visible patches: only masked patch content differs
        t, f = divmod(slot, 2)
        for row in range(2):
            if slot in keep[row]:
                x2[row, t * PATCH : (t + 1) * PATCH, f * PATCH : (f + 1) * PATCH] = x[
                    row, t * PATCH : (t + 1) * PATCH, f * PATCH : (f + 1) * PATCH
                ]
    for masked in ("mask_token", "drop"):
        enc = tiny(masked)
        h, layers = enc(x, keep=keep, return_layers=True)
        h2, layers2 = enc(x2, keep=keep, return_layers=True)
        assert torch.allclose(h, h2) and all(torch.allclose(a, b) for a, b in zip(layers, layers2))
    enc = tiny("mask_token")
    assert not torch.allclose(enc(x, keep=keep)[0], enc(x)[0], atol=1e-6)  # the mask token is used


@pytest.mark.parametrize("cls", ["start", "middle", "none"])
def test_unidirectional_encoder_is_causal(cls):
    if cls == "start":
        with pytest.warns(UserWarning, match="sees no token"):
            enc = tiny("mask_token", cls, bidirectional=False)
    else:
        enc = tiny("mask_token", cls, bidirectional=False)
    x = clip()
    x2 = x.clone()
    x2[:, -PATCH:] += 1.0  # the last time row of patches: tokens 6 and 7
    h, layers = enc(x, return_layers=True)
    h2, layers2 = enc(x2, return_layers=True)
    assert torch.allclose(h[:, 1:7], h2[:, 1:7], atol=1e-12)
    assert not torch.allclose(h[:, 7:], h2[:, 7:], atol=1e-6)
    for a, b in zip(layers, layers2):
        assert torch.allclose(a[:, :6], b[:, :6], atol=1e-12)
    if cls != "none":  # a CLS token sees what precedes it: nothing at the start, the first half in the middle
        assert torch.allclose(h[:, 0], h2[:, 0], atol=1e-12)
        x3 = x.clone()
        x3[:, :PATCH] += 1.0
        assert torch.allclose(enc(x3)[0][:, 0], h[:, 0], atol=1e-12) == (cls == "start")
    bi = tiny("mask_token", cls, bidirectional=True)
    assert not torch.allclose(bi(x)[0][:, 1:7], bi(x2)[0][:, 1:7], atol=1e-6)


def test_drop_path_off_in_eval_on_in_train():
    enc, x = tiny(), clip()
    ref = enc(x)[0]
    enc.set_drop_path(0.5)
    assert [blk.drop_path for blk in enc.blocks] == [0.0, 0.5]
    assert torch.allclose(enc(x)[0], ref, atol=1e-12)
    enc.train()
    torch.manual_seed(3)
    outs = [enc(x.repeat(8, 1, 1))[0] for _ in range(2)]
    assert not torch.allclose(outs[0], outs[1])


def test_from_config_layer_groups_gradients_and_init():
    cfg = section(
        "model", encoder="mamba", embed_dim=32, depth=3, patch_size=4,
        mamba={"bidirectional": False, "norm": "rmsnorm", "cls_position": "middle", "d_state": 5, "expand": 3},
    )  # fmt: skip
    enc = build_encoder(cfg, FRAMES, MEL)
    assert isinstance(enc, MambaEncoder) and enc.masked_tokens == "mask_token" and enc.cls_position == "middle"
    assert isinstance(enc.blocks[0].norm, nn.RMSNorm) and isinstance(enc.norm_f, nn.RMSNorm)
    mixer = enc.blocks[0].mixer
    assert not mixer.bidirectional and not hasattr(mixer, "A_b_log")
    assert mixer.A_log.shape == (96, 5) and mixer.conv1d.kernel_size == (4,)
    groups = enc.layer_groups()
    assert len(groups) == 4 and sum(len(g) for g in groups) == len(list(enc.parameters()))
    assert any(p is enc.cls_token for p in groups[0]) and any(p is enc.mask_token for p in groups[0])
    assert 0.005 < enc.cls_token.std() < 0.04 and 0.005 < enc.mask_token.std() < 0.04
    bound = 1 / math.sqrt(96) / math.sqrt(3)  # kaiming-uniform(a=sqrt 5) bound, over sqrt(depth)
    assert mixer.out_proj.weight.abs().max() <= bound and mixer.out_proj.weight.abs().max() > 0.8 * bound

    enc.train()
    keep = random_keep(4, 8, 3)
    h, layers = enc(torch.randn(2, FRAMES, MEL), keep=keep, clones=2, return_layers=True)
    (h.square().mean() + sum(t.square().mean() for t in layers)).backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []

    ssamba = {
        "d_state": 8,
        "d_conv": 4,
        "expand": 1,
        "bidirectional": True,
        "norm": "layernorm",
        "cls_position": "start",
    }
    bi_cfg = section("model", encoder="mamba", embed_dim=32, depth=1, patch_size=4, mamba=ssamba)
    bi = build_encoder(bi_cfg, FRAMES, MEL)
    assert bi.blocks[0].mixer.bidirectional and isinstance(bi.norm_f, nn.LayerNorm)
    assert bi.cls_position == "start"
    h, _ = bi(torch.randn(2, FRAMES, MEL), keep=random_keep(2, 8, 3))
    h.sum().backward()
    assert all(p.grad is not None for n, p in bi.named_parameters() if n.endswith(("_b.weight", "_b_log", "D_b")))


def test_bad_options_raise():
    with pytest.raises(ValueError, match="cls_position"):
        tiny(cls="end")
    with pytest.raises(ValueError, match="norm"):
        MambaEncoder(16, 1, norm="batchnorm", patch=PATCH, frames=FRAMES, mel=MEL)
    with pytest.raises(ValueError, match="patch_init"):
        MambaEncoder(16, 1, patch=PATCH, frames=FRAMES, mel=MEL, patch_init="zeros")


def test_tiny_encoder_forward_backward_is_fast():
    """dim 64, depth 2, 128 tokens, batch 8: forward + backward on the CPU (print; a generous bound)."""
    torch.manual_seed(0)
    enc = MambaEncoder(64, 2, patch=16, frames=256, mel=128).train()
    x = torch.randn(8, 256, 128)
    keep = random_keep(8, 128, 32)
    enc(x, keep=keep, return_layers=True)[0].sum().backward()  # warm-up
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        h, layers = enc(x, keep=keep, return_layers=True)
        (h.sum() + sum(t.sum() for t in layers)).backward()
        best = min(best, time.perf_counter() - t0)
    print(f"tiny Mamba encoder forward+backward: {best * 1e3:.0f} ms")
    assert h.shape == (8, 129, 64)
    assert best < 10.0  # typically ~0.2 s on 2 CPU threads; the bound only catches a per-step Python loop
