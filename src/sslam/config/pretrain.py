"""The pretraining sections: masking (``mask``), stage-2 mixing (``mix``), the source retention loss
(``srl``) and ``pretrain`` (the run, the objective, both stages and the stage-2 runs)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from sslam.config.base import BUILTIN_ENCODERS, FloatPair, Name, NonNegative, Positive, Section, merged
from sslam.config.data import DataConfig
from sslam.config.features import FeaturesConfig
from sslam.config.model import ModelConfig

Variant = Literal["mb_ua", "mb_pma", "mb_ua_pma", "sslam"]  # stage 2's variants: the rows of Tables 2 and 3


class CloneBatch(Section):
    """Masked copies of each clip, by how masked tokens enter the student (``model.masked_tokens``): a
    ``drop`` copy costs only its visible tokens (20% at ratio 0.8), a ``mask_token`` copy the whole
    sequence, so one mask-token copy costs about what four dropped copies do."""

    drop: Positive
    mask_token: Positive


class MaskConfig(Section):
    ratio: Annotated[float, Field(gt=0.0, lt=1.0)]
    block_size: Positive
    prob_adjust: Annotated[float, Field(ge=0.0, le=1.0)]  # extra block centres drawn, then trimmed (reference)
    clone_batch: Positive | CloneBatch  # an integer: the same for both


class MixConfig(Section):
    strategy: Literal["max", "average", "waveform"]
    partial: bool
    partial_mode: Literal["reference", "per_clip"]
    mixed_fraction: Annotated[float, Field(gt=0.0, le=1.0)]


class SrlConfig(Section):
    weight: Annotated[float, Field(ge=0.0)]
    aggregation: Literal["mean", "max"]  # how own and partner targets combine in mixed tokens (Table 11)
    global_loss: bool  # a CLS (global) SRL term too (Table 5's last row; the paper found it hurt)


class StageConfig(Section):
    """A pretraining stage's schedule, EMA teacher and targets (``pretrain.stage1``, ``pretrain.stage2``)."""

    steps: Positive
    batch_size: Positive
    lr: Annotated[float, Field(gt=0.0)]
    warmup_steps: NonNegative
    weight_decay: Annotated[float, Field(ge=0.0)]
    betas: FloatPair
    grad_clip: Annotated[float, Field(ge=0.0)]
    grad_accum: Positive
    ema_decay: FloatPair
    ema_anneal_steps: NonNegative
    top_k_layers: Positive
    cls_loss_weight: Annotated[float, Field(ge=0.0)]
    cls_loss_reduction: Literal["sum", "mean"]  # reference: summed over the per-device CLS tokens
    center_targets: Literal["none", "batch", "running"]  # none: the reference; batch | running: remove
    #   the per-position mean of the targets (over the per-process batch | a running mean kept like the EMA)
    center_momentum: Annotated[float, Field(ge=0.0, lt=1.0)]  # running: the mean's EMA momentum
    decay_all_params: bool  # reference (a fairseq quirk): weight decay on biases, norms and CLS too
    checkpoint_every: Positive
    keep_checkpoints: Positive
    log_every: Positive
    clone_batch: Positive | CloneBatch | None  # null: mask.clone_batch

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
    """Stage 2: every key of a stage, and what only stage 2 has (the variant and the CLS targets)."""

    variant: Variant
    global_top_k_layers: Positive  # teacher layers behind the CLS targets (reference: the last)
    global_unmixed: bool  # Table 5
    global_mixed: bool


class SsastConfig(Section):
    """SSAST's joint discriminative / generative masked patch modelling (also SSAMBA's objective)."""

    mask_count: Positive  # patches masked per clip (SSAST / SSAMBA: 400 of 512; 119 of 152 the same share)
    cluster_sizes: Annotated[list[Positive], Field(min_length=1)]  # c x c clusters, c drawn per cluster
    mse_weight: Annotated[float, Field(ge=0.0)]  # loss = nce + mse_weight * mse
    two_passes: bool  # the reference: separate masks and forward passes for the two heads


class MsmConfig(Section):
    """The overview's masked spectrogram modelling: unstructured masking, MSE to the raw patches."""

    mask_ratio: Annotated[float, Field(gt=0.0, lt=1.0)]
    loss_on: Literal["masked", "all"]  # the paper: masked; the public code: all patches


class Stage2Run(Section):
    """One more stage-2 run from the same stage-1 checkpoint: ``pretrain.stage2`` with this variant and
    seed (the paper's central comparison, SSLAM vs MB-UA, Tables 2 and 3, with a seed spread)."""

    variant: Variant = "sslam"
    seed: NonNegative = 0


class PretrainConfig(Section):
    seed: NonNegative
    train_set: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_/]*$")]  # feature set to pretrain on
    num_processes: Positive  # training processes per machine: one per GPU (docs/scaling.md)
    num_machines: Positive  # machines of the job; this one's rank from the environment (torchrun's or SLURM's)
    launcher: Literal["local", "slurm"]  # slurm: srun runs the stage on every node of the allocation
    rendezvous_port: Annotated[int, Field(ge=1, le=65535)]  # on the main machine (MASTER_PORT overrides)
    prefetch_batches: NonNegative  # micro-batches read ahead by a background thread (0: read in the loop)
    # fp32 | bf16 | fp16 ('no' is accelerate's spelling, but YAML 1.1 writers turn a bare no into false)
    mixed_precision: Literal["fp32", "bf16", "fp16"]
    cpu_threads: NonNegative  # torch threads per process on the CPU; 0 = cores / processes (accelerate sets 1)
    # a module of sslam/pretrain/objectives/ (objective_names()): bootstrap: masked latent bootstrapping (EAT)
    #   then SSLAM's stage 2 | ssast | msm: raw-patch objectives of stage 1 only (stage 2 passes the stage-1
    #   checkpoint through)
    objective: str
    ssast: SsastConfig  # the options sections of the objectives that have one (Objective.options)
    msm: MsmConfig
    crop_seconds: Annotated[float, Field(gt=0.0)] | None  # random crops in pretraining (the overview: 2 s)
    stage1: StageConfig
    stage2: Stage2Config
    stage2_runs: dict[Name, Stage2Run]

    @field_validator("objective")
    @classmethod
    def _registered(cls, name: str) -> str:
        from sslam.pretrain.objectives import check_name  # the light registry: imports no objective module

        return check_name(name)  # an UnknownObjectiveError (a ValueError) lists the registered objectives

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
        return merged(self, {"seed": run.seed, "stage2": merged(self.stage2, {"variant": run.variant}).model_dump()})


def check_pretraining(model: ModelConfig, mix: MixConfig, pretrain: PretrainConfig) -> None:
    """The rules that span the model, mixing and pretraining sections."""
    from sslam.pretrain.objectives import get_objective  # imports the objective's module: asked only for drop

    if model.masked_tokens == "drop" and get_objective(pretrain.objective).predicts_masked:
        raise ValueError(
            f"pretrain.objective {pretrain.objective} predicts the masked patches from the encoder's "
            "outputs at their positions: model.masked_tokens must be mask_token or auto, not drop"
        )
    if pretrain.crop_seconds is not None and mix.strategy == "waveform":
        raise ValueError("pretrain.crop_seconds crops the stored log-mel: mix.strategy waveform cannot use it")


class PretrainParams(Section):
    """What the pretraining stages read."""

    data: DataConfig
    features: FeaturesConfig
    model: ModelConfig
    mask: MaskConfig
    mix: MixConfig
    srl: SrlConfig
    pretrain: PretrainConfig

    @model_validator(mode="after")
    def _check(self) -> PretrainParams:
        check_pretraining(self.model, self.mix, self.pretrain)
        return self
