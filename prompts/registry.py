"""The task registry: one TOML file per task in prompts/tasks/, loaded once into frozen Task objects."""
from __future__ import annotations

import string
import tomllib
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from .errors import FieldError, MediaError, UnknownTaskError
from .formats import OutputFormat, build_format
from .verdicts import Verdict

MEDIA_KINDS = ("image", "video")


@dataclass(frozen=True)
class MediaLayout:
    """What the task shows the model: `count` items of `kind`, placed before the text."""

    kind: str
    count: int


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

    def media_part(self, item: str | Mapping[str, Any]) -> dict[str, Any]:
        """An OpenAI content part for one media item: a URL (data:, http(s):) or a ready content part."""
        if isinstance(item, Mapping):
            return dict(item)
        if not isinstance(item, str):
            raise MediaError(f"{self.name}: a media item must be a URL string or a content part, "
                             f"not {type(item).__name__}")
        key = f"{self.media.kind}_url"
        return {"type": key, key: {"url": item}}

    def messages(self, media: Sequence[str | Mapping[str, Any]], **fields: str) -> list[dict[str, Any]]:
        """OpenAI chat messages in the trained layout: one user turn, the media parts first, then the text."""
        if isinstance(media, (str, bytes)) or len(media) != self.media.count:
            got = 1 if isinstance(media, (str, bytes)) else len(media)
            raise MediaError(f"{self.name}: takes {self.media.count} {self.media.kind}(s), got {got}")
        content = [self.media_part(m) for m in media]
        content.append({"type": "text", "text": self.render(**fields)})
        return [{"role": "user", "content": content}]

    def parse(self, text: str) -> Verdict:
        return self.output.parse(text)

    @property
    def structured_outputs(self) -> dict[str, Any] | None:
        """The decoding constraint for vLLM's `structured_outputs` request field (None: free text)."""
        return self.output.structured_outputs()


def _load(text: str, origin: str) -> Task:
    data = tomllib.loads(text)
    name = data["name"]
    fields = tuple(data["fields"])
    placeholders = {f for _, f, _, _ in string.Formatter().parse(data["template"]) if f}
    if placeholders != set(fields):
        raise ValueError(f"{origin}: template fields {sorted(placeholders)} differ from declared {list(fields)}")
    media = MediaLayout(kind=data["media"]["kind"], count=int(data["media"]["count"]))
    if media.kind not in MEDIA_KINDS or media.count < 1:
        raise ValueError(f"{origin}: bad media layout {media}")
    return Task(
        name=name,
        version=int(data["version"]),
        source=data["source"],
        fields=fields,
        template=data["template"],
        media=media,
        output=build_format(name, data["output"]),
        max_tokens=int(data["output"]["max_tokens"]),
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
