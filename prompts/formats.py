"""Output formats: one parser per format, parameterised by the task's data file.

Each format turns the model's text into a typed Verdict (or raises VerdictError naming the problem) and
states the vLLM `structured_outputs` constraint that makes any model's output parse.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

from .errors import VerdictError
from .verdicts import RankVerdict, ScoreVerdict, Verdict

# Markdown emphasis and headings that a model may wrap around a verdict.
_MARKUP = re.compile(r"[*_`#]+")
# A number as a model may write it, including the malformed ones we must reject rather than skip.
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?)"


def normalize(text: str) -> str:
    """Drop markdown emphasis so that '**Image 1 is better.**' reads as the plain phrase."""
    return _MARKUP.sub("", text)


def _phrase_pattern(phrase: str) -> str:
    """A case-insensitive pattern for a phrase: any run of white space matches any other."""
    words = phrase.strip().rstrip(".").split()
    return r"\s+".join(re.escape(w) for w in words)


def regex_literal(text: str) -> str:
    """Escape only regex metacharacters (re.escape also escapes spaces and '-', which some grammar engines reject)."""
    return re.sub(r"([\\.^$*+?{}\[\]|()])", r"\\\1", text)


def snake_case(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def number_in_range_regex(lo: int, hi: int, decimals: int = 4) -> str:
    """A regex for decimals in [lo, hi] (integer bounds): the constraint a grammar can enforce."""
    frac = rf"(?:\.[0-9]{{1,{decimals}}})?"
    below = "|".join(str(i) for i in range(lo, hi))
    return rf"(?:(?:{below}){frac}|{hi}(?:\.0{{1,{decimals}}})?)"


def parse_number(raw: str, what: str, lo: float, hi: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise VerdictError(f"{what}: {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise VerdictError(f"{what}: {raw!r} is not a finite number")
    if not lo <= value <= hi:
        raise VerdictError(f"{what}: {value:g} is outside the range [{lo:g}, {hi:g}]")
    return value


def _snippet(text: str, n: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= n else "..." + flat[-n:]


class OutputFormat:
    """Base of the formats: built from the task file's [output] table."""

    name: ClassVar[str]
    task: str

    def parse(self, text: str) -> Verdict:
        raise NotImplementedError

    def structured_outputs(self) -> dict[str, Any] | None:
        """vLLM's `structured_outputs` request field, or None where the format has free text."""
        raise NotImplementedError


@dataclass(frozen=True)
class ChoiceFormat(OutputFormat):
    """One of a fixed set of phrases, each naming a winner (0 = tie). The last phrase stated counts."""

    name: ClassVar[str] = "choice"
    task: str
    choices: tuple[tuple[str, int], ...]

    @classmethod
    def from_spec(cls, task: str, spec: Mapping[str, Any]) -> "ChoiceFormat":
        choices = tuple((c["text"], int(c["winner"])) for c in spec["choices"])
        if not choices or any(w not in (0, 1, 2) for _, w in choices):
            raise ValueError(f"{task}: choices need winners 0 (tie), 1 or 2")
        return cls(task=task, choices=choices)

    @property
    def _pattern(self) -> re.Pattern[str]:
        alternatives = "|".join(f"({_phrase_pattern(text)})" for text, _ in self.choices)
        return re.compile(alternatives, re.IGNORECASE)

    def parse(self, text: str) -> RankVerdict:
        matches = list(self._pattern.finditer(normalize(text)))
        if not matches:
            expected = " / ".join(repr(t) for t, _ in self.choices)
            raise VerdictError(f"{self.task}: no verdict found (expected {expected}) in {_snippet(text)!r}")
        last = matches[-1]
        winner = self.choices[last.lastindex - 1][1]
        if winner == 0:
            return RankVerdict(task=self.task, reward=0.5, winner=None)
        return RankVerdict(task=self.task, reward=1.0 if winner == 1 else 0.0, winner=winner)

    def structured_outputs(self) -> dict[str, Any]:
        return {"choice": [text for text, _ in self.choices]}


@dataclass(frozen=True)
class AxisScoresFormat(OutputFormat):
    """One line per axis, '<label>: <number>' with the number in a closed range; reward = mean normalised score."""

    name: ClassVar[str] = "axis_scores"
    task: str
    axes: tuple[str, ...]
    label: str
    lo: int
    hi: int

    @classmethod
    def from_spec(cls, task: str, spec: Mapping[str, Any]) -> "AxisScoresFormat":
        lo, hi = spec["range"]
        return cls(task=task, axes=tuple(spec["axes"]), label=spec["label"], lo=int(lo), hi=int(hi))

    def parse(self, text: str) -> ScoreVerdict:
        plain = normalize(text)
        scores: dict[str, float] = {}
        missing = []
        for axis in self.axes:
            label = self.label.format(axis=axis)
            found = re.findall(rf"{_phrase_pattern(label)}\s*:\s*({_NUMBER})", plain, re.IGNORECASE)
            if not found:
                missing.append(label)
                continue
            scores[snake_case(axis)] = parse_number(found[-1], f"{self.task}: {label}", self.lo, self.hi)
        if missing:
            raise VerdictError(f"{self.task}: missing {', '.join(repr(m) for m in missing)} in {_snippet(text)!r}")
        span = self.hi - self.lo
        reward = sum((v - self.lo) / span for v in scores.values()) / len(scores)
        return ScoreVerdict(task=self.task, reward=reward, scores=scores)

    def structured_outputs(self) -> dict[str, Any]:
        number = number_in_range_regex(self.lo, self.hi)
        lines = [regex_literal(self.label.format(axis=a)) + ": " + number for a in self.axes]
        return {"regex": r"\n".join(lines)}


FORMATS: dict[str, Callable[[str, Mapping[str, Any]], OutputFormat]] = {
    f.name: f.from_spec for f in (ChoiceFormat, AxisScoresFormat)
}


def build_format(task: str, spec: Mapping[str, Any]) -> OutputFormat:
    try:
        make = FORMATS[spec["format"]]
    except KeyError:
        raise ValueError(f"{task}: unknown output format {spec.get('format')!r}; known: {sorted(FORMATS)}") from None
    return make(task, spec)
