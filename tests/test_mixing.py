"""Stage-2 pieces: mixed regions, mixing strategies, the SRL target, and which losses each variant uses."""

from __future__ import annotations

import pytest
import torch
from conftest import reference_kaldi_fbank, section

from sslam.models.vit import ViTEncoder
from sslam.pretrain import mixing as M
from sslam.pretrain.objectives.bootstrap import srl_target, stage2_losses
from sslam.pretrain.student import Student, make_teacher


def runs(flags: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    out, start = [], None
    for i, f in enumerate(flags.tolist() + [False]):
        if f and start is None:
            start = i
        if not f and start is not None:
            out.append((start, i))
            start = None
    return out


@pytest.mark.parametrize("time_patches", [64, 19, 32, 8, 100])
def test_reference_regions_scale_to_any_length(time_patches):
    g = torch.Generator().manual_seed(0)
    w = round((1 - 0.53) * time_patches / 2)
    for _ in range(200):
        m = M.reference_regions(time_patches, 0.53, g)
        # two unmixed windows of w (adjacent when idx2 = idx1 + w, as the reference allows), up to three mixed regions
        assert len(runs(m)) <= 3 and sorted(e - s for s, e in runs(~m)) in ([w, w], [2 * w])
        assert int(m.sum()) == time_patches - 2 * w
    if time_patches == 64:
        assert int(m.sum()) == 34  # the reference: 34 of 64 time patches carry the partner


@pytest.mark.parametrize("time_patches", [64, 19, 12])
def test_per_clip_regions(time_patches):
    g = torch.Generator().manual_seed(1)
    m = M.per_clip_regions(50, time_patches, 0.5, generator=g)
    for row in m:
        r = runs(row)
        assert len(r) == 3 and all(e > s for s, e in r)  # three disjoint, non-touching regions
        assert int(row.sum()) == round(0.5 * time_patches)
    assert len({tuple(r.tolist()) for r in m}) > 10  # drawn per clip


def test_frames_are_patch_aligned_and_share_matches():
    m = M.mixed_time_patches(2, 19, True, "reference", 0.53, torch.Generator().manual_seed(2))
    f = M.frames_mask(m, 16, 304)
    assert f.shape == (2, 304) and torch.equal(f[:, ::16], m)
    assert all(s % 16 == 0 for s, _ in runs(f[0]))
    assert int(f[0].sum()) == 16 * int(m[0].sum())
    full = M.mixed_time_patches(3, 19, False, "reference", 0.53)
    assert full.all()


def test_max_and_average_by_hand():
    x = torch.tensor([[[1.0, 5.0], [2.0, 2.0], [0.0, 9.0]], [[3.0, 1.0], [0.0, 4.0], [7.0, 7.0]]])
    fm = torch.tensor([[True, False, True], [True, True, False]])
    mx = M.mix_spectrograms(x, fm, "max")
    # clip 0's partner is clip 1 (roll by one), clip 1's is clip 0
    assert mx[0].tolist() == [[3.0, 5.0], [2.0, 2.0], [7.0, 9.0]]
    assert mx[1].tolist() == [[3.0, 5.0], [2.0, 4.0], [7.0, 7.0]]
    av = M.mix_spectrograms(x, fm, "average")
    assert av[0].tolist() == [[2.0, 3.0], [2.0, 2.0], [3.5, 8.0]]
    assert av[1].tolist() == [[2.0, 3.0], [1.0, 3.0], [7.0, 7.0]]


def test_waveform_mixing_equals_fbank_of_the_averaged_waveform():
    torch.manual_seed(0)
    n = 400 + 63 * 160
    waves = torch.randn(2, n) * 0.1
    fm = torch.ones(2, 64, dtype=torch.bool)
    got = M.mix_waveforms(waves, torch.tensor([n, n]), fm, -5.0, 3.0, 16000, section("features"), 64)
    for i in range(2):
        avg = 0.5 * (waves[i] + waves[1 - i])
        fb = reference_kaldi_fbank(avg)
        assert torch.allclose(got[i], (fb - -5.0) / 6.0, atol=1e-4)
    none = M.mix_waveforms(
        waves, torch.tensor([n, n]), torch.zeros(2, 64, dtype=torch.bool), 0.0, 1.0, 16000, section("features"), 64
    )
    assert not torch.allclose(none, got)


def test_srl_target_against_direct_computation():
    own = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    mixed_tok = torch.tensor([[False, True, True, False], [True, False, False, True]])
    part = -torch.ones(2, 2, 3)
    t = srl_target(own, part, mixed_tok, "mean")
    expect = own.clone()
    expect[0, 1] = (own[0, 1] - 1) / 2
    expect[0, 2] = (own[0, 2] - 1) / 2
    expect[1, 0] = (own[1, 0] - 1) / 2
    expect[1, 3] = (own[1, 3] - 1) / 2
    assert torch.equal(t, expect)
    tm = srl_target(own, part, mixed_tok, "max")
    assert torch.equal(tm, own)  # own targets are all >= 0 > -1


class StubTeacher(torch.nn.Module):
    """A teacher whose per-layer outputs are a fixed function of the tokens it is given, so the SRL
    target through stage2_losses can be computed directly."""

    def __init__(self, enc: ViTEncoder):
        super().__init__()
        self.enc = enc
        self.grid = enc.grid
        self.patch_size = enc.patch_size

    def forward(self, x, keep=None, clones=1, return_layers=False):
        return self.enc(x, keep=keep, clones=clones, return_layers=return_layers)


def tiny(variant: str, strategy: str = "max"):
    torch.manual_seed(0)
    cfg = section("model", embed_dim=32, depth=2, num_heads=2, decoder_layers=1, decoder_groups=4)
    student = Student(cfg, 64, 32)
    teacher = make_teacher(student)
    return student, teacher, tiny_settings(variant, strategy)


def tiny_settings(variant: str, strategy: str = "max", **stage) -> dict:
    """The params sections stage2_losses takes: 2 clones, top-2 layers, half the time patches mixed."""
    return {
        "mask": section("mask", ratio=0.8, block_size=2, prob_adjust=0.07, clone_batch=2),
        "stage": section(
            "pretrain.stage2",
            variant=variant,
            top_k_layers=2,
            global_top_k_layers=1,
            cls_loss_weight=1.0,
            cls_loss_reduction="sum",
            center_targets="none",
            clone_batch=None,
            **stage,
        ),
        "mix": section("mix", strategy=strategy, partial=True, partial_mode="reference", mixed_fraction=0.5),
        "srl": section("srl", weight=1.0, aggregation="mean"),
    }


@pytest.mark.parametrize(
    "variant,terms",
    [
        ("mb_ua", {"local_unmixed", "global_unmixed"}),
        ("mb_pma", {"local_mixed", "global_mixed"}),
        ("mb_ua_pma", {"local_unmixed", "global_unmixed", "local_mixed", "global_mixed"}),
        ("sslam", {"local_unmixed", "global_unmixed", "local_mixed", "global_mixed", "srl"}),
    ],
)
def test_each_variant_turns_on_exactly_its_losses(variant, terms):
    student, teacher, s = tiny(variant)
    x = torch.randn(3, 64, 32)
    out = stage2_losses(student, teacher, x, **s, seed=4)
    assert set(out) - {"loss", "local"} == terms
    expected = out["local"] + sum(out[t] for t in terms if t.startswith("global")) + out.get("srl", 0.0)
    assert torch.allclose(out["loss"], expected)
    if variant in ("mb_ua_pma", "sslam"):  # local = mean over all masked tokens of both halves
        assert torch.allclose(out["local"], (out["local_unmixed"] + out["local_mixed"]) / 2, atol=1e-5)
    out["loss"].backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_global_switches_and_mb_ua_equals_stage1_shape():
    student, teacher, s = tiny("sslam")
    s_off = tiny_settings("sslam", global_unmixed=False)
    x = torch.randn(3, 64, 32)
    a = stage2_losses(student, teacher, x, **s, seed=1)
    b = stage2_losses(student, teacher, x, **s_off, seed=1)
    assert torch.allclose(a["loss"] - b["loss"], a["global_unmixed"], atol=1e-3)


def test_srl_through_the_step_matches_a_direct_computation():
    """The SRL term equals the patch loss against (own target, partner target on the mixed tokens)."""
    from sslam.pretrain.losses import patch_loss
    from sslam.pretrain.masking import inverse_block_mask, visible_indices
    from sslam.pretrain.targets import layer_averaged_targets

    student, teacher, s = tiny("sslam")
    x = torch.randn(3, 64, 32)
    out = stage2_losses(student, teacher, x, **s, seed=7)
    # repeat the step's draws
    g = torch.Generator().manual_seed(7)
    mixed_tp = M.mixed_time_patches(3, 4, True, "reference", 0.5, g)
    mask_b = inverse_block_mask(6, (4, 2), 0.8, 2, 0.07, g)
    xm = M.mix_spectrograms(x, M.frames_mask(mixed_tp, 16, 64), "max")
    inputs = torch.cat([x, xm])
    keep = visible_indices(mask_b.repeat(2, 1))
    with torch.no_grad():
        _, layers = teacher(inputs, return_layers=True)
        own = layer_averaged_targets(layers, 2)[:3]
        mixed_tok = mixed_tp[:, :, None].expand(3, 4, 2).reshape(3, 8)
        _, l2 = teacher(torch.roll(x, 1, 0), keep=visible_indices(~mixed_tok), return_layers=True)
        part = layer_averaged_targets(l2, 2)
    direct = own.clone()
    for i in range(3):
        pos = torch.nonzero(mixed_tok[i]).flatten()
        direct[i, pos] = 0.5 * (own[i, pos] + part[i])
    _, pred = student(inputs, keep, 2, torch.Generator().manual_seed(8))
    expected = patch_loss(pred[6:], direct.repeat_interleave(2, 0), mask_b)
    assert torch.allclose(out["srl"], expected, atol=1e-5)
