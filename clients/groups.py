"""Ranking a group from pairwise rewards: win rates and Bradley-Terry strengths (pure functions)."""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any, Sequence


def all_pairs(n: int, budget: int | None = None, seed: int = 0) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, to compare. With a budget, a random subset that still gives every item games:
    a shuffled cycle first (each item twice), then random pairs."""
    pairs = list(itertools.combinations(range(n), 2))
    if budget is None or budget >= len(pairs):
        return pairs
    if budget < 1:
        raise ValueError("the pair budget must be at least 1")
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    chosen = {tuple(sorted((order[k], order[(k + 1) % n]))) for k in range(n)} if n > 2 else set()
    chosen = set(sorted(chosen)[:budget])
    rest = [p for p in pairs if p not in chosen]
    rng.shuffle(rest)
    chosen.update(rest[: budget - len(chosen)])
    return sorted(chosen)


def cache_friendly_waves(pairs: Sequence[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Order pairs so that each leading item's prefix (its image before the rest of the prompt) is computed
    once by vLLM's prefix cache: wave 1 sends one pair per distinct leading item; once those are done,
    wave 2 sends the others, whose leading image is then cached."""
    first, rest, seen = [], [], set()
    for pair in sorted(pairs):
        (rest if pair[0] in seen else first).append(pair)
        seen.add(pair[0])
    return first, rest


def win_rates(n: int, outcomes: dict[tuple[int, int], float]) -> list[float | None]:
    """Per item the mean score over its games; outcome (i, j) -> i's share in [0, 1] (a tie is 0.5).
    None for an item with no finished game."""
    points, games = [0.0] * n, [0] * n
    for (i, j), r in outcomes.items():
        points[i] += r
        points[j] += 1.0 - r
        games[i] += 1
        games[j] += 1
    return [p / g if g else None for p, g in zip(points, games)]


def bradley_terry(n: int, outcomes: dict[tuple[int, int], float], prior: float = 0.1,
                  iterations: int = 500, tol: float = 1e-10) -> list[float]:
    """Bradley-Terry strengths (MM algorithm, Hunter 2004), normalised to sum to 1. Soft outcomes count as
    fractional wins; `prior` adds that many virtual wins each way per compared pair, so an item that lost
    every game keeps a finite, small strength."""
    wins = [[0.0] * n for _ in range(n)]
    for (i, j), r in outcomes.items():
        wins[i][j] += r + prior
        wins[j][i] += 1.0 - r + prior
    strength = [1.0 / n] * n
    for _ in range(iterations):
        new = []
        for i in range(n):
            total_wins = sum(wins[i])
            denom = sum((wins[i][j] + wins[j][i]) / (strength[i] + strength[j]) for j in range(n)
                        if j != i and wins[i][j] + wins[j][i] > 0)
            new.append(total_wins / denom if denom > 0 else strength[i])
        norm = sum(new)
        new = [s / norm for s in new]
        if max(abs(a - b) for a, b in zip(new, strength)) < tol:
            strength = new
            break
        strength = new
    return strength


@dataclass
class GroupResult:
    """A ranked group: per item (in input order) its win rate and Bradley-Terry strength."""

    task: str
    win_rates: list[float | None]
    strengths: list[float]
    pairs: list[Any] = field(default_factory=list)  # one Result per compared pair, in pair order
    errors: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "win_rates": self.win_rates, "strengths": self.strengths,
                "ranking": sorted(range(len(self.strengths)), key=lambda i: -self.strengths[i]),
                "pairs": [{"pair": list(p.id), **{k: v for k, v in p.to_dict().items() if k != "id"}}
                          for p in self.pairs],
                "errors": self.errors}

