"""The evaluation sections: the fine-tuning and linear recipes (``finetune``, ``linear_eval``), the
downstream tasks (``tasks``), real datasets (``datasets``), outside checkpoints (``imports``) and which
encoders each regime scores (``evaluate``)."""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from sslam.config.base import FloatPair, Name, NonNegative, Positive, Prob, Section, overrides_of


class FinetuneConfig(Section):
    """The fine-tuning recipe (paper Tables 7 and 8); ``tasks.<name>.recipe`` overrides any key per task.

    ``decay_norm_and_bias: false`` exempts biases and norm weights
    (1-D parameters) from weight decay; ``bce_reduction: per_positive`` is the reference's AudioSet loss
    (BCE summed over the batch / the number of positive labels); ``mixup_lambda: per_batch`` draws one
    lambda per batch as the reference; ``roll_gain`` multiplies the clip by Beta(10, 10) + 0.5 and
    ``roll_domain: waveform`` rolls the stored waveform and recomputes the log-mel (the reference).
    """

    epochs: Positive
    batch_size: Positive
    lr: Annotated[float, Field(gt=0.0)]
    min_lr: Annotated[float, Field(ge=0.0)]  # every group's floor is its layer-decay scale x min_lr
    warmup_share: Annotated[float, Field(ge=0.0, lt=1.0)]  # of the steps; linear warm-up, then cosine
    optimizer: Literal["adamw"]
    betas: FloatPair
    weight_decay: Annotated[float, Field(ge=0.0)]
    decay_norm_and_bias: bool  # false: no weight decay on biases and norm weights (the paper recipe)
    layer_decay: Annotated[float, Field(gt=0.0, le=1.0)]
    drop_path: Prob
    mixup: bool
    mixup_alpha: Annotated[float, Field(ge=0.0)]
    mixup_prob: Prob
    mixup_lambda: Literal["per_clip", "per_batch"]  # per_batch: one lambda per batch (reference)
    specaug_freq: Prob
    specaug_time: Prob
    roll: bool
    roll_gain: bool  # gain Beta(10, 10) + 0.5 with the roll (reference)
    roll_domain: Literal["logmel", "waveform"]  # waveform: the reference (features.store_waveforms)
    noise_std: Annotated[float, Field(ge=0.0)]  # Gaussian noise on the normalised log-mel
    bce_reduction: Literal["mean", "per_positive"]  # multi-label loss; per_positive: the reference (AudioSet)
    weighted_sampling: bool  # class-balanced sampling with replacement (AS-2M recipe)
    norm_stats: Literal["pretrain", "task"]  # normalise with pretraining's or the task's train stats
    select_every: Positive  # epochs between validation checks (train_valid_test tasks)
    pooling: Literal["cls", "mean", "freq_mean"]


class LinearEvalConfig(Section):
    """The linear-evaluation recipe (paper Table 8: AdamW, cosine, warm-up); per task: ``tasks.<name>.linear``.

    ``protocol``: ``cached`` embeds every clip once (exact only without
    input augmentation, so mixup, SpecAugment and roll must be off) and trains the head on the cached
    embeddings; ``paper`` runs the frozen encoder on every step's augmented batch (the reference: mixup
    and SpecAugment stay on), through the fine-tuning loop with the encoder frozen.
    """

    protocol: Literal["cached", "paper"]
    epochs: Positive
    batch_size: Positive
    lr: Annotated[float, Field(gt=0.0)]
    min_lr: Annotated[float, Field(ge=0.0)]
    schedule: Literal["cosine", "constant"]  # cosine: linear warm-up, then cosine to min_lr
    warmup_epochs: NonNegative
    betas: FloatPair
    weight_decay: Annotated[float, Field(ge=0.0)]
    norm_stats: Literal["pretrain", "task"]
    select_every: Positive  # epochs between validation checks (train_valid_test tasks)
    pooling: Literal["cls", "mean", "freq_mean"]
    mixup: bool  # the augmentation keys act under protocol: paper only
    mixup_alpha: Annotated[float, Field(ge=0.0)]
    mixup_prob: Prob
    mixup_lambda: Literal["per_clip", "per_batch"]
    specaug_freq: Prob
    specaug_time: Prob
    roll: bool
    roll_gain: bool
    roll_domain: Literal["logmel", "waveform"]

    @property
    def augmented(self) -> bool:
        """Whether the recipe changes the input from one epoch to the next (then nothing can be cached)."""
        return self.mixup or self.specaug_freq > 0 or self.specaug_time > 0 or self.roll

    @model_validator(mode="after")
    def _check_protocol(self) -> LinearEvalConfig:
        if self.protocol == "cached" and self.augmented:
            raise ValueError(
                "protocol 'cached' computes each embedding once, so it cannot augment the input: "
                "set mixup: false, specaug_freq: 0, specaug_time: 0, roll: false, or protocol: paper"
            )
        return self


FinetuneOverrides = overrides_of(FinetuneConfig, "FinetuneOverrides")
LinearEvalOverrides = overrides_of(LinearEvalConfig, "LinearEvalOverrides")
TaskKind = Literal["single_label", "multi_label"]
Protocol = Literal["cross_validation", "train_eval", "train_valid_test"]
Metric = Literal["map", "accuracy"]


def metric_of(kind: str) -> str:
    """The score a task kind is reported with: accuracy (one class per clip) or mAP (multi-label)."""
    return "map" if kind == "multi_label" else "accuracy"


class _TaskRecipe(Section):
    """What every downstream task has, synthetic or real: which clips count and the evaluation recipes."""

    kind: TaskKind | None = None  # None (a dataset): the layout's
    metric: Metric | None = None
    protocol: Protocol | None = None
    min_labels: Positive = 1  # keep clips with at least this many of the task's labels (URBAN-SED: 2)
    recipe: FinetuneOverrides = FinetuneOverrides()  # type: ignore[valid-type]
    linear: LinearEvalOverrides = LinearEvalOverrides()  # type: ignore[valid-type]

    @property
    def reads_audioset(self) -> bool:
        """Train on labelled AudioSet splits, score on eval (``data: audioset``)."""
        return False

    @model_validator(mode="after")
    def _check_metric(self) -> _TaskRecipe:
        if self.kind is not None and self.metric is not None and self.metric != metric_of(self.kind):
            raise ValueError(f"metric {self.metric!r} does not fit kind {self.kind!r} (use {metric_of(self.kind)!r})")
        return self


class TaskConfig(_TaskRecipe):
    """A downstream task of the corpus: its data, kind, metric, protocol and recipe.

    ``data``: ``tasks/<name>`` of the corpus (empty: ``tasks/<key>``), or ``audioset`` (train on the
    labelled ``balanced`` split, evaluate on ``eval``: AS-20K; with ``unbalanced`` added: AS-2M).
    ``kind`` and ``protocol`` must agree with the corpus's ``task.json``, checked before any work.
    """

    data: str = ""
    kind: TaskKind = "multi_label"
    metric: Metric = "map"
    protocol: Protocol = "train_eval"
    train_splits: list[Name] = ["balanced"]  # data: audioset only
    strong_labels: str = ""  # data: audioset only: audioset_eval_strong.tsv for the polyphony breakdown

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        if self.data and not (self.data == "audioset" or re.fullmatch(r"tasks/[a-z][a-z0-9_]*", self.data)):
            raise ValueError(f"data must be 'tasks/<name>' or 'audioset', got {self.data!r}")
        if self.strong_labels and self.data != "audioset":
            raise ValueError("strong_labels is for data: audioset (a corpus task brings its own strong.tsv)")
        return self

    @property
    def reads_audioset(self) -> bool:
        return self.data == "audioset"

    def feature_set(self, key: str) -> str:
        return self.data or f"tasks/{key}"


DatasetFormat = Name  # a layout module of src/sslam/data/layouts (its file name); checked against the registry


class DatasetConfig(_TaskRecipe):
    """A downstream task on a real dataset in its published layout (``data/layouts/``, one module per
    format; docs/data.md): the ``dataset@<name>`` stage lists, converts (mono FLAC at the corpus
    rate) and caches it as its own one-task corpus in ``data/datasets/<name>``. ``kind``, ``protocol``
    and ``metric`` follow the format (HEAR: its ``task_metadata.json``); set them only to assert what you
    expect. A format's own keys (SPASS: ``environment``) sit beside these, checked by its layout's
    options model and passed to its listing as :attr:`options`."""

    model_config = ConfigDict(extra="allow")  # the format's own keys: checked in _check, never kept unchecked

    format: DatasetFormat
    root: Annotated[str, Field(min_length=1)]  # the unpacked dataset folder, exactly as published
    target_frames: Positive = 1024  # ESC-50 (5 s): 512; keywords (1 s): 128; 10 s soundscapes: 1024
    norm_mean: float | None = None  # null: computed over the task's training clips (valid frames)
    norm_std: Annotated[float, Field(gt=0.0)] | None = None
    max_seconds: Annotated[float, Field(gt=0.0)] = 30.0  # longer clips are cut (FSD50K reaches 30 s)
    silence_dbfs: Annotated[float, Field(le=0.0)] = -70.0  # a clip whose peak is below this is "silent"
    _options: Section | None = PrivateAttr(default=None)

    @property
    def options(self) -> Section | None:
        """The format's own keys, validated by its layout's options model (None: it has none)."""
        return self._options

    @field_validator("format")
    @classmethod
    def _registered(cls, name: str) -> str:
        from sslam.data.layouts import get_layout  # the light registry; imports the one layout module asked for

        get_layout(name)  # an UnknownLayoutError (a ValueError) lists the registered formats
        return name

    @model_validator(mode="after")
    def _check(self) -> DatasetConfig:
        from sslam.data.layouts import get_layout

        if (self.norm_mean is None) != (self.norm_std is None):
            raise ValueError("norm_mean and norm_std must both be set (pinned) or both be null (computed)")
        layout = get_layout(self.format)
        declared = {"kind": layout.kind, "protocol": layout.protocol, "metric": layout.kind and metric_of(layout.kind)}
        for key, value in declared.items():
            if value is not None and getattr(self, key) not in (None, value):
                raise ValueError(
                    f"{key} {getattr(self, key)!r} does not fit format {self.format} (its {key}: {value!r})"
                )
        extra = dict(self.model_extra or {})
        unknown = sorted(k for k in extra if k not in layout.option_names)
        if unknown:
            raise ValueError(
                f"unknown key(s) {unknown} (misspelt?): a dataset entry takes {sorted(type(self).model_fields)}; "
                f"format {self.format} adds {list(layout.option_names) or 'none'}"
            )
        if layout.options is not None:
            try:
                self._options = layout.options.model_validate(extra)
            except ValidationError as err:
                raise ValueError(
                    "; ".join(_option_problem(self.format, layout.options, e) for e in err.errors())
                ) from None
        return self

    def feature_set(self, key: str) -> str:
        """A dataset's own corpus holds one task, under the dataset's name."""
        return f"tasks/{key}"


def _option_problem(fmt: str, model: type[Section], error: dict) -> str:
    """One failed check of a format's own key, in the words of the params file."""
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "missing":
        choices = get_args(model.model_fields[key].annotation) if key in model.model_fields else ()
        allowed = f", one of {list(choices)}" if choices and all(isinstance(c, str) for c in choices) else ""
        return f"format {fmt} needs {key}{allowed}"
    return f"{key}: {error['msg']} (got {error['input']!r})"


EncoderName = Annotated[
    str, Field(pattern=r"^([a-z][a-z0-9_]*|file:.+)$")
]  # stage1 | stage2 | random<N> | fbank_stats | run | import
# (file:<path> only to be told how to import it)


class ImportConfig(Section):
    """A checkpoint from outside (the released EAT / SSLAM weights, hub folder or fairseq ``.pt``, or an
    export of this project), converted by the ``import_weights@<name>`` stage into
    ``checkpoints/<name>/final``: then an encoder named ``<name>`` like any other
    (docs/interop.md). The input settings are the checkpoint's own (the released weights': 16 kHz
    Kaldi fbank, 128 bins, 1024 frames, AudioSet statistics); set one here only to replace it."""

    path: Annotated[str, Field(min_length=1)]  # the downloaded folder (config.json + model.safetensors) or .pt
    weights: Literal["student", "teacher"] = "student"  # teacher: a fairseq .pt's EMA copy (_ema)
    num_heads: Positive | None = None  # null: the checkpoint's config (a fairseq .pt may lack it)
    num_mel_bins: Positive | None = None
    target_frames: Positive | None = None  # the embedding API's window; evaluation follows the task's length
    norm_mean: float | None = None
    norm_std: Annotated[float, Field(gt=0.0)] | None = None

    def overrides(self) -> dict:
        """The input settings set here, replacing the checkpoint's own."""
        return self.model_dump(include={"num_mel_bins", "target_frames", "norm_mean", "norm_std"}, exclude_none=True)


class EvaluateConfig(Section):
    linear_encoders: Annotated[list[EncoderName], Field(min_length=1)]
    finetune_encoders: Annotated[list[EncoderName], Field(min_length=1)]
    finetune_tasks: list[Name]
    finetune_datasets: list[Name]  # keys of datasets to fine-tune on as well
    seed: NonNegative
