"""The data sections: where the corpus lives (``data``), how the download stage builds it
(``download``: synthetic, folder or AudioSet) and the label polyphony analysis (``ontology``)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from sslam.config.base import FloatPair, Name, NonNegative, Pair, Positive, Prob, Section, check_range


def _check_events(pair: list[int]) -> None:
    check_range("events_per_clip", pair)
    if pair[0] < 1:
        raise ValueError("events_per_clip must start at 1 or more")


class DataConfig(Section):
    sample_rate: Positive
    corpus_dir: str


class SplitSizes(Section):
    unbalanced: NonNegative
    balanced: NonNegative
    eval: NonNegative


class MonoTaskConfig(Section):
    num_classes: Annotated[int, Field(ge=2)]
    clips_per_class_per_fold: Positive


class SoundscapeConfig(Section):
    """Sizes and polyphony of a soundscape task: ``train`` and ``eval`` clips, events per clip."""

    clips_train: Positive
    clips_eval: Positive
    events_per_clip: Pair

    @model_validator(mode="after")
    def _check_events(self) -> SoundscapeConfig:
        _check_events(self.events_per_clip)
        return self


class PolyTaskConfig(SoundscapeConfig):
    environments: Annotated[list[Name], Field(min_length=1)]

    @model_validator(mode="after")
    def _check(self) -> PolyTaskConfig:
        if len(set(self.environments)) != len(self.environments):
            raise ValueError(f"environments must be unique, got {self.environments}")
        if "mono" in self.environments:
            raise ValueError("'mono' is the monophonic task's name; pick another environment name")
        return self


class KeywordsTaskConfig(Section):
    """Keyword-spotting analogue (Speech Commands): one short event per clip in background noise,
    train / valid / test splits; the protocol selects on valid and reports test accuracy."""

    num_classes: Annotated[int, Field(ge=2)]
    clips_per_class: Annotated[dict[Literal["train", "valid", "test"], Positive], Field(min_length=3)]
    event_seconds: FloatPair

    @model_validator(mode="after")
    def _check(self) -> KeywordsTaskConfig:
        check_range("event_seconds", self.event_seconds)
        if self.event_seconds[0] <= 0:
            raise ValueError(f"event_seconds must be positive, got {self.event_seconds}")
        return self


class UrbanTaskConfig(SoundscapeConfig):
    """URBAN-SED analogue: street soundscapes where some clips hold a single class; the task keeps
    only clips with more than one label (``tasks.urban.min_labels: 2``), as the paper's protocol."""


class DesedTaskConfig(SoundscapeConfig):
    """IDMT-DESED-FL analogue: Scaper-style soundscapes over a small class set of their own (DESED's
    10 domestic classes), every clip polyphonic or not as drawn; mAP on ``eval``."""

    num_classes: Annotated[int, Field(ge=2)]


class MaskedTaskConfig(Section):
    """SSLAM's mechanism on a task made for it: a target event under a louder masker that overlaps it in
    time and frequency, at set target-to-masker ratios (RMS over each event's span), labelled by the
    target only; accuracy per ratio on ``eval``."""

    clips_per_class_per_ratio: Annotated[dict[Literal["train", "eval"], Positive], Field(min_length=2)]
    tmr_db: Annotated[list[Annotated[float, Field(ge=-60.0, le=30.0)]], Field(min_length=1)]
    target_seconds: FloatPair

    @model_validator(mode="after")
    def _check(self) -> MaskedTaskConfig:
        check_range("target_seconds", self.target_seconds)
        if len(set(self.tmr_db)) != len(self.tmr_db):
            raise ValueError(f"tmr_db must be distinct ratios, got {self.tmr_db}")
        return self


class SyntheticTasksConfig(Section):
    mono: MonoTaskConfig
    keywords: KeywordsTaskConfig
    poly: PolyTaskConfig
    urban: UrbanTaskConfig
    desed: DesedTaskConfig
    masked: MaskedTaskConfig

    @model_validator(mode="after")
    def _check(self) -> SyntheticTasksConfig:
        taken = {"mono", "keywords", "urban", "desed", "masked"} & set(self.poly.environments)
        if taken:
            raise ValueError(f"poly.environments {sorted(taken)} clash with the names of other synthetic tasks")
        return self


class SyntheticConfig(Section):
    seed: NonNegative
    num_classes: Annotated[int, Field(ge=8, le=40)]
    clip_seconds: Annotated[float, Field(gt=0.5, le=60.0)]
    clips: SplitSizes
    events_per_clip: Pair
    ancestor_label_prob: Prob
    background_db: Annotated[float, Field(le=0.0)]
    tasks: SyntheticTasksConfig

    @model_validator(mode="after")
    def _check(self) -> SyntheticConfig:
        _check_events(self.events_per_clip)
        for name in ("mono", "keywords", "desed"):
            k = getattr(self.tasks, name).num_classes
            if k > self.num_classes:
                raise ValueError(f"tasks.{name}.num_classes ({k}) exceeds num_classes ({self.num_classes})")
        return self


class FolderConfig(Section):
    audio_dir: str
    labels_csv: str
    ontology_json: str
    max_seconds: Annotated[float, Field(gt=0.0)]
    silence_dbfs: Annotated[float, Field(le=0.0)]


class AudiosetUrls(Section):
    ontology: str
    class_labels: str
    balanced: str
    eval: str
    unbalanced: str


class AudiosetConfig(Section):
    splits: Annotated[list[Literal["unbalanced", "balanced", "eval"]], Field(min_length=1)]
    metadata_dir: str  # a folder holding the label files; empty: fetch them from `urls`
    urls: AudiosetUrls
    url_template: str
    format: str
    workers: Annotated[int, Field(ge=1, le=256)]
    retries: NonNegative
    backoff_base_s: Annotated[float, Field(ge=0.0)]
    backoff_max_s: Annotated[float, Field(ge=0.0)]
    rate_limit_per_s: Annotated[float, Field(ge=0.0)]  # request starts per second; 0 = unlimited
    socket_timeout_s: Annotated[float, Field(gt=0.0)]
    cookies: str
    proxy: str
    max_segments: NonNegative  # per split; 0 = all (a small number for a trial run)

    @model_validator(mode="after")
    def _check(self) -> AudiosetConfig:
        if "{ytid}" not in self.url_template or not re.match(r"^https?://", self.url_template):
            raise ValueError(f"url_template must be an http(s) URL containing {{ytid}}, got {self.url_template!r}")
        try:
            self.url_template.format(ytid="x")
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"url_template may hold only the {{ytid}} field, got {self.url_template!r}") from None
        if len(set(self.splits)) != len(self.splits):
            raise ValueError(f"splits must be unique, got {self.splits}")
        return self


class DownloadConfig(Section):
    source: Literal["synthetic", "folder", "audioset"]
    clips_per_shard: Annotated[int, Field(ge=1)]
    synthetic: SyntheticConfig
    folder: FolderConfig
    audioset: AudiosetConfig

    @model_validator(mode="after")
    def _check(self) -> DownloadConfig:
        if self.source == "folder":
            missing = [k for k in ("audio_dir", "labels_csv") if not getattr(self.folder, k)]
            if missing:
                raise ValueError(f"source 'folder' needs folder.{' and folder.'.join(missing)} set")
        return self


class OntologyConfig(Section):
    """Polyphony analysis of the labels (paper Appendix B.1, Algorithm 2)."""

    levels: Annotated[list[Annotated[int, Field(ge=1, le=10)]], Field(min_length=1)]
    # drop_both_concrete: the reading that reproduces the paper's Figure 3 on the full AS-2M label set
    rule: Literal["components", "drop_both", "keep_general", "keep_specific", "drop_both_concrete"]

    @model_validator(mode="after")
    def _check(self) -> OntologyConfig:
        if sorted(set(self.levels)) != self.levels:
            raise ValueError(f"levels must be increasing and unique, got {self.levels}")
        return self


class DataParams(Section):
    """What the ``overview`` stage reads."""

    data: DataConfig


class DownloadParams(DataParams):
    """What the ``download`` stage reads."""

    download: DownloadConfig


class OntologyParams(DataParams):
    """What the ``ontology`` stage reads."""

    ontology: OntologyConfig
