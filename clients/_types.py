"""The client's data: items in, completions from the wire, results out, and the parse hand-off between them.
No I/O here."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

from unifiedreward.prompts import Task, Verdict, VerdictError
from unifiedreward.prompts.verdicts import RewardKind

from .errors import BadInputError, RequestFailedError, RewardError, SoftScoreUnavailableError, UnparseableVerdictError

FIELD_NAMES = ("caption", "question", "answer1", "answer2", "response")
# logprobs=: False (hard rewards), True (soft where the answer's logprobs give one, hard otherwise, and
# `reward_kind` says which), "require" (soft or the item fails with SoftScoreUnavailableError).
Logprobs = bool | Literal["require"]
LOGPROBS_MODES = (False, True, "require")


@dataclass(frozen=True)
class Item:
    """One thing to score: a task, its media (in the task's order) and its text fields."""

    task: str | Task
    media: Sequence[Any]
    fields: Mapping[str, str] = field(default_factory=dict)
    id: Any = None
    # Items with the same key go to the same endpoint (e.g. all items of one prompt group: their images meet the
    # caches that hold them); any value, its str() counts. None: the least busy endpoint.
    affinity: Any = None

    @property
    def task_name(self) -> str:
        return self.task if isinstance(self.task, str) else self.task.name

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "Item":
        """From a dict / JSONL line: {"id", "task", "images": [...] | "videos": [...] | "media": [...],
        the task's fields ("caption", "question", "answer1", "answer2", "response"), "affinity"}."""
        if not isinstance(data, Mapping):
            raise BadInputError(f"an item must be an object, not {type(data).__name__}")
        if "task" not in data:
            raise BadInputError("the item has no 'task'")
        given = [k for k in ("media", "images", "videos") if data.get(k)]
        if len(given) > 1:
            raise BadInputError(f"give the media once, not as {' and '.join(given)}")
        media = data[given[0]] if given else []
        fields = {k: data[k] for k in FIELD_NAMES if k in data}
        if "fields" in data:
            fields.update(data["fields"])
        return cls(task=data["task"], media=media, fields=fields, id=data.get("id"), affinity=data.get("affinity"))


@dataclass(frozen=True)
class Completion:
    """What one chat request returned, transport details included (the client's `complete()`)."""

    text: str
    finish_reason: str | None
    usage: dict[str, int]
    logprobs: list[Any] | None
    latency_s: float  # of the attempt that answered
    endpoint: str
    attempts: int = 1
    ttft_s: float | None = None  # time to the first content token (streamed requests only)
    backoff_s: float = 0.0  # seconds waited between attempts before this answer
    # The longest silence while reading the answer (request to head, between chunks); streamed answers only.
    max_gap_s: float | None = None


@dataclass(frozen=True)
class Result:
    """One scored item. Either `verdict` is set, or `error` (and `error_type`) say why not: a failure is
    never a default score. `reward` raises the item's error rather than return a number for it, and
    `reward_kind` says whether the number is a probability-weighted ("soft") or a stated ("hard") reward."""

    task: str | None
    verdict: Verdict | None = None
    text: str | None = None
    error: str | None = None
    error_type: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    latency_s: float = 0.0
    endpoint: str | None = None
    attempts: int = 0
    id: Any = None
    # debias=True: the same pair scored in the other order, and whether both orders agreed
    swapped: "Result | None" = None
    agreement: bool | None = None
    backoff_s: float = 0.0  # seconds this item waited between retries
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def reward_kind(self) -> RewardKind | None:
        """"soft" when every order's reward came from logprobs, "hard" otherwise; None for a failed item."""
        if not self.ok or self.verdict is None:
            return None
        kinds = {self.verdict.reward_kind}
        if self.swapped is not None and self.swapped.verdict is not None:
            kinds.add(self.swapped.verdict.reward_kind)
        return "soft" if kinds == {"soft"} else "hard"

    @property
    def reward(self) -> float:
        """The reward in [0, 1] for the first item; with debias the average over both orders (both soft, or
        both hard: a soft and a hard reward are never averaged together)."""
        self.raise_for_error()
        assert self.verdict is not None
        if self.swapped is not None and self.swapped.verdict is not None:
            soft = self.reward_kind == "soft"
            first = self.verdict.reward if soft else self.verdict.hard_reward
            second = self.swapped.verdict.reward if soft else self.swapped.verdict.hard_reward
            return (first + 1.0 - second) / 2
        return self.verdict.reward

    def raise_for_error(self) -> None:
        if self.error is not None:
            raise self.exception if isinstance(self.exception, RewardError) else RewardError(self.error)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "task": self.task,
            "verdict": self.verdict.to_dict() if self.verdict else None,
            "reward": self.reward if self.ok else None,
            "reward_kind": self.reward_kind,
            "error": self.error,
            "error_type": self.error_type,
            "text": self.text,
            "usage": self.usage,
            "latency_s": round(self.latency_s, 4),
            "endpoint": self.endpoint,
            "attempts": self.attempts,
            "backoff_s": round(self.backoff_s, 4),
        }
        if self.swapped is not None:
            out["swapped"] = self.swapped.to_dict()
            out["agreement"] = self.agreement
        return out

    @classmethod
    def failure(cls, exc: BaseException, *, task: str | None = None, id: Any = None) -> "Result":
        """A failed item. When the server did answer (an unparseable verdict), its text, usage, latency and
        endpoint are kept: the raw answer is what a user needs to see."""
        extra: dict[str, Any] = {}
        if isinstance(exc, RequestFailedError):
            extra.update(attempts=exc.attempts, backoff_s=exc.backoff_s)
            if exc.endpoints:
                extra["endpoint"] = exc.endpoints[-1]  # where the last attempt went
        completion = exc.completion if isinstance(exc, RewardError) else None
        if completion is not None:
            extra.update(text=completion.text, usage=completion.usage, latency_s=completion.latency_s,
                         endpoint=completion.endpoint, attempts=completion.attempts, backoff_s=completion.backoff_s)
        return cls(task=task, id=id, error=str(exc) or type(exc).__name__, error_type=type(exc).__name__,
                   exception=exc, **extra)


def to_result(task: Task, completion: Completion, *, id: Any = None, logprobs: Logprobs = False,
              decisive: bool = False) -> Result:
    """Parse a completion into a Result; an unparseable answer raises with the raw answer attached, and so
    does a hard verdict when logprobs="require". decisive: the request stopped at the deciding token."""
    text = completion.text
    try:
        if completion.finish_reason == "length":
            # A verdict cut short may still parse to the wrong number ('2.6' of '2.69'): never accept it.
            raise VerdictError(f"{task.name}: the answer was cut at max_tokens ({len(text)} characters); "
                               f"raise max_tokens")
        verdict = task.parse(text, completion.logprobs, decisive=decisive)
    except VerdictError as exc:
        raise UnparseableVerdictError(str(exc), text, completion=completion) from None
    if logprobs == "require" and verdict.reward_kind != "soft":
        why = ("the server returned no logprobs" if not completion.logprobs else
               "the answer's tokens do not line up with its verdict (markdown around it, or the score spelled "
               "across tokens)")
        raise SoftScoreUnavailableError(
            f"{task.name}: no soft score: {why}; the stated verdict's reward is {verdict.hard_reward:g} "
            f"(logprobs=True accepts it, marked reward_kind='hard')", verdict, completion=completion)
    return Result(task=task.name, verdict=verdict, text=text, usage=completion.usage, latency_s=completion.latency_s,
                  endpoint=completion.endpoint, attempts=completion.attempts, backoff_s=completion.backoff_s, id=id)


def orders_agree(first: Verdict, swapped: Verdict) -> bool:
    """Both orders prefer the same item (or both call it even)."""
    a, b = first.reward - 0.5, (1.0 - swapped.reward) - 0.5
    return (a > 0 and b > 0) or (a < 0 and b < 0) or (a == 0 and b == 0)
