"""What a stage needs from the Ray actor that runs it, and what the analyzer actor reserves."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Resources:
    """One stage instance's need: CPU cores, and the share of a GPU it uses when there is one."""

    cpus: float = 1.0
    gpus: float = 0.0


def sequential(needs: Iterable[Resources]) -> Resources:
    """The need of stages that run one after another in one actor: the largest of each kind,
    not the sum, since only one of them runs at a time."""
    needs = list(needs)
    return Resources(cpus=max(n.cpus for n in needs), gpus=max(n.gpus for n in needs))
