"""Downstream evaluation pieces: task loading and checks, filters, folds, pooling, model selection,
per-task recipes, the AS-20K store, ablation tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrain_helpers import tiny_setup


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from sslam.config import load_config

    root = tmp_path_factory.mktemp("downstream")
    params, feats = tiny_setup(root)
    return load_config(params), feats


def test_task_recipe_overrides_merge_onto_the_base_recipe():
    from sslam.config import ConfigError, load_config

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
    from sslam.config import TaskConfig
    from sslam.downstream.evaluate import load_task

    cfg, feats = tiny
    with pytest.raises(ValueError, match=r"tasks\.square\.protocol is 'cross_validation' but .*task\.json says 'train_eval'"):
        load_task(cfg.data.corpus_dir, "square", TaskConfig(protocol="cross_validation"))
    with pytest.raises(FileNotFoundError, match="no task 'nope'"):
        load_task(cfg.data.corpus_dir, "nope", TaskConfig())


def test_keyword_task_has_train_valid_test_and_its_own_classes(tiny):
    from sslam.downstream.evaluate import folds, load_task

    cfg, feats = tiny
    task, store = load_task(cfg.data.corpus_dir, "keywords", cfg.tasks["keywords"], feats)
    mono, _ = load_task(cfg.data.corpus_dir, "mono", cfg.tasks["mono"])
    assert task.protocol == "train_valid_test" and not set(task.classes) & set(mono.classes)
    (fold,) = folds(task, store)
    split = store.split
    assert set(split[fold.train]) == {"train"} and set(split[fold.valid]) == {"valid"} and set(split[fold.test]) == {"test"}
    assert len(fold.train) == len(fold.valid) == len(fold.test) == len(task.classes)  # 1 clip per class and split


def test_min_labels_keeps_only_polyphonic_clips(tiny):
    from sslam.downstream.evaluate import Task, kept_rows, load_task

    cfg, feats = tiny
    task, store = load_task(cfg.data.corpus_dir, "square", cfg.tasks["square"], feats)
    store.labels = [["a"], ["a", "b"], ["c", "x"], [], ["a", "b", "c"]]  # 'x' is not a class of the task
    t = Task("t", "multi_label", "train_eval", ["a", "b", "c"], ["train", "eval"], min_labels=2)
    assert kept_rows(t, store).tolist() == [1, 4]
    assert kept_rows(Task("t", "multi_label", "train_eval", ["a", "b", "c"], [], 1), store).tolist() == [0, 1, 2, 4]


def test_audioset_task_concatenates_balanced_and_eval(tiny):
    from sslam.config import TaskConfig
    from sslam.downstream.evaluate import folds, load_task
    from sslam.features.dataset import FeatureStore

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
    from sslam.downstream.evaluate import load_task

    cfg, feats = tiny
    task, store = load_task(cfg.data.corpus_dir, "square", cfg.tasks["square"], feats)
    train = np.nonzero(store.split == "train")[0]
    stats = store.train_stats(train)
    raw = np.stack([store.raw(int(i)).astype(np.float64) for i in train])
    assert stats["mean"] == pytest.approx(raw.mean()) and stats["std"] == pytest.approx(raw.std())
    x = store.renormalised(stats).batch(train)
    assert torch.allclose(x, torch.from_numpy((raw - raw.mean()) / (2 * raw.std())).float(), atol=1e-3)


def test_freq_mean_pooling_keeps_frequency_rows():
    from sslam.downstream.evaluate import pool, pooled_dim
    from sslam.models.vit import Encoder

    torch.manual_seed(0)
    enc = Encoder(16, 1, 2, patch=16, frames=64, mel=48).eval()  # grid 4 x 3
    x = torch.randn(2, 64, 48)
    h, _ = enc(x)
    z = pool(enc, x, "freq_mean")
    assert z.shape == (2, pooled_dim(enc, "freq_mean")) == (2, 3 * 16)
    # token t*F + f sits in row f: the f-th slice is the mean over time of those tokens
    for f in range(3):
        assert torch.allclose(z[:, f * 16 : (f + 1) * 16], h[:, 1:][:, f::3].mean(1), atol=1e-6)
    assert torch.allclose(pool(enc, x, "mean"), h[:, 1:].mean(1)) and torch.equal(pool(enc, x, "cls"), h[:, 0])


def test_validation_selection_reports_the_best_valid_epoch(tiny, monkeypatch):
    """train_valid_test: the reported test score is the head's at the epoch with the best valid score,
    checked every `select_every` epochs."""
    from sslam.downstream import evaluate as E

    cfg, feats = tiny
    task, store = E.load_task(cfg.data.corpus_dir, "keywords", cfg.tasks["keywords"], feats)
    seen = []
    real_score = E.score

    def spy(task_, y, logits):
        s = real_score(task_, y, logits)
        seen.append(s)
        return s

    monkeypatch.setattr(E, "score", spy)
    enc = E.build_encoder(cfg, "random0", *store.raw(0).shape)
    lin = cfg.linear_eval.model_copy(update={"epochs": 9, "select_every": 4})
    res = E.linear_eval(enc, task, store, lin, seed=0)
    valid_scores, test_score = seen[:-1], seen[-1]
    assert len(valid_scores) == 3  # epochs 4, 8 and the last (9)
    assert res["selection"]["valid"] == pytest.approx(max(valid_scores), abs=1e-5)
    assert res["selection"]["selected_epoch"] == [4, 8, 9][int(np.argmax(valid_scores))]
    assert res["accuracy"] == pytest.approx(test_score, abs=1e-5)


def test_finetune_runs_every_recipe_switch(tiny):
    """Weighted sampling, noise, task stats, freq_mean pooling and selection together: a real run whose
    result is a valid score per fold."""
    from sslam.downstream import evaluate as E

    cfg, feats = tiny
    task, store = E.load_task(cfg.data.corpus_dir, "keywords", cfg.tasks["keywords"], feats)
    frames, mel = store.raw(0).shape
    recipe = cfg.finetune_recipe("keywords").model_copy(update={
        "epochs": 2, "batch_size": 2, "weighted_sampling": True, "noise_std": 0.1, "norm_stats": "task",
        "pooling": "freq_mean", "mixup": True})
    res = E.finetune(lambda: E.build_encoder(cfg, "random0", frames, mel), task, store, recipe, seed=0)
    assert 0.0 <= res["accuracy"] <= 1.0 and res["selection"]["selected_epoch"] in (1, 2)


def test_ablation_tables_pick_runs_that_differ_only_in_their_keys():
    from sslam.report.ablations import ABLATIONS, Run, render, rows_for

    base = Run("workspace", {"mix.strategy": "max", "srl.aggregation": "mean", "seed": 0}, {"square/linear/stage2": 0.5})
    avg = Run("exp-avg", {"mix.strategy": "average", "srl.aggregation": "mean", "seed": 0}, {"square/linear/stage2": 0.4})
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
    from sslam.config import TaskConfig
    from sslam.downstream.evaluate import folds, load_task
    from sslam.features.dataset import FeatureStore, class_balanced_weights

    cfg, feats = tiny
    task, store = load_task(cfg.data.corpus_dir, "as2m", TaskConfig(data="audioset", train_splits=["balanced", "unbalanced"]), feats)
    sizes = {s: len(FeatureStore(feats, s)) for s in ("balanced", "unbalanced", "eval")}
    (fold,) = folds(task, store)
    assert len(fold.train) == sizes["balanced"] + sizes["unbalanced"] and len(fold.test) == sizes["eval"]
    assert sum(len(labs) > 0 for labs in (store.labels[i] for i in fold.train)) == len(fold.train)  # labels kept
    w = class_balanced_weights([store.labels[r] for r in fold.train], task.classes)
    assert w.shape == (len(fold.train),) and (w > 0).all()


def test_warmup_cosine_schedule_by_hand():
    from sslam.downstream.evaluate import warmup_cosine

    lrs = [warmup_cosine(s, 10, 2, 1.0, 0.0) for s in range(10)]
    assert lrs[:2] == [0.5, 1.0]  # warm-up reaches the peak at its last step
    assert lrs[2] == pytest.approx(1.0) and lrs[6] == pytest.approx(0.5)  # half-way through the cosine
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert warmup_cosine(10, 10, 2, 1.0, 0.1) == pytest.approx(0.1)  # ends at min_lr
    assert warmup_cosine(0, 10, 0, 1.0, 0.0) == pytest.approx(1.0)  # no warm-up: starts at the peak


def test_linear_eval_with_task_stats_equals_a_renormalised_store(tiny):
    """norm_stats: task embeds each fold with its training clips' statistics: the same result as
    evaluating a store renormalised by hand with those statistics."""
    from sslam.downstream import evaluate as E

    cfg, feats = tiny
    task, store = E.load_task(cfg.data.corpus_dir, "square", cfg.tasks["square"], feats)
    lin = cfg.linear_eval.model_copy(update={"epochs": 3})
    (fold,) = E.folds(task, store)
    by_hand = store.renormalised(store.train_stats(fold.train))
    enc = E.build_encoder(cfg, "random0", *store.raw(0).shape)
    a = E.linear_eval(enc, task, store, lin.model_copy(update={"norm_stats": "task"}), seed=0)
    b = E.linear_eval(enc, task, by_hand, lin, seed=0)
    assert a["map"] == pytest.approx(b["map"], abs=1e-6)
    c = E.linear_eval(enc, task, store, lin, seed=0)  # pretraining stats: a different input scale
    assert not torch.equal(by_hand.batch(fold.train), store.batch(fold.train)) and 0 < c["map"] <= 1
