"""Soft scores from token logprobs: P(first item wins) for choices, the expected value of a digit score.

A greedy verdict throws away how sure the model was; RL rewards are smoother with probabilities. These
functions read the OpenAI `logprobs.content` list (objects or dicts with token, logprob, top_logprobs) and
return None whenever the tokens do not line up with the text, never a guess.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: Mapping[str, float]  # alternative token -> logprob, the chosen one included
    start: int  # character offset of the token in the text


def _get(obj: Any, key: str) -> Any:
    return obj[key] if isinstance(obj, Mapping) else getattr(obj, key)


def align(text: str, content: Sequence[Any] | None) -> list[TokenLogprob] | None:
    """Token logprobs with character offsets; None if the tokens do not spell the text."""
    if not content:
        return None
    tokens, offset = [], 0
    for entry in content:
        token, logprob = _get(entry, "token"), _get(entry, "logprob")
        top = {_get(t, "token"): _get(t, "logprob") for t in (_get(entry, "top_logprobs") or [])}
        top.setdefault(token, logprob)
        tokens.append(TokenLogprob(token, logprob, top, offset))
        offset += len(token)
    spelled = "".join(t.token for t in tokens)
    if not text.startswith(spelled.rstrip()) and not spelled.startswith(text):
        return None
    return tokens


def choice_probabilities(text: str, tokens: Sequence[TokenLogprob], phrases: Sequence[tuple[str, int]],
                         match_start: int) -> dict[int, float] | None:
    """P(outcome) for phrases [(phrase, outcome)], from the phrase stated at `match_start` in `text`.

    Walks the tokens of the stated phrase; at each token, alternatives that keep the text consistent with
    another phrase send their probability (renormalised over consistent alternatives) to that phrase's
    outcome, until the stated outcome is settled.
    """
    first = next((i for i, t in enumerate(tokens) if t.start <= match_start < t.start + len(t.token)), None)
    if first is None:
        return None
    lead = text[tokens[first].start:match_start].lower()
    targets = [(lead + phrase.lower(), outcome) for phrase, outcome in phrases]

    def outcomes(prefix: str) -> set[int]:
        prefix = prefix.lower()
        return {o for t, o in targets if t.startswith(prefix) or prefix.startswith(t)}

    mass = {o: 0.0 for _, o in phrases}
    path, prefix = 1.0, ""
    for token in tokens[first:]:
        consistent = {alt: (math.exp(lp), outcomes(prefix + alt)) for alt, lp in token.top.items()
                      if math.isfinite(lp)}
        consistent = {alt: v for alt, v in consistent.items() if v[1]}
        total = sum(p for p, _ in consistent.values())
        if token.token not in consistent or total <= 0:
            return None
        for alt, (p, outs) in consistent.items():
            if alt != token.token:
                for o in outs:
                    mass[o] += path * p / total / len(outs)
        path *= consistent[token.token][0] / total
        prefix += token.token
        remaining = outcomes(prefix)
        if len(remaining) == 1:
            mass[remaining.pop()] += path
            break
    else:
        return None
    norm = sum(mass.values())
    return {o: m / norm for o, m in mass.items()} if norm > 0 else None


def expected_digit(tokens: Sequence[TokenLogprob], position: int, lo: int, hi: int) -> float | None:
    """The expected value of a one-digit score whose digit is at character `position`, over digits lo..hi."""
    token = next((t for t in tokens if t.start == position), None)
    if token is None or len(token.token) != 1 or not token.token.isdigit():
        return None
    probs = {int(alt): math.exp(lp) for alt, lp in token.top.items()
             if len(alt) == 1 and alt.isdigit() and lo <= int(alt) <= hi and math.isfinite(lp)}
    total = sum(probs.values())
    if total <= 0:
        return None
    return sum(d * p for d, p in probs.items()) / total
