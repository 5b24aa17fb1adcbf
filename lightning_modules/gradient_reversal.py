"""Gradient reversal (Ganin & Lempitsky, 2015): identity forward, gradient times -scale backward.

Put between an encoder and an adversarial head: the head learns its task as usual while the
encoder is pushed to remove the information the head relies on (here: speaker identity).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grad, None


def grad_reverse(x: Tensor, scale: float = 1.0) -> Tensor:
    return _GradReverse.apply(x, float(scale))


def dann_scale(progress: float, max_scale: float = 1.0, gamma: float = 10.0) -> float:
    """DANN's ramp 2 / (1 + exp(-gamma p)) - 1 from 0 to max_scale: the adversary starts weak."""
    p = min(max(progress, 0.0), 1.0)
    return max_scale * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)


class GradientReversal(nn.Module):
    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
