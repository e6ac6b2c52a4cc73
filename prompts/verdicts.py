"""Typed verdicts: what a training loop reads.

Every verdict has `task` and `reward`, a float in [0, 1] where higher means the first (or only) item is
better; each task file documents its mapping. Optional soft scores (`p_first`, `expected_score`) are present
only when the request asked for logprobs and the verdict tokens lined up with them; then they drive `reward`,
and `reward_kind` says so. A soft reward and a hard one are different quantities: `reward_kind` is always
stated, so that a caller never mixes them without knowing.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

RewardKind = Literal["soft", "hard"]


@dataclass(frozen=True)
class Verdict:
    task: str
    reward: float
    # "soft": `reward` comes from the verdict tokens' logprobs; "hard": from the verdict as stated.
    reward_kind: RewardKind = field(default="hard", kw_only=True)
    # The reward of the verdict as stated (equal to `reward` when hard).
    hard_reward: float | None = field(default=None, kw_only=True)

    # Fields left out of to_dict() when None (a None winner, a tie, is kept).
    _optional: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        if self.reward_kind not in ("soft", "hard"):
            raise ValueError(f"reward_kind must be 'soft' or 'hard', not {self.reward_kind!r}")
        if self.hard_reward is None:
            if self.reward_kind == "soft":
                raise ValueError("a soft verdict states its hard_reward")
            object.__setattr__(self, "hard_reward", self.reward)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self._optional:
                continue
            if f.name == "hard_reward" and self.reward_kind == "hard":
                continue  # the same number as `reward`
            out[f.name] = _plain(value)
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class RankVerdict(Verdict):
    """A pairwise choice. `winner` is 1 or 2, or None for a tie (only where the task allows ties).
    `p_first`: P(first item wins), a tie counting half, from the verdict tokens' logprobs."""

    winner: int | None
    p_first: float | None = None

    _optional: ClassVar[frozenset[str]] = frozenset({"p_first"})


@dataclass(frozen=True)
class PairScoreVerdict(Verdict):
    """Relative scores per axis: {"alignment": [x1, x2], ...}, each pair summing to about 1."""

    scores: dict[str, list[float]]


@dataclass(frozen=True)
class ScoreVerdict(Verdict):
    """Per-axis scores of one item, keyed by snake_case axis name; `word_scores` for the word-wise task."""

    scores: dict[str, float]
    word_scores: list[list[Any]] | None = None

    _optional: ClassVar[frozenset[str]] = frozenset({"word_scores"})


@dataclass(frozen=True)
class FinalScoreVerdict(Verdict):
    """A 'Final Score: X' verdict, with sub-scores and element lines where the format has them.
    `expected_score`: the probability-weighted final score from the score token's logprobs."""

    final_score: float
    scores: dict[str, float] | None = None
    elements: list[dict[str, Any]] | None = None
    expected_score: float | None = None

    _optional: ClassVar[frozenset[str]] = frozenset({"scores", "elements", "expected_score"})
