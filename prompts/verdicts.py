"""Typed verdicts: what a training loop reads. `reward` is always a float in [0, 1], higher = first item better."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Verdict:
    task: str
    reward: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RankVerdict(Verdict):
    """A pairwise choice. `winner` is 1 or 2, or None for a tie (only where the task allows ties)."""

    winner: int | None


@dataclass(frozen=True)
class ScoreVerdict(Verdict):
    """Per-axis scores of one item, keyed by snake_case axis name."""

    scores: dict[str, float]
