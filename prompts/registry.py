"""The task registry: one TOML file per task in prompts/tasks/, loaded once into frozen Task objects."""
from __future__ import annotations

import string
import tomllib
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any, Mapping, Sequence, Union

from .errors import FieldError, MediaError, UnknownTaskError
from .formats import OutputFormat, build_format
from .verdicts import Verdict

MEDIA_KINDS = ("image", "video")
MediaItem = Union[str, Mapping[str, Any]]


@dataclass(frozen=True)
class MediaLayout:
    """What the task shows the model: `count` items of `kind`, placed before the text. A video goes either
    as one `video_url` part or as its frames, `frames` image parts per video (the authors' vLLM layout)."""

    kind: str
    count: int
    frames: int | None = None


@dataclass(frozen=True)
class Task:
    name: str
    version: int
    source: str
    fields: tuple[str, ...]
    template: str
    media: MediaLayout
    output: OutputFormat
    # Output token budget for a request (the format's longest verdict, with margin).
    max_tokens: int
    # Pairwise tasks: what swapping the pair means ("media" or "answers"); None for pointwise tasks.
    pairwise: str | None = None
    # Tokens in a typical trained-model answer: what load tests fix the output length to.
    typical_tokens: int = 0

    def render(self, **fields: str) -> str:
        """The prompt text: exactly `template.format(**fields)`, but a missing or unknown field is an error."""
        missing = [f for f in self.fields if f not in fields]
        unknown = sorted(set(fields) - set(self.fields))
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if unknown:
                parts.append(f"unexpected {unknown}")
            raise FieldError(f"{self.name}: fields {' and '.join(parts)}; the task takes {list(self.fields)}")
        for key, value in fields.items():
            if not isinstance(value, str):
                raise FieldError(f"{self.name}: field {key!r} must be a string, not {type(value).__name__}")
        return self.template.format(**fields)

    def _part(self, item: MediaItem, kind: str) -> dict[str, Any]:
        if isinstance(item, Mapping):
            return dict(item)
        if not isinstance(item, str):
            raise MediaError(f"{self.name}: a media item must be a URL string or a content part, "
                             f"not {type(item).__name__}")
        key = f"{kind}_url"
        return {"type": key, key: {"url": item}}

    def media_parts(self, media: Sequence[MediaItem | Sequence[MediaItem]]) -> list[dict[str, Any]]:
        """OpenAI content parts for the task's media, in order. Images: URLs (data:, http(s):) or ready parts.
        Videos: a URL each (one video_url part), or a list of frame URLs each (image parts, Video 1 first)."""
        if isinstance(media, (str, bytes, Mapping)) or len(media) != self.media.count:
            got = 1 if isinstance(media, (str, bytes, Mapping)) else len(media)
            raise MediaError(f"{self.name}: takes {self.media.count} {self.media.kind}(s), got {got}")
        parts = []
        for item in media:
            if self.media.kind == "video" and not isinstance(item, (str, Mapping)):
                if not item:
                    raise MediaError(f"{self.name}: a video given as frames needs at least one frame")
                parts += [self._part(frame, "image") for frame in item]
            else:
                parts.append(self._part(item, self.media.kind))
        return parts

    def messages(self, media: Sequence[MediaItem | Sequence[MediaItem]], **fields: str) -> list[dict[str, Any]]:
        """OpenAI chat messages in the trained layout: one user turn, the media parts first, then the text."""
        content = self.media_parts(media)
        content.append({"type": "text", "text": self.render(**fields)})
        return [{"role": "user", "content": content}]

    def parse(self, text: str, logprobs: Sequence[Any] | None = None, decisive: bool = False) -> Verdict:
        """The typed verdict, or VerdictError. `logprobs`: the response's `logprobs.content` (for soft scores).
        decisive=True: the answer was stopped at one of `decisive_stops` (so it ends there)."""
        return self.output.parse(text, logprobs, decisive)

    @property
    def decisive_stops(self) -> tuple[str, ...] | None:
        """Stop strings that end the constrained verdict at the token deciding it (same tokens, logprobs and
        verdict as the full answer, fewer tokens decoded); None where that is not exact."""
        return self.output.decisive_stops()

    @property
    def soft_scores(self) -> bool:
        """Whether logprobs can give this task a soft reward (pairwise choices, one-digit final scores)."""
        return self.output.soft_scores

    @property
    def free_reasoning(self) -> bool:
        """True when the format reasons in free text before the verdict (then unconstrained by default)."""
        return self.output.free_reasoning

    @property
    def structured_outputs(self) -> dict[str, Any] | None:
        """The default decoding constraint for vLLM's `structured_outputs` field (None: free reasoning)."""
        return self.output.structured_outputs()

    @property
    def verdict_constraint(self) -> dict[str, Any]:
        """A constraint under which any answer parses; for free-reasoning tasks it skips the reasoning."""
        return self.output.verdict_constraint()


def _load(text: str, origin: str) -> Task:
    data = tomllib.loads(text)
    name = data["name"]
    fields = tuple(data["fields"])
    placeholders = {f for _, f, _, _ in string.Formatter().parse(data["template"]) if f}
    if placeholders != set(fields):
        raise ValueError(f"{origin}: template fields {sorted(placeholders)} differ from declared {list(fields)}")
    media = MediaLayout(kind=data["media"]["kind"], count=int(data["media"]["count"]),
                        frames=data["media"].get("frames"))
    if media.kind not in MEDIA_KINDS or media.count < 1:
        raise ValueError(f"{origin}: bad media layout {media}")
    pairwise = data["output"].get("pairwise")
    if pairwise not in (None, "media", "answers") or (pairwise == "media" and media.count != 2):
        raise ValueError(f"{origin}: pairwise must be 'media' (with 2 media) or 'answers', not {pairwise!r}")
    return Task(
        name=name,
        version=int(data["version"]),
        source=data["source"],
        fields=fields,
        template=data["template"],
        media=media,
        output=build_format(name, data["output"]),
        max_tokens=int(data["output"]["max_tokens"]),
        pairwise=data["output"].get("pairwise"),
        typical_tokens=int(data["output"]["typical_tokens"]),
    )


def load_tasks() -> Mapping[str, Task]:
    tasks = {}
    for entry in sorted(resources.files(__package__).joinpath("tasks").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            task = _load(entry.read_text(encoding="utf-8"), entry.name)
            if entry.name != f"{task.name}.toml":
                raise ValueError(f"{entry.name}: file name must be <task name>.toml ({task.name})")
            tasks[task.name] = task
    return MappingProxyType(tasks)


TASKS: Mapping[str, Task] = load_tasks()


def get_task(name: str | Task) -> Task:
    if isinstance(name, Task):
        return name
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
