"""The ``report`` section: how the report's intervals resample the per-clip test scores."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from sslam.config.base import NonNegative, Section


class ReportConfig(Section):
    """How the report's intervals resample the per-clip test scores (docs/evaluation.md)."""

    bootstrap_samples: Annotated[int, Field(ge=100)]
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)]
    interval: Literal["bayesian", "bc", "percentile"]
    seed: NonNegative
