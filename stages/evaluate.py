"""DVC stages `linear_eval@<task>` and `finetune@<task>`: every configured encoder on one task.

Writes metrics/eval/<task>_<regime>.json: per encoder the task's metric (accuracy or mAP), per fold,
for soundscape tasks the mAP by degree of polyphony, for a task with conditions (the masker task's
target-to-masker ratios) the metric per condition; and data/eval/<task>_<regime>.npz: every encoder's
per-clip test scores, which the report's confidence intervals and paired comparisons resample.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

from sslam.config.params import load_config_or_exit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--task", required=True)
    ap.add_argument("--regime", choices=["linear", "finetune"], required=True)
    ap.add_argument("--features", default="data/features")
    ap.add_argument("--checkpoints", default="checkpoints")
    ap.add_argument("--metrics-dir", default="metrics/eval")
    ap.add_argument("--predictions-dir", default="data/eval")
    args = ap.parse_args(argv)
    cfg = load_config_or_exit(args.params)
    if args.task not in cfg.task_names:
        print(
            f"evaluate: task {args.task!r} is in neither params.yaml tasks ({sorted(cfg.tasks)}) "
            f"nor datasets ({sorted(cfg.datasets)})",
            file=sys.stderr,
        )
        return 2
    from sslam.downstream.encoder import load_encoder, store_for_encoder
    from sslam.downstream.finetune import finetune
    from sslam.downstream.linear import linear_eval
    from sslam.downstream.tasks import (
        WaveFeatures,
        fold_clip_lists,
        load_task,
        read_clip_lists,
        task_conditions,
        task_event_counts,
        task_features,
        task_location,
    )
    from sslam.downstream.training import condition_breakdown
    from sslam.io import write_json_atomic, write_npz_atomic

    task_cfg = cfg.task(args.task)
    corpus, features = task_location(cfg, args.task, args.features)
    try:
        task, store = load_task(corpus, args.task, task_cfg, features)
        clip_lists = fold_clip_lists(task, store)  # ValueError: a fold left empty by min_labels
    except (FileNotFoundError, ValueError) as err:
        print(f"evaluate: {err}", file=sys.stderr)
        return 2
    events = task_event_counts(task_cfg, args.task, corpus)
    conditions = task_conditions(task_cfg, args.task, corpus)
    frames, mel = store.raw(0).shape
    linear = args.regime == "linear"
    recipe = cfg.linear_recipe(args.task) if linear else cfg.finetune_recipe(args.task)
    encoders = cfg.evaluate.linear_encoders if linear else cfg.evaluate.finetune_encoders
    # roll_domain: waveform recomputes the log-mel with the task's own settings
    wave = WaveFeatures(task_features(cfg, args.task), cfg.data.sample_rate)
    out = {
        "task": args.task,
        "regime": args.regime,
        "metric": task.metric,
        "protocol": task.protocol,
        "data": f"datasets/{args.task}" if args.task in cfg.datasets else task_cfg.feature_set(args.task),
        "recipe": recipe.model_dump(),
        "clip_lists": clip_lists,  # per split, the clips the folds used (after min_labels)
        "clip_lists_read": read_clip_lists(store),  # per features set read, whole
        "encoders": {},
    }
    predictions: dict[str, np.ndarray] = {}
    for name in encoders:
        t0 = time.perf_counter()
        try:
            make_encoder = partial(load_encoder, cfg, name, frames, mel, args.checkpoints)
            data = store_for_encoder(cfg, name, args.task, store, recipe.norm_stats, args.checkpoints)
            if linear:
                res = linear_eval(make_encoder(), task, data, recipe, cfg.evaluate.seed, events, wave_features=wave)
            else:  # a fresh encoder per fold
                res = finetune(make_encoder, task, data, recipe, cfg.evaluate.seed, events, wave_features=wave)
        except (FileNotFoundError, ValueError) as err:  # a missing checkpoint, an empty split after filtering
            print(f"evaluate: {err}", file=sys.stderr)
            return 2
        clip_ids = store.index["clip_id"].to_numpy().astype(str)[res.rows]
        if predictions and not np.array_equal(predictions["clip_id"], clip_ids):
            raise RuntimeError(f"encoder {name}: test clips differ from the first encoder's (the folds must not)")
        if not predictions:  # the folds do not depend on the encoder: one set of test clips for all
            predictions = {"clip_id": clip_ids, "targets": res.targets}
            if conditions is not None:
                predictions["condition"] = np.array([conditions[c] for c in clip_ids], dtype=str)
        if conditions is not None:
            res.metrics["by_condition"] = condition_breakdown(task, res, predictions["condition"])
        predictions[f"scores_{name}"] = res.scores
        out["encoders"][name] = res.metrics
        seconds = time.perf_counter() - t0
        print(f"{args.task} {args.regime} {name}: {out['metric']} {res.metrics[out['metric']]:.4f} ({seconds:.1f}s)")
    write_npz_atomic(Path(args.predictions_dir) / f"{args.task}_{args.regime}.npz", predictions)
    write_json_atomic(Path(args.metrics_dir) / f"{args.task}_{args.regime}.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
