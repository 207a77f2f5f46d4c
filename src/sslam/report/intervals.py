"""The report's statistics: a 95% interval for every score and paired comparisons that decide a verdict.

Each evaluation stage saves every encoder's per-clip test scores (``data/eval/<task>_<regime>.npz``);
here they are resampled (:mod:`sslam.downstream.bootstrap`):

- :func:`encoder_intervals`: each encoder's score on a task, clips resampled;
- :func:`compare`: group A minus group B on the same resampled clips (a group is one encoder, or the
  seeds of one method: SSLAM's two stage-2 runs, the random-init controls), seeds resampled within each
  group; the verdict names the higher one only when the interval excludes 0.

The comparisons the report makes: SSLAM vs MB-UA (per task, and per target-to-masker ratio on the
masker task), and each pretrained encoder vs the random-init controls and vs the ``fbank_stats`` floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslam.downstream.bootstrap import Interval, paired_difference, score_interval, verdict
from sslam.downstream.metrics import sorted_conditions

FLOOR = "fbank_stats"
SCORE_PREFIX = "scores_"


@dataclass(frozen=True)
class Predictions:
    """One evaluation's per-clip test scores: the same clips for every encoder."""

    metric: str  # accuracy | map
    clip_id: np.ndarray
    targets: np.ndarray
    scores: dict[str, np.ndarray]  # by encoder
    condition: np.ndarray | None = None  # per clip (the masker task's ratio), or None

    def subset(self, condition: str) -> Predictions:
        sel = self.condition == condition
        return Predictions(
            self.metric, self.clip_id[sel], self.targets[sel], {e: s[sel] for e, s in self.scores.items()}
        )


@dataclass(frozen=True)
class Settings:
    """How the report resamples: replicates, interval level, the generator's seed."""

    samples: int = 1000
    level: float = 0.95
    seed: int = 0
    method: str = "bayesian"  # bayesian | bc | percentile (``report.interval``)

    @property
    def how(self) -> tuple[str, str]:
        """(interval, resampling) of a score's interval: ``bayesian`` is Dirichlet clip weights with
        percentile quantiles; ``bc`` and ``percentile`` draw the clips with replacement."""
        return ("percentile", "bayesian") if self.method == "bayesian" else (self.method, "multinomial")

    @property
    def how_paired(self) -> tuple[str, str]:
        """(interval, resampling) of a paired difference: always clips drawn with replacement. A verdict
        may rest on a handful of clips the two encoders disagree on; a resample can miss them all (the
        difference is then 0), which Dirichlet weights never do, so with two such clips they would call
        a difference the data cannot support (an exact sign test on 2 of 2 gives p = 0.5). The class
        drops that bias a small-task mAP hit both sides of the difference alike."""
        return ("percentile" if self.method == "bayesian" else self.method, "multinomial")


def load_predictions(folder: str | Path, evals: dict[tuple[str, str], dict]) -> dict[tuple[str, str], Predictions]:
    """The saved predictions of each (task, regime) of ``evals`` (its metrics file gives the metric);
    an evaluation without its file is left out."""
    out = {}
    for (task, regime), d in evals.items():
        path = Path(folder) / f"{task}_{regime}.npz"
        if not path.is_file():
            continue
        with np.load(path) as z:
            scores = {k[len(SCORE_PREFIX) :]: z[k] for k in z.files if k.startswith(SCORE_PREFIX)}
            condition = z["condition"] if "condition" in z.files else None
            out[(task, regime)] = Predictions(d["metric"], z["clip_id"], z["targets"], scores, condition)
    return out


def encoder_intervals(p: Predictions, s: Settings) -> dict[str, Interval]:
    """Each encoder's score with its interval (clips resampled)."""
    return {
        e: score_interval(p.metric, p.targets, [x], s.samples, s.level, s.seed, *s.how) for e, x in p.scores.items()
    }


@dataclass(frozen=True)
class Comparison:
    a: Interval  # group A's score (the mean over its seeds)
    b: Interval
    difference: Interval  # A - B on the same clips
    verdict: str

    def to_json(self) -> dict:
        return {
            "a": self.a.to_json(),
            "b": self.b.to_json(),
            "difference": self.difference.to_json(),
            "verdict": self.verdict,
        }


def compare(p: Predictions, a: list[str], b: list[str], names: tuple[str, str], s: Settings) -> Comparison | None:
    """Group ``a`` minus group ``b`` (encoder names; several: seeds of one method); None when either
    group has no scores here."""
    xa, xb = [p.scores[e] for e in a if e in p.scores], [p.scores[e] for e in b if e in p.scores]
    if not xa or not xb:
        return None
    diff = paired_difference(p.metric, p.targets, xa, xb, s.samples, s.level, s.seed, *s.how_paired)
    return Comparison(
        score_interval(p.metric, p.targets, xa, s.samples, s.level, s.seed, *s.how),
        score_interval(p.metric, p.targets, xb, s.samples, s.level, s.seed, *s.how),
        diff,
        verdict(diff, *names),
    )


def controls(p: Predictions) -> list[str]:
    """The random-init controls (``random<N>``) of an evaluation."""
    return sorted(e for e in p.scores if e.startswith("random"))


def pretrained(p: Predictions) -> list[str]:
    """The encoders that learned something: neither a control nor the floor."""
    return [e for e in p.scores if not e.startswith("random") and e != FLOOR]


def floor_checks(p: Predictions, s: Settings) -> dict[str, dict[str, Comparison]]:
    """Each pretrained encoder against the random-init controls (their seeds pooled) and the floor."""
    out = {}
    for e in pretrained(p):
        row = {}
        vs_control = compare(p, [e], controls(p), (e, "control"), s)
        if vs_control:
            row["control"] = vs_control
        vs_floor = compare(p, [e], [FLOOR], (e, FLOOR), s)
        if vs_floor:
            row[FLOOR] = vs_floor
        if row:
            out[e] = row
    return out


def method_groups(runs: dict[str, tuple[str, int]], a: str, b: str) -> tuple[list[str], list[str]]:
    """The encoders (stage-2 runs) of variant ``a`` and of ``b``; ``runs``: name -> (variant, seed)."""
    return [e for e, (v, _) in runs.items() if v == a], [e for e, (v, _) in runs.items() if v == b]


def conditions(p: Predictions) -> list[str]:
    """The evaluation's conditions (numeric ones in numeric order); none without."""
    return [] if p.condition is None else sorted_conditions(p.condition)
