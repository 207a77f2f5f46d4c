"""The EMA teacher: decay schedule and update, as the reference does them.

Decay anneals linearly from ``start`` to ``end`` over ``anneal_steps`` updates, then stays at ``end``
(0.9998 -> 0.99999 over 100k in EAT). The update runs on fp32 shadow weights every optimizer step:
``teacher = d * teacher + (1 - d) * student`` for parameters; buffers are copied, not averaged.
"""

from __future__ import annotations

import torch
from torch import nn


def ema_decay(step: int, start: float, end: float, anneal_steps: int) -> float:
    if anneal_steps <= 0 or step >= anneal_steps:
        return end
    return start + (end - start) * step / anneal_steps


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    t_params = dict(teacher.named_parameters())
    for name, p in student.named_parameters():
        t = t_params[name]
        t.mul_(decay).add_(p.detach().to(t.dtype), alpha=1.0 - decay)
    t_bufs = dict(teacher.named_buffers())
    for name, b in student.named_buffers():
        t_bufs[name].copy_(b)
