"""The one learning-rate schedule of the project: linear warm-up, then cosine decay to a floor.

Pretraining (floor 0, as the reference), fine-tuning and linear evaluation (floor ``min_lr``) all
call :func:`warmup_cosine_lr`, so the schedule is written, and tested, once.
"""

from __future__ import annotations

import math


def warmup_cosine_lr(step: int, total: int, warmup: int, peak: float, floor: float = 0.0) -> float:
    """lr at ``step`` (0-based): linear warm-up to ``peak`` over ``warmup`` steps (step 0 already gets
    ``peak / warmup``), then a half cosine down to ``floor`` at ``total``, flat after it. Written as
    ``w * peak + (1 - w) * floor`` so the peak and the floor come out exactly."""
    if step < warmup:
        w = (step + 1) / warmup
    else:
        w = 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return w * peak + (1.0 - w) * floor
