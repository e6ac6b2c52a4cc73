"""The client's pure logic: items, results, media encoding, request bodies, parsing, error translation.
No network I/O here: the async client (and through it the sync twin) share it."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import openai

from prompts import PromptsError, Task, Verdict, VerdictError, get_task

from ._constants import RETRYABLE_STATUS
from .errors import (AuthenticationError, BadInputError, InputRejectedError, RequestFailedError, RewardError,
                     UnparseableVerdictError)
from .media import encode_image, encode_video_url, is_url, video_frames

CONSTRAINTS = ("auto", "verdict", "none")
VIDEO_MODES = ("frames", "url")
TOP_LOGPROBS = 20  # vLLM's default cap on top_logprobs
FIELD_NAMES = ("caption", "question", "answer1", "answer2", "response")


@dataclass(frozen=True)
class EncodeOptions:
    image_format: str
    quality: int
    min_pixels: int
    max_pixels: int
    video_mode: str = "frames"


@dataclass(frozen=True)
class Item:
    """One thing to score: a task, its media (in the task's order) and its text fields."""

    task: str | Task
    media: Sequence[Any]
    fields: Mapping[str, str] = field(default_factory=dict)
    id: Any = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "Item":
        """From a dict / JSONL line: {"id", "task", "images": [...] | "videos": [...] | "media": [...],
        and the task's fields ("caption", "question", "answer1", "answer2", "response")}."""
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
        return cls(task=data["task"], media=media, fields=fields, id=data.get("id"))


@dataclass(frozen=True)
class Result:
    """One scored item. Either `verdict` is set, or `error` (and `error_type`) say why not: a failure is
    never a default score. `reward` raises the item's error rather than return a number for it."""

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
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def reward(self) -> float:
        """The reward in [0, 1] for the first item; with debias the average over both orders."""
        self.raise_for_error()
        assert self.verdict is not None
        if self.swapped is not None and self.swapped.verdict is not None:
            return (self.verdict.reward + 1.0 - self.swapped.verdict.reward) / 2
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
            "error": self.error,
            "error_type": self.error_type,
            "text": self.text,
            "usage": self.usage,
            "latency_s": round(self.latency_s, 4),
            "endpoint": self.endpoint,
            "attempts": self.attempts,
        }
        if self.swapped is not None:
            out["swapped"] = self.swapped.to_dict()
            out["agreement"] = self.agreement
        return out

    @classmethod
    def failure(cls, exc: BaseException, *, task: str | None = None, id: Any = None, **extra: Any) -> "Result":
        """A failed item. When the server did answer (an unparseable verdict), its text, usage, latency and
        endpoint are kept: the raw answer is what a user needs to see."""
        completion = getattr(exc, "completion", None)
        if completion is not None:
            extra = {"text": completion.text, "usage": completion.usage, "latency_s": completion.latency_s,
                     "endpoint": completion.endpoint, "attempts": completion.attempts, **extra}
        return cls(task=task, id=id, error=str(exc) or type(exc).__name__, error_type=type(exc).__name__,
                   exception=exc, **extra)


def resolve_task(task: str | Task) -> Task:
    try:
        return get_task(task)
    except PromptsError as exc:
        raise BadInputError(str(exc)) from None


def encode_one(kind: str, frames: int | None, item: Any, options: EncodeOptions) -> Any:
    """One media item of a task whose media are `kind`. Images -> a data URL. A video: a URL passes through;
    a file or bytes -> `frames` evenly spaced frames (or the file itself with video_mode="url"); a list of
    frames -> frame data URLs. Runs in a worker thread: decoding never blocks the event loop."""

    def image(x: Any) -> str:
        if is_url(x):
            return x
        return encode_image(x, image_format=options.image_format, quality=options.quality,
                            min_pixels=options.min_pixels, max_pixels=options.max_pixels)

    if kind == "image":
        return image(item)
    if is_url(item):
        return item
    if isinstance(item, Sequence) and not isinstance(item, (str, bytes, bytearray)):
        if not item:
            raise BadInputError("a video given as frames needs at least one frame")
        return [image(frame) for frame in item]
    if options.video_mode == "url":
        return encode_video_url(item)
    return [image(frame) for frame in video_frames(item, frames or 8)]


def encode_media(task: Task, media: Sequence[Any], options: EncodeOptions) -> list[Any]:
    """All media of one item, checked against the task's layout."""
    if isinstance(media, (str, bytes)) or not isinstance(media, Sequence):
        media = [media]
    if len(media) != task.media.count:
        raise BadInputError(f"{task.name}: takes {task.media.count} {task.media.kind}(s), got {len(media)}")
    return [encode_one(task.media.kind, task.media.frames, m, options) for m in media]


def build_request(task: Task, urls: Sequence[Any], fields: Mapping[str, str], *, model: str,
                  constraint: str = "auto", logprobs: bool = False, max_tokens: int | None = None,
                  extra_body: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments for `chat.completions.create`: greedy and bounded. `constraint`: "auto" (the task's
    default: structured formats constrained, free reasoning not), "verdict" (always constrained; free
    reasoning skipped) or "none". `logprobs`: ask for the top alternatives, for soft scores.
    `extra_body`: more vLLM request fields (e.g. {"ignore_eos": true}, {"priority": 1})."""
    if constraint not in CONSTRAINTS:
        raise BadInputError(f"constraint must be one of {CONSTRAINTS}, not {constraint!r}")
    try:
        messages = task.messages(urls, **fields)
    except PromptsError as exc:
        raise BadInputError(str(exc)) from None
    request: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens or task.max_tokens,
        "temperature": 0.0,
    }
    structured = {"auto": task.structured_outputs, "verdict": task.verdict_constraint, "none": None}[constraint]
    body = dict(extra_body or {})
    if structured is not None:
        body["structured_outputs"] = structured
    if body:
        request["extra_body"] = body
    if logprobs:
        request.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
    return request


@dataclass(frozen=True)
class Completion:
    """What one chat request returned, transport details included (the client's `complete()`)."""

    text: str
    finish_reason: str | None
    usage: dict[str, int]
    logprobs: list[Any] | None
    latency_s: float
    endpoint: str
    attempts: int
    ttft_s: float | None = None  # time to the first content token (streamed requests only)

    @classmethod
    def from_response(cls, response: Any, **transport: Any) -> "Completion":
        choice = response.choices[0]
        return cls(text=choice.message.content or "", finish_reason=choice.finish_reason,
                   usage=usage_of(response), logprobs=choice.logprobs.content if choice.logprobs else None,
                   **transport)


def to_result(task: Task, completion: Completion, id: Any = None) -> Result:
    """Parse a completion into a Result; an unparseable answer raises with the raw text attached."""
    text = completion.text
    try:
        if completion.finish_reason == "length":
            # A verdict cut short may still parse to the wrong number ('2.6' of '2.69'): never accept it.
            raise VerdictError(f"{task.name}: the answer was cut at max_tokens ({len(text)} characters); "
                               f"raise max_tokens")
        verdict = task.parse(text, completion.logprobs)
    except VerdictError as exc:
        error = UnparseableVerdictError(str(exc), text)
        error.completion = completion
        raise error from None
    return Result(task=task.name, verdict=verdict, text=text, usage=completion.usage, latency_s=completion.latency_s,
                  endpoint=completion.endpoint, attempts=completion.attempts, id=id)


def usage_of(response: Any) -> dict[str, int]:
    if getattr(response, "usage", None) is None:
        return {}
    return {"prompt_tokens": response.usage.prompt_tokens, "completion_tokens": response.usage.completion_tokens}


def translate_openai_error(exc: openai.OpenAIError) -> RequestFailedError:
    """One boundary where the openai package's errors become ours, marked retryable or not."""
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        kind = (AuthenticationError if status in (401, 403)
                else InputRejectedError if 400 <= status < 500 and status not in RETRYABLE_STATUS
                else RequestFailedError)
        return kind(f"server answered {status}: {exc.message}", status_code=status,
                    retryable=status in RETRYABLE_STATUS)
    if isinstance(exc, openai.APITimeoutError):
        return RequestFailedError(f"request timed out: {exc}", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return RequestFailedError(f"cannot reach the server: {exc}", retryable=True)
    return RequestFailedError(f"request failed: {exc}")


def swap_pair(task: Task, item: Item) -> Item:
    """The same pair in the other order: the two media, or the two answers (understanding tasks)."""
    if task.pairwise == "media":
        return replace(item, media=list(item.media)[::-1])
    if task.pairwise == "answers":
        fields = dict(item.fields)
        fields["answer1"], fields["answer2"] = item.fields.get("answer2"), item.fields.get("answer1")
        return replace(item, fields=fields)
    raise BadInputError(f"{task.name} is not a pairwise task: debias applies to pair tasks only")


def orders_agree(first: Verdict, swapped: Verdict) -> bool:
    """Both orders prefer the same item (or both call it even)."""
    a, b = first.reward - 0.5, (1.0 - swapped.reward) - 0.5
    return (a > 0 and b > 0) or (a < 0 and b < 0) or (a == 0 and b == 0)
