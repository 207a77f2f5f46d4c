"""Downstream evaluation pieces: task loading and checks, filters, folds, pooling, model selection,
per-task recipes, the AS-20K store, ablation tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import section
from pretrain_helpers import tiny_setup

from sslam.config.base import merged


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from sslam.config.params import load_config

    root = tmp_path_factory.mktemp("downstream")
    params, feats = tiny_setup(root)
    return load_config(params), feats


def test_task_recipe_overrides_merge_onto_the_base_recipe():
    from sslam.config.base import ConfigError
    from sslam.config.params import load_config

    cfg = load_config("params.yaml", {"tasks.keywords.recipe": {"lr": 0.5, "noise_std": 0.2}})
    r = cfg.finetune_recipe("keywords")
    assert (r.lr, r.noise_std, r.epochs) == (0.5, 0.2, cfg.finetune.epochs)
    assert cfg.finetune_recipe("square") == cfg.finetune  # no overrides: the base recipe itself
    assert cfg.finetune_recipe("mono").mixup is False  # ESC-50: no mixup
    with pytest.raises(ConfigError, match=r"tasks\.square\.recipe\.lrr"):
        load_config("params.yaml", {"tasks.square.recipe": {"lrr": 1.0}})
    with pytest.raises(ConfigError, match=r"tasks\.square\.recipe\.lr"):
        load_config("params.yaml", {"tasks.square.recipe": {"lr": -1.0}})
    with pytest.raises(ConfigError, match="does not fit kind"):
        load_config("params.yaml", {"tasks.square.metric": "accuracy"})


def test_params_must_agree_with_the_corpus_task(tiny):
    from sslam.config.downstream import TaskConfig
    from sslam.downstream.tasks import load_task

    cfg, feats = tiny
    with pytest.raises(
        ValueError, match=r"tasks\.square\.protocol is 'cross_validation' but .*task\.json says 'train_eval'"
    ):
        load_task(cfg.data.corpus_dir, "square", TaskConfig(protocol="cross_validation"))
    with pytest.raises(FileNotFoundError, match="no task 'nope'"):
        load_task(cfg.data.corpus_dir, "nope", TaskConfig())


def test_keyword_task_has_train_valid_test_and_its_own_classes(tiny):
    from sslam.downstream.tasks import folds, load_task

    cfg, feats = tiny
    task, store = load_task(cfg.data.corpus_dir, "keywords", cfg.tasks["keywords"], feats)
    mono, _ = load_task(cfg.data.corpus_dir, "mono", cfg.tasks["mono"])
    assert task.protocol == "train_valid_test" and not set(task.classes) & set(mono.classes)
    (fold,) = folds(task, store)
    split = store.split
    assert (
        set(split[fold.train]) == {"train"}
        and set(split[fold.valid]) == {"valid"}
        and set(split[fold.test]) == {"test"}
    )
    assert len(fold.train) == len(fold.valid) == len(fold.test) == len(task.classes)  # 1 clip per class and split


def test_min_labels_keeps_only_polyphonic_clips(tiny):
    from sslam.downstream.tasks import Task, kept_rows, load_task

    cfg, feats = tiny
    task, store = load_task(cfg.data.corpus_dir, "square", cfg.tasks["square"], feats)
    store.labels = [["a"], ["a", "b"], ["c", "x"], [], ["a", "b", "c"]]  # 'x' is not a class of the task
    t = Task("t", "multi_label", "train_eval", ["a", "b", "c"], ["train", "eval"], min_labels=2)
    assert kept_rows(t, store).tolist() == [1, 4]
    assert kept_rows(Task("t", "multi_label", "train_eval", ["a", "b", "c"], [], 1), store).tolist() == [0, 1, 2, 4]


def test_strong_event_counts_count_distinct_labels_per_clip(tmp_path):
    """A label repeated in a clip counts once; AudioSet segment ids (``<ytid>_<start ms>``, ytids may hold
    an underscore) are keyed by the clip id; no strong labels: None."""
    from sslam.downstream.tasks import strong_event_counts

    tsv = tmp_path / "strong.tsv"
    rows = [("a_b_30000", "/m/x"), ("a_b_30000", "/m/x"), ("a_b_30000", "/m/y"), ("c_0", "/m/x")]
    tsv.write_text(
        "segment_id\tstart_time_seconds\tend_time_seconds\tlabel\n"
        + "".join(f"{seg}\t0.0\t1.0\t{lab}\n" for seg, lab in rows)
    )
    assert strong_event_counts(tsv) == {"a_b_30000": 2, "c_0": 1}
    assert strong_event_counts(tsv, segment_ids=True) == {"a_b": 2, "c": 1}
    assert strong_event_counts(tmp_path / "none.tsv") is None


def test_audioset_task_concatenates_balanced_and_eval(tiny):
    from sslam.config.downstream import TaskConfig
    from sslam.downstream.tasks import folds, load_task
    from sslam.features.reader import FeatureStore

    cfg, feats = tiny
    task, store = load_task(cfg.data.corpus_dir, "as20k", TaskConfig(data="audioset"), feats)
    bal, ev = FeatureStore(feats, "balanced"), FeatureStore(feats, "eval")
    assert len(store) == len(bal) + len(ev)
    (fold,) = folds(task, store)
    assert fold.train.tolist() == list(range(len(bal))) and fold.test.tolist() == list(range(len(bal), len(store)))
    rows = np.array([len(bal), 0, len(bal) + 1, 1])  # mixed order across the two sets
    want = torch.stack([ev.batch([0])[0], bal.batch([0])[0], ev.batch([1])[0], bal.batch([1])[0]])
    assert torch.equal(store.batch(rows), want)
    assert all(set(labs) <= set(task.classes) for labs in store.labels)


def test_task_stats_renormalise_from_the_training_clips(tiny):
    from sslam.downstream.tasks import load_task

    cfg, feats = tiny
    task, store = load_task(cfg.data.corpus_dir, "square", cfg.tasks["square"], feats)
    train = np.nonzero(store.split == "train")[0]
    stats = store.train_stats(train)
    raw = np.stack([store.raw(int(i)).astype(np.float64) for i in train])
    assert stats["mean"] == pytest.approx(raw.mean()) and stats["std"] == pytest.approx(raw.std())
    x = store.renormalised(stats).batch(train)
    assert torch.allclose(x, torch.from_numpy((raw - raw.mean()) / (2 * raw.std())).float(), atol=1e-3)


def test_freq_mean_pooling_keeps_frequency_rows():
    from sslam.downstream.encoder import pool, pooled_dim
    from sslam.models.vit import ViTEncoder

    torch.manual_seed(0)
    enc = ViTEncoder(16, 1, 2, patch=16, frames=64, mel=48).eval()  # grid 4 x 3
    x = torch.randn(2, 64, 48)
    full = torch.tensor([64, 64])
    h, _ = enc(x)
    z = pool(enc, x, "freq_mean", full)
    assert z.shape == (2, pooled_dim(enc, "freq_mean")) == (2, 3 * 16)
    # token t*F + f sits in row f: the f-th slice is the mean over time of those tokens
    for f in range(3):
        assert torch.allclose(z[:, f * 16 : (f + 1) * 16], h[:, 1:][:, f::3].mean(1), atol=1e-6)
    assert torch.allclose(pool(enc, x, "mean", full), h[:, 1:].mean(1), atol=1e-6)
    assert torch.equal(pool(enc, x, "cls", full), h[:, 0])


def test_pooling_reads_only_the_valid_time_patches():
    """A clip of 20 valid frames in a 64-frame window (patches of 16 frames): time patch 0 (centre 7.5)
    holds audio, patch 1 (centre 23.5) does not; so the mean is over the first 3 tokens (one time patch x
    3 frequency rows), by hand; a full clip pools all 12."""
    from sslam.downstream.encoder import pool
    from sslam.models.pooling import valid_time_patches
    from sslam.models.vit import ViTEncoder

    assert [valid_time_patches(f, 16, 4) for f in (1, 7, 8, 23, 24, 40, 64, 500)] == [1, 1, 1, 1, 2, 3, 4, 4]
    torch.manual_seed(0)
    enc = ViTEncoder(16, 1, 2, patch=16, frames=64, mel=48).eval()
    x = torch.randn(2, 64, 48)
    h, _ = enc(x)
    z = pool(enc, x, "mean", torch.tensor([20, 64]))
    assert torch.allclose(z[0], h[0, 1:4].mean(0), atol=1e-6)
    assert torch.allclose(z[1], h[1, 1:].mean(0), atol=1e-6)
    zf = pool(enc, x, "freq_mean", torch.tensor([40, 64]))  # 3 valid time patches: tokens 0..8
    for f in range(3):
        assert torch.allclose(zf[0, f * 16 : (f + 1) * 16], h[0, 1:10][f::3].mean(0), atol=1e-6)


def test_fbank_stats_is_the_mean_and_std_over_valid_frames():
    """The non-learned floor against numpy on the valid frames of each clip."""
    from sslam.downstream.encoder import FbankStats, pool, pooled_dim

    torch.manual_seed(0)
    x = torch.randn(3, 50, 8, dtype=torch.float64)
    frames = torch.tensor([50, 13, 1])
    enc = FbankStats(8)
    z = pool(enc, x, "mean", frames)
    assert z.shape == (3, pooled_dim(enc, "mean")) == (3, 16)
    for i, n in enumerate(frames.tolist()):
        ref = x[i, :n].numpy()
        np.testing.assert_allclose(z[i, :8].numpy(), ref.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(z[i, 8:].numpy(), ref.std(0), rtol=1e-12, atol=1e-12)


def test_augmented_batches_pool_the_frames_the_augmentation_leaves():
    """Mixup pools over the longer clip of a mixed pair; the log-mel roll spreads padding inside the clip,
    so every frame counts; without augmentation the clips' own frames."""
    from sslam.downstream.training import augment_batch

    x, y = torch.zeros(4, 32, 8), torch.eye(4)
    frames = torch.tensor([5, 10, 20, 32])
    g = torch.Generator().manual_seed(0)
    off = section("finetune", mixup=False, roll=False, specaug_freq=0.0, specaug_time=0.0)
    assert torch.equal(augment_batch(x, y, off, g, frames, 0.0, 1.0)[2], frames)
    mixed = merged(off, {"mixup": True, "mixup_prob": 1.0})
    assert torch.equal(augment_batch(x, y, mixed, g, frames, 0.0, 1.0)[2], torch.tensor([32, 20, 20, 32]))
    rolled = merged(off, {"roll": True})
    assert torch.equal(augment_batch(x, y, rolled, g, frames, 0.0, 1.0)[2], torch.full((4,), 32))


def test_validation_selection_reports_the_best_valid_epoch(tiny, monkeypatch):
    """train_valid_test: the reported test score is the head's at the epoch with the best valid score,
    checked every `select_every` epochs."""
    from sslam.downstream import training
    from sslam.downstream.encoder import load_encoder
    from sslam.downstream.linear import linear_eval
    from sslam.downstream.tasks import load_task

    cfg, feats = tiny
    task, store = load_task(cfg.data.corpus_dir, "keywords", cfg.tasks["keywords"], feats)
    seen = []
    real_score = training.score

    def spy(task_, y, logits):
        s = real_score(task_, y, logits)
        seen.append(s)
        return s

    monkeypatch.setattr(training, "score", spy)  # valid and test scores are all taken in training
    enc = load_encoder(cfg, "random0", *store.raw(0).shape)
    lin = merged(cfg.linear_eval, {"epochs": 9, "select_every": 4})
    res = linear_eval(enc, task, store, lin, seed=0).metrics
    valid_scores, test_score = seen[:-1], seen[-1]
    assert len(valid_scores) == 3  # epochs 4, 8 and the last (9)
    assert res["selection"]["valid"] == pytest.approx(max(valid_scores), abs=1e-5)
    assert res["selection"]["selected_epoch"] == [4, 8, 9][int(np.argmax(valid_scores))]
    assert res["accuracy"] == pytest.approx(test_score, abs=1e-5)
    # metrics hold what params, code and data determine: no wall-clock figure in the result
    assert set(res) == {"accuracy", "folds", "selection"}


def test_finetune_runs_every_recipe_switch(tiny):
    """Weighted sampling, noise, task stats, freq_mean pooling and selection together: a real run whose
    result is a valid score per fold."""
    from sslam.downstream.encoder import load_encoder
    from sslam.downstream.finetune import finetune
    from sslam.downstream.tasks import load_task

    cfg, feats = tiny
    task, store = load_task(cfg.data.corpus_dir, "keywords", cfg.tasks["keywords"], feats)
    frames, mel = store.raw(0).shape
    recipe = merged(
        cfg.finetune_recipe("keywords"),
        {
            "epochs": 2,
            "batch_size": 2,
            "weighted_sampling": True,
            "noise_std": 0.1,
            "norm_stats": "task",
            "pooling": "freq_mean",
            "mixup": True,
        },
    )
    res = finetune(lambda: load_encoder(cfg, "random0", frames, mel), task, store, recipe, seed=0).metrics
    assert 0.0 <= res["accuracy"] <= 1.0 and res["selection"]["selected_epoch"] in (1, 2)


def test_ablation_tables_pick_runs_that_differ_only_in_their_keys():
    from sslam.experiments.ablations import ABLATIONS, Run, render, rows_for

    base = Run(
        "workspace", {"mix.strategy": "max", "srl.aggregation": "mean", "seed": 0}, {"square/linear/stage2": 0.5}
    )
    avg = Run(
        "exp-avg", {"mix.strategy": "average", "srl.aggregation": "mean", "seed": 0}, {"square/linear/stage2": 0.4}
    )
    both = Run("exp-both", {"mix.strategy": "average", "srl.aggregation": "max", "seed": 0}, {})
    same = Run("HEAD", dict(base.params), {})
    table10 = next(a for a in ABLATIONS if a.table == "Table 10")
    table11 = next(a for a in ABLATIONS if a.table == "Table 11")
    runs = [base, same, avg, both]
    assert [r.name for r in rows_for(table10, runs, base)] == ["workspace", "exp-avg"]
    assert [r.name for r in rows_for(table11, runs, base)] == ["workspace"]
    md = render(runs, base)
    assert "| exp-avg | average | 40.0 |" in md and "| workspace | max | 50.0 |" in md
    assert "dvc exp run -S srl.aggregation=<value>" in md


def test_as2m_setting_trains_on_balanced_and_unbalanced(tiny):
    from sslam.config.downstream import TaskConfig
    from sslam.downstream.tasks import folds, load_task
    from sslam.features.reader import FeatureStore, class_balanced_weights

    cfg, feats = tiny
    task, store = load_task(
        cfg.data.corpus_dir, "as2m", TaskConfig(data="audioset", train_splits=["balanced", "unbalanced"]), feats
    )
    sizes = {s: len(FeatureStore(feats, s)) for s in ("balanced", "unbalanced", "eval")}
    (fold,) = folds(task, store)
    assert len(fold.train) == sizes["balanced"] + sizes["unbalanced"] and len(fold.test) == sizes["eval"]
    assert sum(len(labs) > 0 for labs in (store.labels[i] for i in fold.train)) == len(fold.train)  # labels kept
    w = class_balanced_weights([store.labels[r] for r in fold.train], task.classes)
    assert w.shape == (len(fold.train),) and (w > 0).all()


def test_linear_eval_with_task_stats_equals_a_renormalised_store(tiny):
    """norm_stats: task embeds each fold with its training clips' statistics: the same result as
    evaluating a store renormalised by hand with those statistics."""
    from sslam.downstream.encoder import load_encoder
    from sslam.downstream.linear import linear_eval
    from sslam.downstream.tasks import folds, load_task

    cfg, feats = tiny
    task, store = load_task(cfg.data.corpus_dir, "square", cfg.tasks["square"], feats)
    lin = merged(cfg.linear_eval, {"epochs": 3})
    (fold,) = folds(task, store)
    by_hand = store.renormalised(store.train_stats(fold.train))
    enc = load_encoder(cfg, "random0", *store.raw(0).shape)
    a = linear_eval(enc, task, store, merged(lin, {"norm_stats": "task"}), seed=0).metrics
    b = linear_eval(enc, task, by_hand, lin, seed=0).metrics
    assert a["map"] == pytest.approx(b["map"], abs=1e-6)
    c = linear_eval(enc, task, store, lin, seed=0).metrics  # pretraining stats: a different input scale
    assert not torch.equal(by_hand.batch(fold.train), store.batch(fold.train)) and 0 < c["map"] <= 1


# ----------------------------------------------------------------------------- reference recipe points


def test_layer_decay_floor_scales_with_each_group():
    """Each group's lr = its scale x the one schedule: at lr 5e-5, min_lr 1e-6, decay 0.65 over 12 blocks
    no group falls below scale x min_lr, none rises after warm-up, and the top group peaks at lr."""
    from sslam.downstream.encoder import Head
    from sslam.downstream.finetune import layer_decay_groups
    from sslam.downstream.training import apply_schedule
    from sslam.models.vit import ViTEncoder
    from sslam.schedule import warmup_cosine_lr

    lr, min_lr, decay, depth = 5e-5, 1e-6, 0.65, 12
    assert lr * decay**depth < min_lr  # block 0's peak is below min_lr: a shared floor would make its lr rise
    enc = ViTEncoder(16, depth, 2, patch=16, frames=32, mel=32)
    groups = layer_decay_groups(enc, Head(16, 3), lr, decay, 0.05)
    block0 = {id(p) for p in enc.blocks[0].parameters()}
    assert [g["lr_scale"] for g in groups if block0 & {id(p) for p in g["params"]}] == [pytest.approx(0.65**12)]
    assert sorted(g["lr_scale"] for g in groups) == pytest.approx(sorted([0.65 ** (12 - i) for i in range(12)] + [1.0]))
    total, warm = 400, 40
    lrs = []
    for step in range(total + 1):
        apply_schedule(groups, warmup_cosine_lr(step, total, warm, lr, min_lr))
        lrs.append([g["lr"] for g in groups])
    lrs = np.array(lrs)  # (steps, groups)
    scale = np.array([g["lr_scale"] for g in groups])
    assert (lrs >= scale * min_lr * (1 - 1e-12)).all()
    assert (np.diff(lrs[warm - 1 :], axis=0) <= 0).all()  # monotone non-increasing once warmed up
    top = int(np.argmax(scale))
    assert lrs[warm - 1, top] == lr  # exactly the peak at the last warm-up step
    np.testing.assert_allclose(lrs[-1], scale * min_lr, rtol=1e-12)  # every group ends on its own floor
    old = [warmup_cosine_lr(s, total, warm, lr * 0.65**12, min_lr) for s in (warm - 1, total)]
    assert old[1] > old[0]  # the former shared floor: block 0's lr rose from 2.8e-7 to 1e-6


def test_no_weight_decay_on_biases_and_norms():
    from sslam.downstream.encoder import Head
    from sslam.downstream.finetune import layer_decay_groups
    from sslam.models.vit import ViTEncoder

    enc, head = ViTEncoder(16, 3, 2, patch=16, frames=32, mel=32), Head(16, 4)
    named = dict(enc.named_parameters()) | {f"head.{n}": p for n, p in head.named_parameters()}
    by_name = {n for n in named if n.endswith(".bias") or "norm" in n}  # written from the names, not shapes
    groups = layer_decay_groups(enc, head, 1e-3, 0.65, 0.05, decay_norm_and_bias=False)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in named.values())  # every parameter exactly once
    undecayed = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert undecayed == {id(named[n]) for n in by_name}
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert (
        scale_of[id(enc.blocks[0].norm1.bias)] == scale_of[id(enc.blocks[0].attn.qkv.weight)] == pytest.approx(0.65**3)
    )
    assert scale_of[id(head.fc.bias)] == scale_of[id(enc.cls_token)] == 1.0
    assert all(g["weight_decay"] == 0.05 for g in layer_decay_groups(enc, head, 1e-3, 0.65, 0.05))  # default: all


def test_bce_per_positive_against_a_direct_computation():
    from sslam.downstream.tasks import Task
    from sslam.downstream.training import loss_fn

    z = np.array([[2.0, -1.0, 0.5], [-3.0, 0.0, 1.5]])
    y = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # 3 positive labels
    p = 1 / (1 + np.exp(-z))
    direct = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum() / 3
    task = Task("t", "multi_label", "train_eval", ["a", "b", "c"], [])
    got = loss_fn(task, torch.tensor(z), torch.tensor(y), "per_positive")
    assert got.item() == pytest.approx(direct, rel=1e-12)
    assert loss_fn(task, torch.tensor(z), torch.tensor(y)).item() == pytest.approx(direct * 3 / 6, rel=1e-12)  # mean


def test_per_batch_mixup_draws_one_lambda():
    from sslam.features import augment as A

    torch.manual_seed(0)
    lam, partner = A.draw_mixup(6, 0.8, 1.0, per_batch=True)
    assert (lam == lam[0]).all() and 0 < lam[0] < 1 and partner.tolist() == [5, 4, 3, 2, 1, 0]
    assert (A.draw_mixup(6, 0.8, 0.0, per_batch=True)[0] == 1).all()
    applied = [bool(A.draw_mixup(4, 0.8, 0.9, per_batch=True)[0][0] < 1) for _ in range(2000)]
    assert 0.87 < np.mean(applied) < 0.93  # whole batches mixed with probability 0.9
    per_clip = A.draw_mixup(64, 0.8, 1.0)[0]
    assert len(set(per_clip.tolist())) > 1  # the default draws one per clip
    # one lambda + flipped partner: the soft labels of the batch sum to its hard positives
    y = torch.tensor([[1.0, 0, 1], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=torch.float64)
    _, ym = A.mixup(torch.zeros(4, 1, dtype=torch.float64), y, lam[:4].double(), torch.arange(3, -1, -1))
    assert ym.sum().item() == pytest.approx(y.sum().item(), rel=1e-12)


def test_logmel_gain_equals_the_fbank_of_the_scaled_waveform():
    """The roll gain on the log-mel is the waveform gain's exact image: compare with the Kaldi fbank
    of the scaled waveform, normalised the reference's way."""
    from sslam.features import augment as A
    from sslam.features.fbank import kaldi_fbank

    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    w = torch.from_numpy(0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))).float()
    target, mean, std, gain = 60, -5.0, 3.0, 1.37

    def normalised(wave):
        fb = kaldi_fbank(wave)
        return (torch.nn.functional.pad(fb, (0, 0, 0, target - fb.shape[0])) - mean) / (2 * std), fb.shape[0]

    x, frames = normalised(w)
    want, _ = normalised(w * gain)
    got = A.logmel_gain(x[None], torch.tensor([gain]), torch.tensor([frames]), mean, std)[0]
    assert frames < target
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert torch.equal(got[frames:], x[frames:])  # padding untouched
    assert A.roll_waveform(torch.tensor([1.0, 2, 3, 4]), 1, 2.0).tolist() == [8.0, 2.0, 4.0, 6.0]


def test_waveform_roll_recomputes_the_log_mel_of_the_rolled_clip(tiny):
    """roll_domain: waveform: the batch is the fbank of the stored waveform shifted and scaled, padded and
    normalised like the store; with shift 0 and gain 1 the path gives back the stored features."""
    from sslam.downstream.tasks import WaveFeatures, load_task
    from sslam.downstream.training import load_batch
    from sslam.features.fbank import kaldi_fbank

    cfg, feats = tiny
    task, store = load_task(cfg.data.corpus_dir, "square", cfg.tasks["square"], feats)
    wave = WaveFeatures(
        section("features", target_frames=64, shard_size=16, store_waveforms=True), 16000
    )  # as tiny_setup
    frames, mel = store.raw(0).shape
    same = (torch.from_numpy(wave.logmel(store.waveform(0))) - store.mean) / (2 * store.std)
    torch.testing.assert_close(same, store.batch([0])[0], atol=2e-3, rtol=0)  # float16 storage
    recipe = merged(cfg.finetune, {"roll": True, "roll_gain": True, "roll_domain": "waveform"})
    rows = np.array([0, 1])
    torch.manual_seed(3)
    got = load_batch(store, rows, recipe, torch.Generator().manual_seed(5), wave)
    torch.manual_seed(3)
    gains = (torch.distributions.Beta(10.0, 10.0).sample((2,)) + 0.5).tolist()
    g = torch.Generator().manual_seed(5)
    for k, r in enumerate(rows):
        w = store.waveform(int(r)).numpy()
        shift = int(torch.randint(0, len(w), (1,), generator=g))
        fb = kaldi_fbank(torch.from_numpy(np.roll(w, shift) * gains[k]))[:frames]
        fb = torch.nn.functional.pad(fb, (0, 0, 0, frames - fb.shape[0]))
        torch.testing.assert_close(got[k], (fb - store.mean) / (2 * store.std), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="wave_features"):
        load_batch(store, rows, recipe, torch.Generator(), None)


def test_finetune_runs_the_paper_recipe_switches(tiny):
    """Per-positive BCE, per-batch mixup, waveform roll with gain, no decay on biases and norms: a real
    run whose result is a valid mAP."""
    from sslam.downstream.encoder import load_encoder
    from sslam.downstream.finetune import finetune
    from sslam.downstream.tasks import WaveFeatures, load_task

    cfg, feats = tiny
    task, store = load_task(cfg.data.corpus_dir, "square", cfg.tasks["square"], feats)
    frames, mel = store.raw(0).shape
    recipe = merged(
        cfg.finetune,
        {
            "epochs": 2,
            "batch_size": 2,
            "bce_reduction": "per_positive",
            "mixup_lambda": "per_batch",
            "roll_gain": True,
            "roll_domain": "waveform",
            "decay_norm_and_bias": False,
            "pooling": "cls",
            "lr": 5e-5,
        },
    )
    wave = WaveFeatures(section("features", target_frames=64, shard_size=16, store_waveforms=True), 16000)
    res = finetune(
        lambda: load_encoder(cfg, "random0", frames, mel), task, store, recipe, seed=0, wave_features=wave
    ).metrics
    assert 0.0 < res["map"] <= 1.0


def test_paper_linear_eval_runs_the_frozen_encoder_on_every_augmented_step(tiny):
    """protocol: paper: one encoder pass per training step (plus the test pass), the encoder unchanged,
    and the head sees different inputs every epoch (mixup and SpecAugment), unlike the cached protocol."""
    from pydantic import ValidationError

    from sslam.downstream.encoder import Head, embed, load_encoder
    from sslam.downstream.linear import linear_eval
    from sslam.downstream.tasks import folds, load_task

    cfg, feats = tiny
    task, store = load_task(cfg.data.corpus_dir, "square", cfg.tasks["square"], feats)
    (fold,) = folds(task, store)
    enc = load_encoder(cfg, "random0", *store.raw(0).shape)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    epochs, n = 4, len(fold.train)
    lin = merged(
        cfg.linear_eval,
        {
            "protocol": "paper",
            "epochs": epochs,
            "batch_size": n,
            "warmup_epochs": 1,
            "lr": 1e-3,
            "pooling": "cls",
            "mixup": True,
            "mixup_prob": 1.0,
            "specaug_freq": 0.2,
            "specaug_time": 0.2,
        },
    )
    calls, head_inputs = [], []
    h1 = enc.register_forward_hook(lambda m, args, out: calls.append((m.training, args[0].shape[0])))
    real_head = Head.forward

    def spy(self, z):
        head_inputs.append(z.detach().clone())
        return real_head(self, z)

    Head.forward = spy
    try:
        res = linear_eval(enc, task, store, lin, seed=0).metrics
    finally:
        Head.forward = real_head
        h1.remove()
    assert 0.0 < res["map"] <= 1.0 and "embedding_cache_speedup" not in res
    assert calls == [(False, n)] * epochs + [(False, len(fold.test))]  # every step, then the test clips
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())  # frozen
    train_inputs = head_inputs[:epochs]
    clean = embed(enc, store, fold.train, "cls")
    for i in range(epochs):
        assert torch.cdist(train_inputs[i], clean).min() > 1e-4  # augmented, never the clean embedding
        for j in range(i):
            assert torch.cdist(train_inputs[i], train_inputs[j]).min() > 1e-4  # new inputs every epoch
    with pytest.raises(ValueError, match="cached"):  # model_copy skips validation: linear_eval checks again
        linear_eval(enc, task, store, cfg.linear_eval.model_copy(update={"mixup": True}), seed=0)
    with pytest.raises(ValidationError, match="cached"):
        section("linear_eval", specaug_time=0.2)
    assert "protocol" in cfg.linear_eval.model_dump()  # the metrics files record it with the recipe


def test_task_stats_equal_the_features_stage_stats(tmp_path):
    """TaskStore.train_stats and the features stage share one rule (valid frames only, Chan's merge): on
    clips of different lengths, a task's stats over a whole set equal that set's stats.json (up to the
    float16 storage; stats.json is computed before it) and a float64 numpy computation over the stored
    valid frames; counting the padding, as before, would not."""
    import json

    from sslam.data.manifest import ManifestRow, write_manifest
    from sslam.downstream.tasks import TaskStore
    from sslam.features.store import build_features
    from sslam.io import write_flac_atomic

    corpus, sr = tmp_path / "corpus", 16000
    rng = np.random.default_rng(1)
    rows = []
    for k, seconds in enumerate([0.3, 1.0, 1.7, 2.5]):
        t = np.arange(int(seconds * sr)) / sr
        x = 0.2 * np.sin(2 * np.pi * (250 + 300 * k) * t) + 0.02 * rng.standard_normal(len(t))
        write_flac_atomic(corpus / f"audio/unbalanced/c{k}.flac", x, sr)
        rows.append(ManifestRow(f"c{k}", "unbalanced", f"audio/unbalanced/c{k}.flac", seconds, sr, ("/m/0",), "ok", ""))
    write_manifest(corpus / "manifests" / "unbalanced.csv", rows)
    build_features(corpus, tmp_path / "features", section("features", target_frames=200, shard_size=3), sr)
    stage = json.loads((tmp_path / "features" / "stats.json").read_text())
    store = TaskStore(tmp_path / "features", {"unbalanced": ""})
    assert [store.frames(i) for i in range(4)] == [28, 98, 168, 200]  # three padded clips, one cropped
    got = store.train_stats(np.arange(4))
    valid = np.concatenate([store.raw(i).astype(np.float64)[: store.frames(i)].ravel() for i in range(4)])
    assert got["mean"] == pytest.approx(valid.mean(), rel=1e-12) and got["std"] == pytest.approx(valid.std(), rel=1e-12)
    assert got["mean"] == pytest.approx(stage["mean"], abs=1e-3) and got["std"] == pytest.approx(stage["std"], abs=1e-3)
    assert stage["frames"] == len(valid) // 128
    padded = np.stack([store.raw(i).astype(np.float64) for i in range(4)])
    assert abs(padded.mean() - stage["mean"]) > 0.5  # the old rule, padding counted, is far off
