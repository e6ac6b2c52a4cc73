"""From an item to a request body: the media encoded for the model, the authors' prompt, greedy decoding, the
task's constraint. Pure functions (encoding runs in worker threads); the public ones are what the
benchmarks and the CLI build requests with."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from unifiedreward.prompts import PromptsError, Task, get_task

from ._constants import DEFAULT_IMAGE_FORMAT, DEFAULT_JPEG_QUALITY, IMAGE_FACTOR, MAX_PIXELS, MIN_PIXELS
from ._types import LOGPROBS_MODES, Item, Logprobs
from .errors import BadInputError
from ._uuids import image_part
from .media import encode_image, encode_video_url, is_url, video_frames

CONSTRAINTS = ("auto", "verdict", "none")
# decode="decisive": stop a constrained verdict at the token that decides it, where that gives exactly the full
# answer's verdict and soft score (the task's `decisive_stops`); "full": decode the whole answer.
DECODES = ("decisive", "full")
VIDEO_MODES = ("frames", "url")
IMAGE_FORMATS = ("JPEG", "PNG")
MIN_MAX_PIXELS = IMAGE_FACTOR * IMAGE_FACTOR  # the smallest image the Qwen sizing rule can produce
TOP_LOGPROBS = 20  # vLLM's default cap on top_logprobs


@dataclass(frozen=True)
class EncodeOptions:
    """How media are prepared on the client: resized to the pixel budget the server would pick anyway,
    encoded as `image_format` (JPEG at `quality`, the authors' input distribution), videos as frames or
    passed as one file (video_mode="url")."""

    image_format: str = DEFAULT_IMAGE_FORMAT
    quality: int = DEFAULT_JPEG_QUALITY
    min_pixels: int = MIN_PIXELS
    max_pixels: int | None = MAX_PIXELS  # None: full size (a server without a pixel cap)
    video_mode: str = "frames"  # "url": the file, for the server to sample: off the trained frame layout
    uuids: bool = True  # inline images carry the hash of their data as vLLM's media `uuid` (clients/_uuids.py)

    def __post_init__(self) -> None:
        """Refuse values that would crash the encoder or silently send images outside the bounds."""
        if not isinstance(self.image_format, str) or self.image_format.upper() not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, not {self.image_format!r}")
        if isinstance(self.quality, bool) or not isinstance(self.quality, int) or not 1 <= self.quality <= 100:
            raise ValueError(f"jpeg_quality must be an integer from 1 to 100, not {self.quality!r}")
        if isinstance(self.min_pixels, bool) or not isinstance(self.min_pixels, int) or self.min_pixels < 0:
            raise ValueError(f"min_pixels must be an integer of at least 0, not {self.min_pixels!r}")
        if self.max_pixels is not None:
            if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) \
                    or self.max_pixels < MIN_MAX_PIXELS:
                raise ValueError(f"max_pixels must be None (full size) or an integer of at least {MIN_MAX_PIXELS} "
                                 f"(one {IMAGE_FACTOR} x {IMAGE_FACTOR} cell), not {self.max_pixels!r}")
            if self.min_pixels > self.max_pixels:
                raise ValueError(f"min_pixels ({self.min_pixels}) must not be above max_pixels ({self.max_pixels})")
        if self.video_mode not in VIDEO_MODES:
            raise ValueError(f"video_mode must be one of {', '.join(VIDEO_MODES)}, not {self.video_mode!r}")


def resolve_task(task: str | Task) -> Task:
    try:
        return get_task(task)
    except PromptsError as exc:
        raise BadInputError(str(exc)) from None


def encode_one(kind: str, frames: int | None, item: Any, options: EncodeOptions) -> Any:
    """One media item of a task whose media are `kind`. Images -> a data URL (as a content part with its uuid
    when options.uuids; other URLs and ready parts pass through). A video: a URL passes through; a file or
    bytes -> `frames` evenly spaced frames (or the file itself with video_mode="url"); a list of frames ->
    frame images. Runs in a worker thread: decoding never blocks the event loop."""

    def image(x: Any) -> Any:
        if isinstance(x, Mapping):
            return x  # a content part already built (an image encoded once for several requests)
        url = x if is_url(x) else encode_image(x, image_format=options.image_format, quality=options.quality,
                                                min_pixels=options.min_pixels, max_pixels=options.max_pixels)
        return image_part(url) if options.uuids else url

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


def encode_media(task: Task, media: Sequence[Any], options: EncodeOptions = EncodeOptions()) -> list[Any]:
    """All media of one item, checked against the task's layout."""
    if isinstance(media, (str, bytes)) or not isinstance(media, Sequence):
        media = [media]
    if len(media) != task.media.count:
        raise BadInputError(f"{task.name}: takes {task.media.count} {task.media.kind}(s), got {len(media)}")
    return [encode_one(task.media.kind, task.media.frames, m, options) for m in media]


def structured_for(task: Task, constraint: str) -> dict[str, Any] | None:
    """The `structured_outputs` constraint a request carries: "auto" (the task's default: structured formats
    constrained, free reasoning not), "verdict" (always constrained; free reasoning skipped) or "none"."""
    if constraint not in CONSTRAINTS:
        raise BadInputError(f"constraint must be one of {CONSTRAINTS}, not {constraint!r}")
    return {"auto": task.structured_outputs, "verdict": task.verdict_constraint, "none": None}[constraint]


def decides_early(task: Task, constraint: str, decode: str, extra_body: Mapping[str, Any] | None = None) -> bool:
    """Whether the request stops at the deciding token: decode="decisive", the answer constrained to the
    verdict from its first token, a task whose `decisive_stops` are exact, and no fixed-length answer asked."""
    if decode not in DECODES:
        raise BadInputError(f"decode must be one of {DECODES}, not {decode!r}")
    if decode != "decisive" or not task.decisive_stops or (extra_body or {}).get("ignore_eos"):
        return False
    structured = structured_for(task, constraint)
    return structured is not None and structured == task.verdict_constraint


def build_request(task: Task, urls: Sequence[Any], fields: Mapping[str, str], *, model: str,
                  constraint: str = "auto", logprobs: Logprobs = False, max_tokens: int | None = None,
                  extra_body: Mapping[str, Any] | None = None, decode: str = "decisive") -> dict[str, Any]:
    """Keyword arguments for `chat.completions.create`: greedy and bounded. `constraint`: see structured_for.
    `logprobs`: ask for the top alternatives, for soft scores (True or "require"; "require" is refused for a
    task that has no soft score). `decode`: "decisive" stops a constrained verdict at its deciding token where
    that is exact (decides_early: "Image 1" instead of "Image 1 is better."; the same verdict and soft score
    from 3 tokens instead of 7), "full" decodes the whole answer.
    `extra_body`: more vLLM request fields (e.g. {"ignore_eos": true}, {"priority": 1})."""
    structured = structured_for(task, constraint)
    early = decides_early(task, constraint, decode, extra_body)
    if logprobs not in LOGPROBS_MODES:
        raise BadInputError(f"logprobs must be one of {LOGPROBS_MODES}, not {logprobs!r}")
    if logprobs == "require" and not task.soft_scores:
        raise BadInputError(f"{task.name} has no soft score (only pairwise choices and one-digit final scores "
                            f"do): logprobs='require' would fail every item; use logprobs=True or False")
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
    body = dict(extra_body or {})
    if structured is not None:
        body["structured_outputs"] = structured
    if early:
        # vLLM ends the request when the text reaches a stop string (the token that completes it is kept, with
        # its logprobs); the text runs to the stop's end, so the parser sees which choice was decided.
        request["stop"] = list(task.decisive_stops)
        body["include_stop_str_in_output"] = True
    if body:
        request["extra_body"] = body
    if logprobs:
        request.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
    return request


def swap_pair(task: Task, item: Item) -> Item:
    """The same pair in the other order: the two media, or the two answers (understanding tasks)."""
    if task.pairwise == "media":
        return replace(item, media=list(item.media)[::-1])
    if task.pairwise == "answers":
        fields = dict(item.fields)
        fields["answer1"], fields["answer2"] = item.fields.get("answer2"), item.fields.get("answer1")
        return replace(item, fields=fields)
    raise BadInputError(f"{task.name} is not a pairwise task: debias applies to pair tasks only")
