"""Paper-style tables and figures rendered from metrics/ (the `report` stage).

Tables 1-3 of the SSLAM paper, shaped the same way, from this run's metrics; the paper's published
numbers stand beside ours, marked with the dataset they come from (the synthetic tasks are analogues
of ESC-50 and SPASS, not the same data, so the numbers are context, not a target).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from sslam.downstream.bootstrap import Interval  # noqa: E402
from sslam.io import atomic_path  # noqa: E402
from sslam.pretrain.curves import curves_folder, read_curves  # noqa: E402
from sslam.report.intervals import (  # noqa: E402
    FLOOR,
    Predictions,
    Settings,
    compare,
    conditions,
    controls,
    encoder_intervals,
    floor_checks,
    method_groups,
)

# the paper's SSLAM rows (Tables 1 and 2), by the real dataset each synthetic task imitates
PAPER_LINEAR = {
    "square": 64.2,
    "park": 64.2,
    "waterfront": 59.5,
    "street": 67.4,
    "market": 68.5,
    "urban": 71.4,
    "desed": 77.8,
    "as20k": 16.9,
}
PAPER_FINETUNE = {
    "square": 85.6,
    "park": 80.5,
    "waterfront": 82.6,
    "street": 82.2,
    "market": 90.2,
    "urban": 90.9,
    "desed": 94.5,
    "as20k": 40.9,
}
PAPER_TABLE1 = {"as20k": ("AS-20K", 40.9), "mono": ("ESC-50", 96.2), "keywords": ("KS2", 98.1)}
ANALOGUE = {
    "square": "SPASS square",
    "park": "SPASS park",
    "street": "SPASS street",
    "waterfront": "SPASS waterfront",
    "market": "SPASS market",
    "urban": "URBAN-SED",
    "desed": "IDMT-DESED-FL",
    "as20k": "AS-20K",
    "mono": "ESC-50",
    "keywords": "KS2",
}


def load_eval(metrics_dir: str | Path) -> dict[tuple[str, str], dict]:
    out = {}
    for p in sorted(Path(metrics_dir).glob("*_*.json")):
        d = json.loads(p.read_text())
        out[(d["task"], d["regime"])] = d
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"


def _ci(iv: Interval | None) -> str:
    """A score with its interval, in %: ``57.3 [49.0, 65.1]``."""
    if iv is None:
        return "-"
    return f"{_pct(iv.point)} [{_pct(iv.low)}, {_pct(iv.high)}]"


def _signed(iv: Interval) -> str:
    """A difference with its interval, in points: ``+4.2 [-1.0, +9.5]``."""
    return f"{100 * iv.point:+.1f} [{100 * iv.low:+.1f}, {100 * iv.high:+.1f}]"


LABEL = {"sslam": "SSLAM", "mb_ua": "MB-UA", "mb_pma": "MB-PMA", "mb_ua_pma": "MB-UA-PMA"}


def floor_table(preds: dict[tuple[str, str], Predictions], s: Settings) -> dict[str, dict]:
    """Linear evaluation: each pretrained encoder minus the random-init controls (seeds pooled) and minus
    the ``fbank_stats`` floor, paired on the same clips; keyed ``task/encoder``."""
    out = {}
    for (task, regime), p in sorted(preds.items()):
        if regime != "linear":
            continue
        for e, row in floor_checks(p, s).items():
            out[f"{task}/{e}"] = {"metric": p.metric} | {k: c.to_json() for k, c in row.items()}
    return out


def variant_comparison(
    preds: dict[tuple[str, str], Predictions],
    runs: dict[str, tuple[str, int]],
    s: Settings,
    a: str = "sslam",
    b: str = "mb_ua",
) -> dict:
    """The paper's central comparison (Tables 2 and 3), linear evaluation: per task (and per condition of
    a task that has them: the masker task's ratios), variant ``a``'s stage-2 runs against ``b``'s from the
    same stage-1 checkpoint, paired on the same clips, seeds resampled within each variant."""
    group_a, group_b = method_groups(runs, a, b)
    out = {}
    for (task, regime), p in sorted(preds.items()):
        if regime != "linear":
            continue
        parts = [(task, p)] + [(f"{task} @ {c}", p.subset(c)) for c in conditions(p)]
        for key, q in parts:
            c = compare(q, group_a, group_b, (a, b), s)
            if c is None:
                continue
            out[key] = {
                "metric": q.metric,
                "clips": len(q.clip_id),
                "seeds": {a: [e for e in group_a if e in q.scores], b: [e for e in group_b if e in q.scores]},
            } | c.to_json()
    return out


def render_comparison(comparison: dict, s: Settings, a: str = "sslam", b: str = "mb_ua") -> str:
    if not comparison:
        return ""
    la, lb = LABEL.get(a, a), LABEL.get(b, b)
    lines = [
        "",
        f"## {la} vs {lb} (linear evaluation; paper Tables 2 and 3)",
        "",
        f"Stage 2 as `{a}` and as `{b}` from the same stage-1 checkpoint, same steps, same evaluation recipe. "
        f"Each score is the mean over the variant's stage-2 seeds with its {100 * s.level:.0f}% bootstrap "
        f"interval (eval clips and seeds resampled, {s.samples} replicates); the difference is paired on the "
        "same resampled clips. A verdict names the higher variant only when its interval excludes 0.",
        "",
        f"| task | metric | clips | {la} | {lb} | difference (points) | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    wins = {a: 0, b: 0}
    tasks = [k for k in comparison if " @ " not in k]
    for task, c in comparison.items():
        lines.append(
            f"| {task} | {c['metric']} | {c['clips']} | {_ci(_iv(c['a']))} | {_ci(_iv(c['b']))} | "
            f"{_signed(_iv(c['difference']))} | {c['verdict']} |"
        )
        if task in tasks:
            for v in (a, b):
                wins[v] += c["verdict"] == f"{v} higher"
    n = len(tasks)
    lines += [
        "",
        f"Over the {n} tasks: {la} higher on {wins[a]}, {lb} higher on {wins[b]}, no difference resolved on "
        f"{n - wins[a] - wins[b]}.",
    ]
    return "\n".join(lines) + "\n"


def _iv(d: dict) -> Interval:
    return Interval(d["point"], d["low"], d["high"])


def render_masker(
    preds: dict[tuple[str, str], Predictions], comparison: dict, s: Settings, a: str = "sslam", b: str = "mb_ua"
) -> str:
    """The masker task: accuracy per target-to-masker ratio of both variants (seeds pooled), their paired
    difference, and the floor and a control beside them."""
    tasks = [(t, p) for (t, r), p in sorted(preds.items()) if r == "linear" and p.condition is not None]
    if not tasks:
        return ""
    la, lb = LABEL.get(a, a), LABEL.get(b, b)
    lines = [
        "",
        "## The masker task: a target under a louder masker (linear evaluation)",
        "",
        "A target event under a masker that overlaps it in time and frequency, labelled by the target only "
        '(README "The masker task"). Per target-to-masker ratio (dB): each variant\'s accuracy over its '
        f"stage-2 seeds, the paired difference and the verdict ({100 * s.level:.0f}% bootstrap intervals), "
        f"and the `{FLOOR}` floor and the first random-init control on the same clips.",
        "",
        f"| task | TMR dB | clips | {la} | {lb} | difference (points) | verdict | {FLOOR} | control |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task, p in tasks:
        for cond in conditions(p):
            q = p.subset(cond)
            c = comparison.get(f"{task} @ {cond}")
            single = encoder_intervals(q, s)
            ctrl = controls(q)
            cells = (
                [_ci(_iv(c["a"])), _ci(_iv(c["b"])), _signed(_iv(c["difference"])), c["verdict"]] if c else ["-"] * 4
            )
            lines.append(
                f"| {task} | {cond} | {len(q.clip_id)} | "
                + " | ".join(cells)
                + f" | {_ci(single.get(FLOOR))} | {_ci(single[ctrl[0]]) if ctrl else '-'} |"
            )
    return "\n".join(lines) + "\n"


def render_floor(checks: dict) -> str:
    """Each pretrained encoder against the random-init controls and the ``fbank_stats`` floor."""
    if not checks:
        return ""
    lines = [
        "",
        f"## Pretrained encoders against the random-init control and the `{FLOOR}` floor (linear evaluation)",
        "",
        "Paired differences on the same eval clips (the controls' seeds pooled and resampled), with the "
        "verdict each interval supports.",
        "",
        f"| task / encoder | metric | encoder | - control (points) | verdict | - {FLOOR} (points) | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    below = []
    for k, c in checks.items():
        ctrl, floor = c.get("control"), c.get(FLOOR)
        own = (ctrl or floor)["a"]
        lines.append(
            f"| {k} | {c['metric']} | {_ci(_iv(own))} | "
            + (f"{_signed(_iv(ctrl['difference']))} | {ctrl['verdict']}" if ctrl else "- | -")
            + " | "
            + (f"{_signed(_iv(floor['difference']))} | {floor['verdict']}" if floor else "- | -")
            + " |"
        )
        if floor and floor["verdict"] == f"{FLOOR} higher":
            below.append(k)
    beaten = sum(1 for c in checks.values() if FLOOR in c and c[FLOOR]["verdict"] != f"{FLOOR} higher")
    with_floor = sum(1 for c in checks.values() if FLOOR in c)
    if with_floor:
        lines += [
            "",
            f"`{FLOOR}` is higher, beyond its interval, for {len(below)} of {with_floor} task / encoder pairs"
            + (f": {', '.join(below)}." if below else f"; not higher for {beaten}."),
        ]
    return "\n".join(lines) + "\n"


def _rows(evals: dict, tasks: list[str], encoders: list[str], metric_of, intervals: dict) -> list[str]:
    """One row per encoder and regime: the score, with its interval where the predictions were saved."""
    out = []
    for regime in ("linear", "finetune"):
        for e in encoders:
            vals = [evals.get((t, regime), {}).get("encoders", {}).get(e, {}).get(metric_of(t)) for t in tasks]
            ivs = [intervals.get((t, regime), {}).get(e) for t in tasks]
            if any(v is not None for v in vals):
                cells = [_ci(iv) if iv is not None else _pct(v) for v, iv in zip(vals, ivs)]
                out.append(f"| {e} | {regime} | " + " | ".join(cells) + " |")
    return out


def render_markdown(evals: dict, settings: dict, intervals: dict | None = None, level: float = 0.95) -> str:
    """Tables 1-3 in the paper's shapes; ``intervals``: (task, regime) -> encoder -> Interval."""
    intervals = intervals or {}
    lines = [
        "# Results",
        "",
        "Stage-2 settings of this run: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()),
        "",
    ]
    if intervals:
        lines += [
            f"Scores in % with their {100 * level:.0f}% bootstrap interval over the eval clips in brackets "
            '(README "What the intervals mean"). `random<N>`: untrained encoders (the control); '
            f"`{FLOOR}`: no network, the mean and standard deviation of the log-mel over the clip (the floor).",
            "",
        ]
    if settings.get("variant") == "none":  # the objective has no stage 2 (sslam.report.document.read_inputs)
        lines += [
            f"Pretraining objective `{settings.get('pretrain.objective')}` has no stage 2: every pretrained encoder "
            "below (`stage2` and the stage-2 runs) is the **stage-1 checkpoint**, passed through unchanged.",
            "",
        ]
    lines += [
        "Synthetic analogues of the paper's datasets (column headers say which; `real data` marks a dataset "
        "of `params.yaml datasets`); the paper's SSLAM numbers "
        "(ViT-B, AS-2M pretraining, real data) stand beside ours as context, not as a target.",
        "",
    ]
    protocols = sorted(
        {
            f"{r} `{d.get('recipe', {}).get('protocol', 'finetune' if r == 'finetune' else 'cached')}`"
            for (_, r), d in evals.items()
            if r == "linear"
        }
    )
    if protocols:
        lines += [
            "Linear-evaluation protocol of these numbers: "
            + ", ".join(protocols)
            + " (`cached`: frozen embeddings computed once, no input augmentation; `paper`: the paper's "
            "Table 8 protocol, encoder run on augmented inputs every step).",
            "",
        ]
    metric = {t: d["metric"] for (t, _), d in evals.items()}
    table1 = sorted(
        {t for t, m in metric.items() if m == "accuracy" or t in PAPER_TABLE1},
        key=lambda t: (metric[t] == "accuracy", t),
    )
    poly = sorted(
        {t for t, m in metric.items() if m == "map"}, key=lambda t: (t == "as20k", t == "urban", t == "desed", t)
    )
    encoders = sorted(
        {e for d in evals.values() for e in d["encoders"]}, key=lambda e: (e == FLOOR, e.startswith("random"), e)
    )
    real = {t for (t, _), d in evals.items() if str(d.get("data", "")).startswith("datasets/")}

    def name(t: str) -> str:  # a real dataset says so; a synthetic task names the dataset it imitates
        return f"{t} (real data)" if t in real else f"{t} ({ANALOGUE[t]})" if t in ANALOGUE else t

    lines += ["## Table 1 (shape): audio SSL benchmarks; mAP % (AS-20K) or accuracy %", ""]
    lines += ["| encoder | regime | " + " | ".join(name(t) for t in table1) + " |", "|" + " --- |" * (len(table1) + 2)]
    lines += _rows(evals, table1, encoders, lambda t: metric[t], intervals)
    lines.append(
        "| SSLAM, paper | finetune | "
        + " | ".join(str(PAPER_TABLE1[t][1]) if t in PAPER_TABLE1 else "-" for t in table1)
        + " |"
    )
    for t in table1:
        sel = {
            e: v["selection"]
            for (tt, r), d in evals.items()
            if tt == t
            for e, v in d["encoders"].items()
            if "selection" in v
        }
        if sel:
            lines.append(
                f"\n{t}: model selected on the validation split, test score reported; selected epochs "
                + ", ".join(f"{e} {v['selected_epoch']} (valid {100 * v['valid']:.1f})" for e, v in sel.items())
                + "."
            )

    lines += ["", "## Table 2 (shape): polyphonic tasks, mAP %", ""]
    lines += ["| encoder | regime | " + " | ".join(name(t) for t in poly) + " |", "|" + " --- |" * (len(poly) + 2)]
    lines += _rows(evals, poly, encoders, lambda t: "map", intervals)
    lines.append("| SSLAM, paper | linear | " + " | ".join(str(PAPER_LINEAR.get(t, "-")) for t in poly) + " |")
    lines.append("| SSLAM, paper | finetune | " + " | ".join(str(PAPER_FINETUNE.get(t, "-")) for t in poly) + " |")
    for t in poly:
        kept = next(
            (v for (tt, _), d in evals.items() if tt == t for v in d["encoders"].values() if "clips_kept" in v), None
        )
        if kept:
            lines.append(
                f"\n{t}: {kept['clips_kept']} clips kept, {kept['clips_dropped']} with fewer labels dropped "
                "(as the paper's URBAN-SED)."
            )
    lines += ["", "## Table 3 (shape): mAP % by degree of polyphony (distinct events per eval clip)", ""]
    bins = sorted(
        {b for d in evals.values() for v in d["encoders"].values() for b in v.get("polyphony", {})},
        key=lambda b: int(b.strip("{}").split(",")[0].rstrip("+")),
    )
    lines += ["| task | encoder | regime | " + " | ".join(bins) + " |", "|" + " --- |" * (len(bins) + 3)]
    for t in poly:
        for regime in ("linear", "finetune"):
            for e in encoders:
                pb = evals.get((t, regime), {}).get("encoders", {}).get(e, {}).get("polyphony")
                if pb:
                    lines.append(
                        f"| {t} | {e} | {regime} | "
                        + " | ".join(f"{100 * pb[b]['map']:.1f} ({pb[b]['clips']})" if b in pb else "-" for b in bins)
                        + " |"
                    )

    return "\n".join(lines) + "\n"


def render_pretrain(pretrain: dict[str, dict]) -> str:
    """Pretraining summary: loss first/last and the target diagnostics (does position alone explain the
    teacher's targets, and does the student beat a position-only predictor?)."""
    if not pretrain:
        return ""
    lines = [
        "",
        "## Pretraining",
        "",
        "Target diagnostics on 64 training clips (`pretrain/diagnostics.py`): the share of the reference "
        "(uncentred) target that the patch position alone explains, and the student's loss on the targets it "
        "was trained on beside a position-only predictor of those same targets.",
        "",
        "| run | objective | checkpoint | variant | seed | steps | loss first -> last | reference target explained "
        "by position | student loss | position-only loss (trained targets) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for stage, d in pretrain.items():
        diag = d.get("target_diagnostics") or {}
        share = f"{100 * diag['position_share']:.0f}%" if "position_share" in diag else "-"
        pos = diag.get("trained_position_only_loss", diag.get("position_only_loss", "-"))
        curve = d.get("loss_curve")
        loss = f"{curve['first']:.1f} -> {curve['last']:.1f}" if curve else "-"
        lines.append(
            f"| {stage} | {d.get('objective', 'bootstrap')} | {d.get('checkpoint', stage)} | {d.get('variant', '-')} | "
            f"{d.get('seed', '-')} | {d['steps']} | {loss} | {share} | {diag.get('student_loss', '-')} | {pos} |"
        )
    return "\n".join(lines) + "\n"


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def plot_loss_curves(live_dirs: dict[str, Path], path: Path) -> None:
    """Each stage's per-token loss curves (the dvclive folders of ``live_dirs``, by stage)."""
    stages = {s: curves_folder(d, s) for s, d in live_dirs.items() if curves_folder(d, s).is_dir()}
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(6 * max(1, len(stages)), 3.6), dpi=90, squeeze=False)
    for ax, (stage, d) in zip(axes[0], stages.items()):
        for name, curve in read_curves(d).items():
            if name.startswith(("local", "srl", "nce", "mse")):  # bootstrap / SSLAM; SSAST and MSM
                ax.plot(np.array(curve.steps), np.array(curve.values), label=name, lw=1.2)
        ax.set_title(f"{stage}: per-token losses" if ax.lines else f"{stage}: no training (passed through)")
        ax.set_xlabel("step")
        if ax.lines:
            ax.set_yscale("log")
            ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_polyphony(evals: dict, path: Path) -> None:
    items = [(t, r, d) for (t, r), d in evals.items() if d["metric"] == "map"]
    fig, axes = plt.subplots(1, max(1, len(items)), figsize=(4 * max(1, len(items)), 3.4), dpi=90, squeeze=False)
    for ax, (t, r, d) in zip(axes[0], sorted(items)):
        for e, v in d["encoders"].items():
            pb = v.get("polyphony", {})
            if pb:
                ax.plot(list(pb), [100 * x["map"] for x in pb.values()], marker="o", label=e)
        ax.set_title(f"{t} ({r})", fontsize=9)
        ax.set_xlabel("distinct events per clip")
        ax.set_ylabel("mAP %")
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_mixture(store, strategy: str, mixed_fraction: float, patch: int, path: Path, seed: int = 0) -> None:
    """Like the paper's Figure 5: two clips and their partial mixture (shaded: where the partner enters)."""
    from sslam.pretrain.mixing import frames_mask, mix_spectrograms, mixed_time_patches

    x = store.batch([1, 0])  # clip 1's partner is clip 0 (roll by one)
    g = torch.Generator().manual_seed(seed)
    m = mixed_time_patches(2, x.shape[1] // patch, True, "reference", mixed_fraction, g)
    fm = frames_mask(m, patch, x.shape[1])
    mixed = mix_spectrograms(x, fm, strategy if strategy != "waveform" else "average")
    fig, axes = plt.subplots(3, 1, figsize=(8, 6), dpi=90, sharex=True)
    for ax, img, title in zip(
        axes, [x[0], x[1], mixed[0]], ["clip A", "clip B (partner)", f"A mixed with B ({strategy})"]
    ):
        ax.imshow(img.numpy().T, origin="lower", aspect="auto", cmap="magma")
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("mel bin")
    on = fm[0].numpy()
    edges = np.flatnonzero(np.diff(np.r_[0, on.astype(int), 0]))
    for a, b in zip(edges[::2], edges[1::2]):
        axes[2].axvspan(a, b, color="cyan", alpha=0.15)
    axes[2].set_xlabel("frame")
    fig.tight_layout()
    _save(fig, path)
