"""The typed, validated view of ``params.yaml``: the only module that knows key names.

Every stage calls :func:`load_config` first, so an unknown key, a wrong type or an out-of-range
value stops the run before any expensive work, with a message naming the key and what is allowed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

PARAMS_FILE = "params.yaml"

Pair = Annotated[list[int], Field(min_length=2, max_length=2)]
FloatPair = Annotated[list[float], Field(min_length=2, max_length=2)]
Prob = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[int, Field(ge=0)]
BUILTIN_ENCODERS = r"random\d+|stage[12]|fbank_stats"  # encoder names no run or import may take
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]


def as_patch(patch: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """A patch size as (time frames, mel bins): n means n x n."""
    return (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))


DATASETS_DIR = "data/datasets"  # the dataset@<name> stages' outputs: data/datasets/<name>/


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file, the key and what is allowed."""


class Section(BaseModel):
    # strict: "3" is not 3 and 1 is not True; forbid: a misspelt key is an error, not a silent default
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _check_range(name: str, pair: list[int] | list[float]) -> None:
    if pair[0] > pair[1]:
        raise ValueError(f"{name} must be [low, high] with low <= high, got {pair}")


def _check_events(pair: list[int]) -> None:
    _check_range("events_per_clip", pair)
    if pair[0] < 1:
        raise ValueError("events_per_clip must start at 1 or more")


# ----------------------------------------------------------------------------- data / download


class DataConfig(Section):
    sample_rate: Positive = 16000
    corpus_dir: str = "data/corpus"


class SplitSizes(Section):
    unbalanced: NonNegative = 480
    balanced: NonNegative = 160
    eval: NonNegative = 160


class MonoTaskConfig(Section):
    num_classes: Annotated[int, Field(ge=2)] = 10
    clips_per_class_per_fold: Positive = 4


class SoundscapeConfig(Section):
    """Sizes and polyphony of a soundscape task: ``train`` and ``eval`` clips, events per clip."""

    clips_train: Positive = 60
    clips_eval: Positive = 40
    events_per_clip: Pair = [2, 8]

    @model_validator(mode="after")
    def _check_events(self) -> SoundscapeConfig:
        _check_events(self.events_per_clip)
        return self


class PolyTaskConfig(SoundscapeConfig):
    environments: Annotated[list[Name], Field(min_length=1)] = ["square", "park", "street"]

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

    num_classes: Annotated[int, Field(ge=2)] = 8
    clips_per_class: Annotated[dict[Literal["train", "valid", "test"], Positive], Field(min_length=3)] = {
        "train": 12,
        "valid": 4,
        "test": 6,
    }
    event_seconds: FloatPair = [0.25, 0.6]

    @model_validator(mode="after")
    def _check(self) -> KeywordsTaskConfig:
        _check_range("event_seconds", self.event_seconds)
        if self.event_seconds[0] <= 0:
            raise ValueError(f"event_seconds must be positive, got {self.event_seconds}")
        return self


class UrbanTaskConfig(SoundscapeConfig):
    """URBAN-SED analogue: street soundscapes where some clips hold a single class; the task keeps
    only clips with more than one label (``tasks.urban.min_labels: 2``), as the paper's protocol."""

    events_per_clip: Pair = [1, 4]


class DesedTaskConfig(SoundscapeConfig):
    """IDMT-DESED-FL analogue: Scaper-style soundscapes over a small class set of their own (DESED's
    10 domestic classes), every clip polyphonic or not as drawn; mAP on ``eval``."""

    num_classes: Annotated[int, Field(ge=2)] = 10
    events_per_clip: Pair = [1, 5]


class MaskedTaskConfig(Section):
    """SSLAM's mechanism on a task made for it: a target event under a louder masker that overlaps it in
    time and frequency, at set target-to-masker ratios (RMS over each event's span), labelled by the
    target only; accuracy per ratio on ``eval``."""

    clips_per_class_per_ratio: Annotated[dict[Literal["train", "eval"], Positive], Field(min_length=2)] = {
        "train": 4,
        "eval": 6,
    }
    tmr_db: Annotated[list[Annotated[float, Field(ge=-60.0, le=30.0)]], Field(min_length=1)] = [-20.0, -10.0, 0.0]
    target_seconds: FloatPair = [0.5, 1.5]

    @model_validator(mode="after")
    def _check(self) -> MaskedTaskConfig:
        _check_range("target_seconds", self.target_seconds)
        if len(set(self.tmr_db)) != len(self.tmr_db):
            raise ValueError(f"tmr_db must be distinct ratios, got {self.tmr_db}")
        return self


class SyntheticTasksConfig(Section):
    mono: MonoTaskConfig = MonoTaskConfig()
    keywords: KeywordsTaskConfig = KeywordsTaskConfig()
    poly: PolyTaskConfig = PolyTaskConfig()
    urban: UrbanTaskConfig = UrbanTaskConfig()
    desed: DesedTaskConfig = DesedTaskConfig()
    masked: MaskedTaskConfig = MaskedTaskConfig()

    @model_validator(mode="after")
    def _check(self) -> SyntheticTasksConfig:
        taken = {"mono", "keywords", "urban", "desed", "masked"} & set(self.poly.environments)
        if taken:
            raise ValueError(f"poly.environments {sorted(taken)} clash with the names of other synthetic tasks")
        return self


class SyntheticConfig(Section):
    seed: NonNegative = 20250612
    num_classes: Annotated[int, Field(ge=8, le=40)] = 24
    clip_seconds: Annotated[float, Field(gt=0.5, le=60.0)] = 3.0
    clips: SplitSizes = SplitSizes()
    events_per_clip: Pair = [1, 5]
    ancestor_label_prob: Prob = 0.5
    background_db: Annotated[float, Field(le=0.0)] = -45.0
    tasks: SyntheticTasksConfig = SyntheticTasksConfig()

    @model_validator(mode="after")
    def _check(self) -> SyntheticConfig:
        _check_events(self.events_per_clip)
        for name in ("mono", "keywords", "desed"):
            k = getattr(self.tasks, name).num_classes
            if k > self.num_classes:
                raise ValueError(f"tasks.{name}.num_classes ({k}) exceeds num_classes ({self.num_classes})")
        return self


class FolderConfig(Section):
    audio_dir: str = ""
    labels_csv: str = ""
    ontology_json: str = ""
    max_seconds: Annotated[float, Field(gt=0.0)] = 30.0
    silence_dbfs: Annotated[float, Field(le=0.0)] = -70.0


class AudiosetUrls(Section):
    ontology: str = "https://raw.githubusercontent.com/audioset/ontology/master/ontology.json"
    class_labels: str = "http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/class_labels_indices.csv"
    balanced: str = "http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/balanced_train_segments.csv"
    eval: str = "http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/eval_segments.csv"
    unbalanced: str = "http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/unbalanced_train_segments.csv"


class AudiosetConfig(Section):
    splits: Annotated[list[Literal["unbalanced", "balanced", "eval"]], Field(min_length=1)] = ["balanced", "eval"]
    metadata_dir: str = ""  # a folder holding the label files; empty: fetch them from `urls`
    urls: AudiosetUrls = AudiosetUrls()
    url_template: str = "https://www.youtube.com/watch?v={ytid}"
    format: str = "bestaudio/best"
    workers: Annotated[int, Field(ge=1, le=256)] = 8
    retries: NonNegative = 5
    backoff_base_s: Annotated[float, Field(ge=0.0)] = 2.0
    backoff_max_s: Annotated[float, Field(ge=0.0)] = 300.0
    rate_limit_per_s: Annotated[float, Field(ge=0.0)] = 2.0  # request starts per second; 0 = unlimited
    socket_timeout_s: Annotated[float, Field(gt=0.0)] = 30.0
    cookies: str = ""
    proxy: str = ""
    max_segments: NonNegative = 0  # per split; 0 = all (a small number for a trial run)

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
    source: Literal["synthetic", "folder", "audioset"] = "synthetic"
    synthetic: SyntheticConfig = SyntheticConfig()
    folder: FolderConfig = FolderConfig()
    audioset: AudiosetConfig = AudiosetConfig()

    @model_validator(mode="after")
    def _check(self) -> DownloadConfig:
        if self.source == "folder":
            missing = [k for k in ("audio_dir", "labels_csv") if not getattr(self.folder, k)]
            if missing:
                raise ValueError(f"source 'folder' needs folder.{' and folder.'.join(missing)} set")
        return self


class OntologyConfig(Section):
    """Polyphony analysis of the labels (paper Appendix B.1, Algorithm 2)."""

    levels: Annotated[list[Annotated[int, Field(ge=1, le=10)]], Field(min_length=1)] = [1, 2, 3, 4]
    # drop_both_concrete: the reading that reproduces the paper's Figure 3 on the full AS-2M label set
    rule: Literal["components", "drop_both", "keep_general", "keep_specific", "drop_both_concrete"] = (
        "drop_both_concrete"
    )

    @model_validator(mode="after")
    def _check(self) -> OntologyConfig:
        if sorted(set(self.levels)) != self.levels:
            raise ValueError(f"levels must be increasing and unique, got {self.levels}")
        return self


# ----------------------------------------------------------------------------- features / model


class FeaturesConfig(Section):
    # kaldi: the Kaldi fbank of EAT / SSLAM / SSAST | logmel: the overview's torchaudio log-mel (n_fft and hop from
    #   frame_length_ms / frame_shift_ms, f_min..f_max, natural log, each clip standardised over its valid frames)
    front_end: Literal["kaldi", "logmel"] = "kaldi"
    f_min: Annotated[float, Field(ge=0.0)] = 50.0  # logmel only
    f_max: Annotated[float, Field(gt=0.0)] = 8000.0  # logmel only
    num_mel_bins: Positive = 128
    frame_shift_ms: Annotated[float, Field(gt=0.0)] = 10.0
    frame_length_ms: Annotated[float, Field(gt=0.0)] = 25.0
    target_frames: Positive = 304
    norm_mean: float | None = None
    norm_std: Annotated[float, Field(gt=0.0)] | None = None
    stats_split: Name = "unbalanced"
    shard_size: Positive = 128
    store_waveforms: bool = True

    @model_validator(mode="after")
    def _check(self) -> FeaturesConfig:
        if (self.norm_mean is None) != (self.norm_std is None):
            raise ValueError("norm_mean and norm_std must both be set (pinned) or both be null (computed)")
        if self.f_min >= self.f_max:
            raise ValueError(f"f_min ({self.f_min}) must be below f_max ({self.f_max})")
        return self


class MambaConfig(Section):
    """Mamba blocks (``model.encoder: mamba``): SSAMBA's bidirectional Vim block (a forward and a backward
    selective scan, shared in/out projections, outputs averaged) or the overview's unidirectional one."""

    d_state: Positive = 8
    d_conv: Positive = 4
    expand: Positive = 1
    bidirectional: bool = False  # true: SSAMBA / Vim; false: the overview's unidirectional Mamba (d_state 24, expand 3)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"  # pre-norm of every residual block (SSAMBA: LayerNorm)
    cls_position: Literal["start", "middle", "none"] = "none"  # none: the summary is the mean of the tokens


class XlstmConfig(Section):
    """mLSTM blocks (``model.encoder: xlstm``), direction alternating from block to block (the overview)."""

    num_heads: Positive = 4
    expand: Positive = 1
    conv_kernel: Positive = 4
    cls_position: Literal["start", "middle", "none"] = "none"


class ModelConfig(Section):
    encoder: Literal["transformer", "mamba", "xlstm"] = "transformer"
    masked_tokens: Literal["auto", "drop", "mask_token"] = "auto"  # auto: drop (transformer), mask_token (others)
    embed_dim: Positive = 128
    depth: Positive = 4
    num_heads: Positive = 4  # transformer
    mlp_ratio: Annotated[float, Field(gt=0.0)] = 4.0  # transformer
    patch_size: Positive | Annotated[list[Positive], Field(min_length=2, max_length=2)] = 16  # n or [time, freq]
    decoder_layers: NonNegative = 4
    decoder_kernel: Positive = 3
    decoder_groups: Positive = 16
    # masked slots: N(0, 0.01^2) noise (reference) or a learned token
    decoder_fill: Literal["noise", "learned"] = "noise"
    patch_init: Literal["xavier", "pytorch"] = "pytorch"  # patch conv: PyTorch's Conv2d default | xavier_uniform_ (EAT)
    mamba: MambaConfig = MambaConfig()
    xlstm: XlstmConfig = XlstmConfig()

    @property
    def patch(self) -> tuple[int, int]:
        """``patch_size`` as (time, frequency) frames x mel bins."""
        return as_patch(self.patch_size)

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.encoder == "transformer" and self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.encoder == "xlstm" and (self.embed_dim * self.xlstm.expand) % self.xlstm.num_heads:
            raise ValueError(
                f"embed_dim x xlstm.expand ({self.embed_dim * self.xlstm.expand}) must be divisible by "
                f"xlstm.num_heads ({self.xlstm.num_heads})"
            )
        if self.embed_dim % self.decoder_groups:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be divisible by decoder_groups ({self.decoder_groups})"
            )
        return self


# ----------------------------------------------------------------------------- method


class CloneBatch(Section):
    """Masked copies of each clip, by how masked tokens enter the student (``model.masked_tokens``): a
    ``drop`` copy costs only its visible tokens (20% at ratio 0.8), a ``mask_token`` copy the whole
    sequence, so one mask-token copy costs about what four dropped copies do."""

    drop: Positive = 4
    mask_token: Positive = 1


class MaskConfig(Section):
    ratio: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.8
    block_size: Positive = 5
    prob_adjust: Annotated[float, Field(ge=0.0, le=1.0)] = 0.07  # extra block centres drawn, then trimmed (reference)
    clone_batch: Positive | CloneBatch = CloneBatch()  # an integer: the same for both


class MixConfig(Section):
    strategy: Literal["max", "average", "waveform"] = "max"
    partial: bool = True
    partial_mode: Literal["reference", "per_clip"] = "reference"
    mixed_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.53


class SrlConfig(Section):
    weight: Annotated[float, Field(ge=0.0)] = 1.0
    aggregation: Literal["mean", "max"] = "mean"  # how own and partner targets combine in mixed tokens (Table 11)
    global_loss: bool = False  # a CLS (global) SRL term too (Table 5's last row; the paper found it hurt)


class StageConfig(Section):
    """A pretraining stage; the defaults are params.yaml's stage 1 (Stage2Config restates stage 2's)."""

    steps: Positive = 900
    batch_size: Positive = 16
    lr: Annotated[float, Field(gt=0.0)] = 5e-4
    warmup_steps: NonNegative = 30
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.05
    betas: FloatPair = [0.9, 0.95]
    grad_clip: Annotated[float, Field(ge=0.0)] = 4.0
    grad_accum: Positive = 1
    ema_decay: FloatPair = [0.999, 0.9999]
    ema_anneal_steps: NonNegative = 900
    top_k_layers: Positive = 4
    cls_loss_weight: Annotated[float, Field(ge=0.0)] = 1.0
    cls_loss_reduction: Literal["sum", "mean"] = "sum"  # reference: summed over the per-device CLS tokens
    center_targets: Literal["none", "batch", "running"] = "batch"  # none: the reference; batch | running: remove
    #   the per-position mean of the targets (over the per-process batch | a running mean kept like the EMA)
    center_momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.99  # running: the mean's EMA momentum
    decay_all_params: bool = True  # reference (a fairseq quirk): weight decay on biases, norms and CLS too
    checkpoint_every: Positive = 150
    keep_checkpoints: Positive = 2
    log_every: Positive = 1
    clone_batch: Positive | CloneBatch | None = None  # null: mask.clone_batch

    @model_validator(mode="after")
    def _check(self) -> StageConfig:
        for name in ("betas", "ema_decay"):
            pair = getattr(self, name)
            if not all(0.0 <= v < 1.0 for v in pair):
                raise ValueError(f"{name} values must lie in [0, 1), got {pair}")
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds steps ({self.steps})")
        return self


class Stage2Config(StageConfig):
    variant: Literal["mb_ua", "mb_pma", "mb_ua_pma", "sslam"] = "sslam"  # the rows of Tables 2 and 3
    steps: Positive = 150
    batch_size: Positive = 8
    lr: Annotated[float, Field(gt=0.0)] = 2e-4
    warmup_steps: NonNegative = 15
    ema_anneal_steps: NonNegative = 150
    checkpoint_every: Positive = 50
    clone_batch: Positive | CloneBatch | None = CloneBatch()
    global_top_k_layers: Positive = 1  # teacher layers behind the CLS targets (reference: the last)
    global_unmixed: bool = True  # Table 5
    global_mixed: bool = True


class SsastConfig(Section):
    """SSAST's joint discriminative / generative masked patch modelling (also SSAMBA's objective)."""

    mask_count: Positive = 119  # patches masked per clip (SSAST / SSAMBA: 400 of 512; 119 of 152 the same share)
    cluster_sizes: Annotated[list[Positive], Field(min_length=1)] = [3, 4, 5]  # c x c clusters, c drawn per cluster
    mse_weight: Annotated[float, Field(ge=0.0)] = 10.0  # loss = nce + mse_weight * mse
    two_passes: bool = True  # the reference: separate masks and forward passes for the two heads


class MsmConfig(Section):
    """The overview's masked spectrogram modelling: unstructured masking, MSE to the raw patches."""

    mask_ratio: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    loss_on: Literal["masked", "all"] = "masked"  # the paper: masked; the public code: all patches


OBJECTIVES = ("bootstrap", "ssast", "msm")


class Stage2Run(Section):
    """One more stage-2 run from the same stage-1 checkpoint: ``pretrain.stage2`` with this variant and
    seed (the paper's central comparison, SSLAM vs MB-UA, Tables 2 and 3, with a seed spread)."""

    variant: Literal["mb_ua", "mb_pma", "mb_ua_pma", "sslam"] = "sslam"
    seed: NonNegative = 0


class PretrainConfig(Section):
    seed: NonNegative = 0
    train_set: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_/]*$")] = "unbalanced"  # feature set to pretrain on
    num_processes: Positive = 1  # training processes per machine: one per GPU (README "On a GPU node / on a cluster")
    num_machines: Positive = 1  # machines of the job; this one's rank from the environment (torchrun's or SLURM's)
    launcher: Literal["local", "slurm"] = "local"  # slurm: srun runs the stage on every node of the allocation
    rendezvous_port: Annotated[int, Field(ge=1, le=65535)] = 29500  # on the main machine (MASTER_PORT overrides)
    prefetch_batches: NonNegative = 2  # micro-batches read ahead by a background thread (0: read in the loop)
    # fp32 | bf16 | fp16 ('no' is accelerate's spelling, but YAML 1.1 writers turn a bare no into false)
    mixed_precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    cpu_threads: NonNegative = 0  # torch threads per process on the CPU; 0 = cores / processes (accelerate sets 1)
    # bootstrap: masked latent bootstrapping (EAT) then SSLAM's stage 2 | ssast | msm: raw-patch objectives of stage
    #   1 only (stage 2 passes the stage-1 checkpoint through)
    objective: Literal["bootstrap", "ssast", "msm"] = "bootstrap"
    ssast: SsastConfig = SsastConfig()
    msm: MsmConfig = MsmConfig()
    crop_seconds: Annotated[float, Field(gt=0.0)] | None = None  # random crops in pretraining (the overview: 2 s)
    stage1: StageConfig = StageConfig()
    stage2: Stage2Config = Stage2Config()
    stage2_runs: dict[Name, Stage2Run] = {  # checkpoints/<name>/, evaluated under <name>
        "sslam_s1": Stage2Run(variant="sslam", seed=1),
        "mb_ua_s0": Stage2Run(variant="mb_ua", seed=0),
        "mb_ua_s1": Stage2Run(variant="mb_ua", seed=1),
    }

    @model_validator(mode="after")
    def _check_runs(self) -> PretrainConfig:
        taken = [n for n in self.stage2_runs if re.fullmatch(BUILTIN_ENCODERS, n)]
        if taken:
            raise ValueError(
                f"stage2_runs names {taken} clash with the built-in encoder names "
                "(stage1, stage2, random<N>, fbank_stats)"
            )
        return self

    def crop_frames(self, frame_shift_ms: float) -> int | None:
        """``crop_seconds`` in feature frames (None: the whole stored clip)."""
        if self.crop_seconds is None:
            return None
        return max(1, round(self.crop_seconds * 1000.0 / frame_shift_ms))

    def stage2_run(self, name: str) -> PretrainConfig:
        """This config as the run ``name`` sees it: its variant in ``stage2``, its seed in ``seed``."""
        run = self.stage2_runs[name]
        return self.model_copy(
            update={"seed": run.seed, "stage2": self.stage2.model_copy(update={"variant": run.variant})}
        )


class FinetuneConfig(Section):
    """The fine-tuning recipe (paper Tables 7 and 8); ``tasks.<name>.recipe`` overrides any key per task.

    Defaults equal ``params.yaml``. ``decay_norm_and_bias: false`` exempts biases and norm weights
    (1-D parameters) from weight decay; ``bce_reduction: per_positive`` is the reference's AudioSet loss
    (BCE summed over the batch / the number of positive labels); ``mixup_lambda: per_batch`` draws one
    lambda per batch as the reference; ``roll_gain`` multiplies the clip by Beta(10, 10) + 0.5 and
    ``roll_domain: waveform`` rolls the stored waveform and recomputes the log-mel (the reference).
    """

    epochs: Positive = 100
    batch_size: Positive = 16
    lr: Annotated[float, Field(gt=0.0)] = 1e-3
    min_lr: Annotated[float, Field(ge=0.0)] = 1e-6  # every group's floor is its layer-decay scale x min_lr
    warmup_share: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1  # of the steps; linear warm-up, then cosine
    optimizer: Literal["adamw"] = "adamw"
    betas: FloatPair = [0.9, 0.95]
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.05
    decay_norm_and_bias: bool = True  # false: no weight decay on biases and norm weights (the paper recipe)
    layer_decay: Annotated[float, Field(gt=0.0, le=1.0)] = 0.65
    drop_path: Prob = 0.1
    mixup: bool = True
    mixup_alpha: Annotated[float, Field(ge=0.0)] = 0.8
    mixup_prob: Prob = 0.9
    mixup_lambda: Literal["per_clip", "per_batch"] = "per_clip"  # per_batch: one lambda per batch (reference)
    specaug_freq: Prob = 0.2
    specaug_time: Prob = 0.2
    roll: bool = True
    roll_gain: bool = False  # gain Beta(10, 10) + 0.5 with the roll (reference)
    roll_domain: Literal["logmel", "waveform"] = "logmel"  # waveform: the reference (features.store_waveforms)
    noise_std: Annotated[float, Field(ge=0.0)] = 0.0  # Gaussian noise on the normalised log-mel
    bce_reduction: Literal["mean", "per_positive"] = "mean"  # multi-label loss; per_positive: the reference (AudioSet)
    weighted_sampling: bool = False  # class-balanced sampling with replacement (AS-2M recipe)
    norm_stats: Literal["pretrain", "task"] = "pretrain"  # normalise with pretraining's or the task's train stats
    select_every: Positive = 1  # epochs between validation checks (train_valid_test tasks)
    pooling: Literal["cls", "mean", "freq_mean"] = "mean"


class LinearEvalConfig(Section):
    """The linear-evaluation recipe (paper Table 8: AdamW, cosine, warm-up); per task: ``tasks.<name>.linear``.

    Defaults equal ``params.yaml``. ``protocol``: ``cached`` embeds every clip once (exact only without
    input augmentation, so mixup, SpecAugment and roll must be off) and trains the head on the cached
    embeddings; ``paper`` runs the frozen encoder on every step's augmented batch (the reference: mixup
    and SpecAugment stay on), through the fine-tuning loop with the encoder frozen.
    """

    protocol: Literal["cached", "paper"] = "cached"
    epochs: Positive = 200
    batch_size: Positive = 32
    lr: Annotated[float, Field(gt=0.0)] = 1e-2
    min_lr: Annotated[float, Field(ge=0.0)] = 1e-6
    schedule: Literal["cosine", "constant"] = "cosine"  # cosine: linear warm-up, then cosine to min_lr
    warmup_epochs: NonNegative = 20
    betas: FloatPair = [0.9, 0.95]
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.05
    norm_stats: Literal["pretrain", "task"] = "pretrain"
    select_every: Positive = 10  # epochs between validation checks (train_valid_test tasks)
    pooling: Literal["cls", "mean", "freq_mean"] = "mean"
    mixup: bool = False  # the augmentation keys act under protocol: paper only
    mixup_alpha: Annotated[float, Field(ge=0.0)] = 0.8
    mixup_prob: Prob = 0.9
    mixup_lambda: Literal["per_clip", "per_batch"] = "per_batch"
    specaug_freq: Prob = 0.0
    specaug_time: Prob = 0.0
    roll: bool = False
    roll_gain: bool = False
    roll_domain: Literal["logmel", "waveform"] = "logmel"

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


def _overrides_of(model: type[Section], name: str) -> type[Section]:
    """The same keys as ``model``, each optional: a task's partial recipe."""
    fields = {
        k: ((Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation) | None, None)
        for k, f in model.model_fields.items()
    }
    return create_model(name, __base__=Section, **fields)


FinetuneOverrides = _overrides_of(FinetuneConfig, "FinetuneOverrides")
LinearEvalOverrides = _overrides_of(LinearEvalConfig, "LinearEvalOverrides")
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


SPASS_ENVIRONMENTS = ("Market", "Park", "Square", "Street", "Waterfront")
DatasetFormat = Literal[
    "esc50", "speech_commands", "speech_commands_12", "hear", "strong_tsv", "urban_sed", "fsd50k", "spass"
]


class DatasetConfig(_TaskRecipe):
    """A downstream task on a real dataset in its published layout (``data/datasets.py``, README "Real
    datasets"): the ``dataset@<name>`` stage lists, converts (mono FLAC at the corpus rate) and caches it
    as its own one-task corpus in ``data/datasets/<name>``. ``kind``, ``protocol`` and ``metric`` follow
    the format (HEAR: its ``task_metadata.json``); set them only to assert what you expect."""

    format: DatasetFormat
    root: Annotated[str, Field(min_length=1)]  # the unpacked dataset folder, exactly as published
    environment: str = ""  # spass only: Market | Park | Square | Street | Waterfront
    target_frames: Positive = 1024  # ESC-50 (5 s): 512; keywords (1 s): 128; 10 s soundscapes: 1024
    norm_mean: float | None = None  # null: computed over the task's training clips (valid frames)
    norm_std: Annotated[float, Field(gt=0.0)] | None = None
    max_seconds: Annotated[float, Field(gt=0.0)] = 30.0  # longer clips are cut (FSD50K reaches 30 s)
    silence_dbfs: Annotated[float, Field(le=0.0)] = -70.0  # a clip whose peak is below this is "silent"

    @model_validator(mode="after")
    def _check(self) -> DatasetConfig:
        if (self.norm_mean is None) != (self.norm_std is None):
            raise ValueError("norm_mean and norm_std must both be set (pinned) or both be null (computed)")
        if self.format == "spass" and self.environment not in SPASS_ENVIRONMENTS:
            raise ValueError(f"format spass needs environment, one of {list(SPASS_ENVIRONMENTS)}")
        if self.environment and self.format != "spass":
            raise ValueError("environment is for format spass only")
        return self

    def feature_set(self, key: str) -> str:
        """A dataset's own corpus holds one task, under the dataset's name."""
        return f"tasks/{key}"


EncoderName = Annotated[
    str, Field(pattern=r"^([a-z][a-z0-9_]*|file:.+)$")
]  # stage1 | stage2 | random<N> | fbank_stats | run | import
# (file:<path> only to be told how to import it)


class ImportConfig(Section):
    """A checkpoint from outside (the released EAT / SSLAM weights, hub folder or fairseq ``.pt``, or an
    export of this project), converted by the ``import_weights@<name>`` stage into
    ``checkpoints/<name>/final``: then an encoder named ``<name>`` like any other (README "Evaluate the
    released SSLAM weights"). The input settings are the checkpoint's own (the released weights': 16 kHz
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
    linear_encoders: Annotated[list[EncoderName], Field(min_length=1)] = [
        "stage2",
        "sslam_s1",
        "mb_ua_s0",
        "mb_ua_s1",
        "random0",
        "random1",
        "fbank_stats",
    ]
    finetune_encoders: Annotated[list[EncoderName], Field(min_length=1)] = ["stage2", "random0"]
    finetune_tasks: list[Name] = ["keywords", "square", "street"]
    finetune_datasets: list[Name] = []  # keys of datasets to fine-tune on as well
    seed: NonNegative = 0


class ReportConfig(Section):
    """How the report's intervals resample the per-clip test scores (README "What the intervals mean")."""

    bootstrap_samples: Annotated[int, Field(ge=100)] = 1000
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.95
    interval: Literal["bayesian", "bc", "percentile"] = "bayesian"
    seed: NonNegative = 0


class Config(Section):
    data: DataConfig = DataConfig()
    download: DownloadConfig = DownloadConfig()
    ontology: OntologyConfig = OntologyConfig()
    features: FeaturesConfig = FeaturesConfig()
    model: ModelConfig = ModelConfig()
    mask: MaskConfig = MaskConfig()
    mix: MixConfig = MixConfig()
    srl: SrlConfig = SrlConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    linear_eval: LinearEvalConfig = LinearEvalConfig()
    tasks: Annotated[dict[Name, TaskConfig], Field(min_length=1)] = {
        "mono": TaskConfig(
            kind="single_label", metric="accuracy", protocol="cross_validation", recipe=FinetuneOverrides(mixup=False)
        ),
        "keywords": TaskConfig(
            kind="single_label",
            metric="accuracy",
            protocol="train_valid_test",
            recipe=FinetuneOverrides(epochs=40, noise_std=0.1, roll=False, specaug_freq=0.1, specaug_time=0.1),
        ),
        "square": TaskConfig(),
        "park": TaskConfig(),
        "street": TaskConfig(),
        "desed": TaskConfig(),
        "masked": TaskConfig(kind="single_label", metric="accuracy"),
        "urban": TaskConfig(min_labels=2),
        "as20k": TaskConfig(data="audioset"),
    }
    evaluate: EvaluateConfig = EvaluateConfig()
    report: ReportConfig = ReportConfig()
    datasets: dict[Name, DatasetConfig] = {}  # downstream tasks on real datasets (README "Real datasets")
    imports: dict[Name, ImportConfig] = {}  # checkpoints from outside (README "Evaluate the released SSLAM weights")

    def task(self, key: str) -> TaskConfig | DatasetConfig:
        """Task ``key``: a corpus task (``tasks``) or a real dataset (``datasets``); names are unique."""
        if key in self.tasks:
            return self.tasks[key]
        if key in self.datasets:
            return self.datasets[key]
        raise KeyError(
            f"task {key!r} is in neither tasks ({sorted(self.tasks)}) nor datasets ({sorted(self.datasets)})"
        )

    @property
    def task_names(self) -> list[str]:
        """Every evaluated task: the corpus's, then the real datasets."""
        return [*self.tasks, *self.datasets]

    @property
    def finetuned_tasks(self) -> list[str]:
        return [*self.evaluate.finetune_tasks, *self.evaluate.finetune_datasets]

    def task_location(self, key: str, features_dir: str = "data/features") -> tuple[str, str]:
        """(corpus folder, features folder) of task ``key``: the synthetic / AudioSet corpus and the
        features stage's cache, or the dataset's own folder ``data/datasets/<name>`` and its cache."""
        if key in self.datasets:
            return f"{DATASETS_DIR}/{key}", f"{DATASETS_DIR}/{key}/features"
        return self.data.corpus_dir, features_dir

    def task_features(self, key: str) -> FeaturesConfig:
        """The log-mel settings of task ``key``'s cache: a real dataset has its own clip length and
        (pinned or computed) statistics; everything else is the features stage's."""
        if key not in self.datasets:
            return self.features
        ds = self.datasets[key]
        return self.features.model_copy(
            update={"target_frames": ds.target_frames, "norm_mean": ds.norm_mean, "norm_std": ds.norm_std}
        )

    def finetune_recipe(self, task: str) -> FinetuneConfig:
        """The base fine-tuning recipe with the task's overrides."""
        return self.finetune.model_copy(update=self.task(task).recipe.model_dump(exclude_none=True))

    def linear_recipe(self, task: str) -> LinearEvalConfig:
        return self.linear_eval.model_copy(update=self.task(task).linear.model_dump(exclude_none=True))

    @model_validator(mode="after")
    def _check_tasks(self) -> Config:
        both = sorted(set(self.tasks) & set(self.datasets))
        if both:
            raise ValueError(f"{both} name both a task and a dataset: a task name must be unique")
        if self.pretrain.objective != "bootstrap" and self.model.masked_tokens == "drop":
            raise ValueError(
                f"pretrain.objective {self.pretrain.objective} predicts the masked patches from the encoder's "
                "outputs at their positions: model.masked_tokens must be mask_token or auto, not drop"
            )
        if self.pretrain.crop_seconds is not None and self.mix.strategy == "waveform":
            raise ValueError("pretrain.crop_seconds crops the stored log-mel: mix.strategy waveform cannot use it")
        unknown = [t for t in self.evaluate.finetune_tasks if t not in self.tasks]
        if unknown:
            raise ValueError(f"evaluate.finetune_tasks {unknown} are not in tasks ({sorted(self.tasks)})")
        unknown = [t for t in self.evaluate.finetune_datasets if t not in self.datasets]
        if unknown:
            raise ValueError(f"evaluate.finetune_datasets {unknown} are not in datasets ({sorted(self.datasets)})")
        clash = [k for k in self.imports if re.fullmatch(BUILTIN_ENCODERS, k) or k in self.pretrain.stage2_runs]
        if clash:
            raise ValueError(f"imports {clash}: the name of a pretraining run or a random encoder; choose another")
        for key in ("linear_encoders", "finetune_encoders"):
            files = [e for e in getattr(self.evaluate, key) if e.startswith("file:")]
            if files:
                raise ValueError(
                    f"evaluate.{key} {files}: a checkpoint file is named under imports first, e.g. "
                    f"imports: {{released: {{path: {files[0][5:]}}}}}, then listed by that name (DVC then tracks it)"
                )
            bad = [
                e
                for e in getattr(self.evaluate, key)
                if not (re.fullmatch(BUILTIN_ENCODERS, e) or e in self.pretrain.stage2_runs or e in self.imports)
            ]
            if bad:
                raise ValueError(
                    f"evaluate.{key} {bad}: an encoder is stage1, stage2, random<N>, fbank_stats, a key of "
                    f"pretrain.stage2_runs ({sorted(self.pretrain.stage2_runs)}) or of imports ({sorted(self.imports)})"
                )
        if "fbank_stats" in self.evaluate.finetune_encoders:
            raise ValueError("evaluate.finetune_encoders: fbank_stats has no weights to fine-tune (a linear floor)")
        return self


# ----------------------------------------------------------------------------- loading


def _format_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: {err.error_count()} invalid value(s):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (misspelt? see src/sslam/config.py for the allowed keys)"
        # a whole-section check (empty loc) names its keys in its message: the section itself is no help
        got = "" if e["type"] in ("extra_forbidden", "missing") or not e["loc"] else f" (got {e['input']!r})"
        lines.append(f"  - {key}: {msg}{got}")
    return "\n".join(lines)


def load_config_or_exit(path: str | Path = PARAMS_FILE) -> Config:
    """For stage scripts: the validated config, or the error on stderr and exit status 2."""
    try:
        return load_config(path)
    except ConfigError as err:
        print(err, file=sys.stderr)
        raise SystemExit(2) from None


def parse_config(raw: Any, source: str = PARAMS_FILE) -> Config:
    """Validate an already-parsed params mapping."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err)) from None


def load_config(path: str | Path = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Config:
    """Read and validate a params file; ``overrides`` maps dotted keys to values (as ``dvc exp run -S``)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    for key, value in (overrides or {}).items():
        raw = set_dotted(raw or {}, key, value)
    return parse_config(raw, str(path))


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Return a copy of ``tree`` with ``a.b.c`` set to ``value`` (intermediate mappings created)."""
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
        raise ConfigError(f"override key {key!r} is not a dotted name like 'mix.strategy'")
    out = dict(tree)
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        node[part] = dict(child) if isinstance(child, dict) else {}
        node = node[part]
    node[parts[-1]] = value
    return out
