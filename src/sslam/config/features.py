"""The ``features`` section: the log-mel front end and its cache (``features/``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from sslam.config.base import Name, Positive, Section
from sslam.config.data import DataConfig


class FeaturesConfig(Section):
    # kaldi: the Kaldi fbank of EAT / SSLAM / SSAST | logmel: the overview's torchaudio log-mel (n_fft and hop from
    #   frame_length_ms / frame_shift_ms, f_min..f_max, natural log, each clip standardised over its valid frames)
    front_end: Literal["kaldi", "logmel"]
    f_min: Annotated[float, Field(ge=0.0)]  # logmel only
    f_max: Annotated[float, Field(gt=0.0)]  # logmel only
    num_mel_bins: Positive
    frame_shift_ms: Annotated[float, Field(gt=0.0)]
    frame_length_ms: Annotated[float, Field(gt=0.0)]
    target_frames: Positive
    norm_mean: float | None
    norm_std: Annotated[float, Field(gt=0.0)] | None
    stats_split: Name
    shard_size: Positive
    store_waveforms: bool

    @model_validator(mode="after")
    def _check(self) -> FeaturesConfig:
        if (self.norm_mean is None) != (self.norm_std is None):
            raise ValueError("norm_mean and norm_std must both be set (pinned) or both be null (computed)")
        if self.f_min >= self.f_max:
            raise ValueError(f"f_min ({self.f_min}) must be below f_max ({self.f_max})")
        return self


class FeaturesParams(Section):
    """What the ``features`` stage reads."""

    data: DataConfig
    features: FeaturesConfig
