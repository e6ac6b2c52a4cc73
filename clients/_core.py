"""The client's pure logic: item -> request body, completion -> Result. No I/O here, so the sync client
(and later the async one) share it."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import openai

from prompts import PromptsError, Task, Verdict, VerdictError, get_task

from .errors import BadInputError, RequestFailedError, UnparseableVerdictError
from .media import encode_image, is_url


@dataclass(frozen=True)
class EncodeOptions:
    image_format: str
    quality: int
    min_pixels: int
    max_pixels: int


@dataclass(frozen=True)
class Result:
    """One scored item: the typed verdict, the model's raw text, token usage and timing."""

    task: str
    verdict: Verdict | None
    text: str | None
    usage: dict[str, int] = field(default_factory=dict)
    latency_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.to_dict() if self.verdict else None
        return d


def resolve_task(task: str | Task) -> Task:
    try:
        return get_task(task)
    except PromptsError as exc:
        raise BadInputError(str(exc)) from None


CONSTRAINTS = ("auto", "verdict", "none")
TOP_LOGPROBS = 20  # vLLM's default cap on top_logprobs


def encode_media(task: Task, media: Sequence[Any], options: EncodeOptions) -> list[Any]:
    """Images -> data URLs. Videos: a URL passes through (video_url), a list of frames -> frame data URLs."""
    if isinstance(media, (str, bytes)) or not isinstance(media, Sequence):
        media = [media]
    if len(media) != task.media.count:
        raise BadInputError(f"{task.name}: takes {task.media.count} {task.media.kind}(s), got {len(media)}")

    def image(item: Any) -> str:
        if is_url(item):
            return item
        return encode_image(item, image_format=options.image_format, quality=options.quality,
                            min_pixels=options.min_pixels, max_pixels=options.max_pixels)

    if task.media.kind == "image":
        return [image(m) for m in media]
    encoded: list[Any] = []
    for video in media:
        if is_url(video):
            encoded.append(video)
        elif isinstance(video, Sequence) and not isinstance(video, (str, bytes)):
            encoded.append([image(frame) for frame in video])
        else:
            raise BadInputError(f"{task.name}: give each video as a URL or as a list of frames "
                                f"({task.media.frames} per video in the authors' layout)")
    return encoded


def build_request(task: Task, urls: Sequence[Any], fields: Mapping[str, str], *, model: str,
                  constraint: str = "auto", logprobs: bool = False,
                  max_tokens: int | None = None) -> dict[str, Any]:
    """Keyword arguments for `chat.completions.create`: greedy and bounded. `constraint`: "auto" (the task's
    default: structured formats constrained, free reasoning not), "verdict" (always constrained; free
    reasoning skipped) or "none". `logprobs`: ask for the top alternatives, for soft scores."""
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
    if structured is not None:
        request["extra_body"] = {"structured_outputs": structured}
    if logprobs:
        request.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
    return request


def to_result(task: Task, completion: Any, started: float) -> Result:
    """Parse a chat completion; an unparseable answer raises with the raw text attached."""
    choice = completion.choices[0]
    text = choice.message.content or ""
    usage = {}
    if completion.usage is not None:
        usage = {"prompt_tokens": completion.usage.prompt_tokens,
                 "completion_tokens": completion.usage.completion_tokens}
    if choice.finish_reason == "length":
        # A verdict cut short may still parse to the wrong number ('2.6' of '2.69'): never accept it.
        raise UnparseableVerdictError(
            f"{task.name}: the answer was cut at max_tokens ({len(text)} characters); raise max_tokens", text)
    try:
        verdict = task.parse(text, choice.logprobs.content if choice.logprobs else None)
    except VerdictError as exc:
        raise UnparseableVerdictError(str(exc), text) from None
    return Result(task=task.name, verdict=verdict, text=text, usage=usage, latency_s=time.perf_counter() - started)


def translate_openai_error(exc: openai.OpenAIError) -> RequestFailedError:
    """One boundary where the openai package's errors become ours."""
    if isinstance(exc, openai.APIStatusError):
        detail = exc.message
        return RequestFailedError(f"server answered {exc.status_code}: {detail}", status_code=exc.status_code)
    if isinstance(exc, openai.APITimeoutError):
        return RequestFailedError(f"request timed out: {exc}")
    if isinstance(exc, openai.APIConnectionError):
        return RequestFailedError(f"cannot reach the server: {exc}")
    return RequestFailedError(f"request failed: {exc}")
