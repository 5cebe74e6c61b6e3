"""Reported numbers: a value, its standard error, and a name that says exactly what it is."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .errors import CvaeError

NATS = "nats per example"


@dataclass
class Figure:
    """One reported number: ``value`` (a mean over examples) and its standard error."""

    name: str  # exactly what the number is
    value: float
    stderr: float | None = None  # standard error of ``value``; None when it is exact (not an estimate)
    unit: str = NATS
    note: str = ""

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in ("", None)}


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    """The mean of per-example values and its standard error, std / sqrt(N) (0 for one value)."""
    v = values.detach().double().flatten()
    if v.numel() == 0:
        raise CvaeError("no examples to evaluate")
    se = v.std(unbiased=True).item() / math.sqrt(v.numel()) if v.numel() > 1 else 0.0
    return v.mean().item(), se


def figure(name: str, values: torch.Tensor, *, unit: str = NATS, note: str = "") -> Figure:
    mean, se = mean_and_stderr(values)
    return Figure(name, mean, se, unit, note)
