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


def games_played(n: int, outcomes: dict[tuple[int, int], float]) -> list[int]:
    """Per item the number of finished games (compared pairs with a verdict)."""
    games = [0] * n
    for i, j in outcomes:
        games[i] += 1
        games[j] += 1
    return games


def components(n: int, outcomes: dict[tuple[int, int], float]) -> list[list[int]]:
    """The connected components of the finished games, over the items that played (smallest index first).
    Strengths (and win rates) compare only within a component: two items never linked by a chain of games
    have no common scale."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in outcomes:
        parent[root(i)] = root(j)
    played = [i for i, g in enumerate(games_played(n, outcomes)) if g]
    groups: dict[int, list[int]] = {}
    for i in played:
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values())


def win_rates(n: int, outcomes: dict[tuple[int, int], float]) -> list[float | None]:
    """Per item the mean score over its games; outcome (i, j) -> i's share in [0, 1] (a tie is 0.5).
    None for an item with no finished game."""
    points = [0.0] * n
    for (i, j), r in outcomes.items():
        points[i] += r
        points[j] += 1.0 - r
    return [p / g if g else None for p, g in zip(points, games_played(n, outcomes))]


def bradley_terry(n: int, outcomes: dict[tuple[int, int], float], prior: float = 0.1,
                  iterations: int = 500, tol: float = 1e-10) -> list[float | None]:
    """Bradley-Terry strengths (MM algorithm, Hunter 2004), normalised to sum to 1 over the items that
    played. Soft outcomes count as fractional wins; `prior` adds that many virtual wins each way per
    compared pair, so an item that lost every game keeps a finite, small strength. An item without a
    finished game has no strength (None): it is left out of the fit and of the normalisation, never
    given the starting value as if it had been judged."""
    played = [i for i, g in enumerate(games_played(n, outcomes)) if g]
    if not played:
        return [None] * n
    wins = [[0.0] * n for _ in range(n)]
    for (i, j), r in outcomes.items():
        wins[i][j] += r + prior
        wins[j][i] += 1.0 - r + prior
    strength = {i: 1.0 / len(played) for i in played}
    for _ in range(iterations):
        new = {}
        for i in played:
            denom = sum((wins[i][j] + wins[j][i]) / (strength[i] + strength[j]) for j in played
                        if j != i and wins[i][j] + wins[j][i] > 0)
            new[i] = sum(wins[i]) / denom
        norm = sum(new.values())
        new = {i: s / norm for i, s in new.items()}
        converged = max(abs(new[i] - strength[i]) for i in played) < tol
        strength = new
        if converged:
            break
    return [strength.get(i) for i in range(n)]


@dataclass
class GroupResult:
    """A ranked group: per item (in input order) its win rate, Bradley-Terry strength and finished games.
    An item whose games all failed has win rate and strength None and no place in `ranking`."""

    task: str
    win_rates: list[float | None]
    strengths: list[float | None]
    games: list[int] = field(default_factory=list)
    pairs: list[Any] = field(default_factory=list)  # one Result per compared pair, in pair order
    errors: int = 0
    components: list[list[int]] = field(default_factory=list)  # items linked by finished games

    @property
    def connected(self) -> bool:
        """Every item that played is linked to every other by finished games: strengths share one scale.
        False after a pair budget or failed pairs split the group; compare strengths within a component."""
        return len(self.components) <= 1

    @property
    def ranking(self) -> list[int]:
        """The items that played, strongest first."""
        return sorted((i for i, s in enumerate(self.strengths) if s is not None), key=lambda i: -self.strengths[i])

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "win_rates": self.win_rates, "strengths": self.strengths, "games": self.games,
                "ranking": self.ranking,
                "pairs": [{"pair": list(p.id), **{k: v for k, v in p.to_dict().items() if k != "id"}}
                          for p in self.pairs],
                "errors": self.errors, "components": self.components, "connected": self.connected}
