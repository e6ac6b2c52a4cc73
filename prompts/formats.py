"""Output formats: one parser per format, parameterised by the task's data file.

Each format turns the model's text into a typed Verdict, or raises VerdictError naming the problem (never a
default value), and states the vLLM `structured_outputs` constraint that makes any model's output parse.
Formats with free reasoning before the verdict are unconstrained by default; their `verdict_constraint`
(opt-in) makes the model state only the verdict.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

from .errors import VerdictError
from .softscores import align, choice_probabilities, expected_digit
from .verdicts import FinalScoreVerdict, PairScoreVerdict, RankVerdict, ScoreVerdict, Verdict

# Markdown emphasis and headings that a model may wrap around a verdict.
_MARKUP = re.compile(r"[*_`#]+")
# A number as a model may write it, including the malformed ones we must reject rather than skip.
NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?)"
DECIMALS = 4  # digits after the point that constraints allow
# vLLM 0.32 takes at most this many stop strings in a request (VLLM_MAX_STOP_STRINGS; more: a 400).
MAX_STOP_STRINGS = 4
# Pair scores are constrained to complementary values on this grid (x + y = 1 exactly), so that every
# constrained pair-score answer passes the parser's sum check: two decimals per score.
PAIR_GRID = 100


def normalize(text: str) -> str:
    """Drop markdown emphasis so that '**Image 1 is better.**' reads as the plain phrase."""
    return _MARKUP.sub("", text)


def phrase_pattern(phrase: str) -> str:
    """A pattern for a phrase in which any run of white space matches any other (use re.IGNORECASE)."""
    words = phrase.strip().rstrip(".").split()
    return r"\s+".join(re.escape(w) for w in words)


def regex_literal(text: str) -> str:
    """Escape only regex metacharacters (re.escape also escapes spaces and '-', which some grammar engines reject)."""
    return re.sub(r"([\\.^$*+?{}\[\]|()])", r"\\\1", text)


def snake_case(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def number_regex(lo: int, hi: int, integer: bool = False) -> str:
    """A regex for numbers in [lo, hi] (integer bounds, at most DECIMALS decimals): what a grammar enforces."""
    below = "|".join(str(i) for i in range(hi - 1, lo - 1, -1))  # longest first: 10 before 1
    if integer:
        return rf"(?:{hi}|{below})" if lo < hi else str(hi)
    frac = rf"(?:\.[0-9]{{1,{DECIMALS}}})?"
    return rf"(?:{hi}(?:\.0{{1,{DECIMALS}}})?|(?:{below}){frac})"


def number_chars(hi: int, integer: bool = False) -> int:
    """The longest number number_regex admits."""
    return len(str(hi)) if integer else len(str(max(hi - 1, 0))) + 1 + DECIMALS


def grid_value(k: int, full: bool = False) -> str:
    """k / PAIR_GRID written with two decimals (full) or the fewest digits: 0.4 / 0.40, 1 / 1.00."""
    text = f"{k / PAIR_GRID:.2f}"
    return text if full else text.rstrip("0").rstrip(".")


def grid_spellings(k: int) -> str:
    """A regex for every way of writing k / PAIR_GRID with at most two decimals: 0.4, 0.40; 1, 1.0, 1.00."""
    short, full = grid_value(k), grid_value(k, full=True)
    if "." not in short:  # 0 or 1
        return rf"{short}(?:\.0{{1,2}})?"
    return regex_literal(short) + ("0?" if len(short) < len(full) else "")


def parse_number(raw: str, what: str, lo: float, hi: float, integer: bool = False) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise VerdictError(f"{what}: {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise VerdictError(f"{what}: {raw!r} is not a finite number")
    if not lo <= value <= hi:
        raise VerdictError(f"{what}: {value:g} is outside the range [{lo:g}, {hi:g}]")
    if integer and value != int(value):
        raise VerdictError(f"{what}: {value:g} is not a whole number")
    return value


def snippet(text: str, n: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= n else "..." + flat[-n:]


def last_labelled_number(text: str, label: str) -> re.Match[str] | None:
    """The last '<label>: <number>' in the text (label matched loosely); group 1 is the number."""
    matches = list(re.finditer(rf"{phrase_pattern(label)}\s*:\s*({NUMBER})", text, re.IGNORECASE))
    return matches[-1] if matches else None


class OutputFormat:
    """Base of the formats: built from the task file's [output] table."""

    name: ClassVar[str]
    task: str
    free_reasoning: bool = False

    @property
    def soft_scores(self) -> bool:
        """Whether a soft reward can be read from the verdict tokens' logprobs (p_first, expected_score)."""
        return False

    def parse(self, text: str, logprobs: Sequence[Any] | None = None, decisive: bool = False) -> Verdict:
        """The verdict of an answer; decisive=True: the answer was stopped at one of `decisive_stops()`."""
        raise NotImplementedError

    def decisive_stops(self) -> tuple[str, ...] | None:
        """Stop strings that end an answer under `verdict_constraint()` right after the token that decides its
        verdict, so that the tokens decoded, their logprobs and so the verdict and soft score are those of the
        full answer, with fewer tokens. None where no such set is exact (or nothing would be saved)."""
        return None

    def verdict_constraint(self) -> dict[str, Any]:
        """A `structured_outputs` constraint under which every answer parses."""
        raise NotImplementedError

    def structured_outputs(self) -> dict[str, Any] | None:
        """The default constraint: none where the format reasons in free text before its verdict."""
        return None if self.free_reasoning else self.verdict_constraint()

    def max_verdict_chars(self) -> int:
        """The longest answer the verdict constraint admits. Under a grammar a model may spend one token
        per character, so a task's token budget must exceed this or a verdict can be cut short."""
        raise NotImplementedError


@dataclass(frozen=True)
class ChoiceFormat(OutputFormat):
    """One of a few phrases, each naming a winner (0 = tie). The last phrase stated counts.
    reward: 1.0 if the first item wins, 0.0 if the second, 0.5 for a tie; p_first instead when known."""

    name: ClassVar[str] = "choice"
    task: str
    choices: tuple[tuple[str, int], ...]
    free_reasoning: bool = False

    @classmethod
    def from_spec(cls, task: str, spec: Mapping[str, Any]) -> "ChoiceFormat":
        choices = tuple((c["text"], int(c["winner"])) for c in spec["choices"])
        if not choices or any(w not in (0, 1, 2) for _, w in choices):
            raise ValueError(f"{task}: choices need winners 0 (tie), 1 or 2")
        return cls(task=task, choices=choices, free_reasoning=bool(spec.get("free_reasoning", False)))

    def parse(self, text: str, logprobs: Sequence[Any] | None = None, decisive: bool = False) -> RankVerdict:
        plain = normalize(text)
        stops = (self.decisive_stops() or ()) if decisive else ()
        if plain in stops:
            # Stopped at the deciding token: the answer is the start of one choice, up to its stop string.
            winner, start = self.choices[stops.index(plain)][1], 0
        else:  # a whole answer (also where a server ignored the stop strings)
            pattern = "|".join(f"({phrase_pattern(phrase)})" for phrase, _ in self.choices)
            matches = list(re.finditer(pattern, plain, re.IGNORECASE))
            if not matches:
                expected = " / ".join(repr(t) for t, _ in self.choices)
                raise VerdictError(f"{self.task}: no verdict found (expected {expected}) in {snippet(text)!r}")
            last = matches[-1]
            winner, start = self.choices[last.lastindex - 1][1], last.start()
        hard = {1: 1.0, 2: 0.0, 0: 0.5}[winner]
        tokens = align(text, logprobs) if plain == text else None  # offsets hold only for unmodified text
        if tokens:
            phrases = [(p.rstrip("."), w) for p, w in self.choices]
            probs = choice_probabilities(text, tokens, phrases, start)
            if probs:
                p_first = probs.get(1, 0.0) + 0.5 * probs.get(0, 0.0)
                return RankVerdict(task=self.task, reward=p_first, winner=winner or None, p_first=p_first,
                                   reward_kind="soft", hard_reward=hard)
        return RankVerdict(task=self.task, reward=hard, winner=winner or None)

    @property
    def soft_scores(self) -> bool:
        return True

    def verdict_constraint(self) -> dict[str, Any]:
        return {"choice": [text for text, _ in self.choices]}

    def decisive_stops(self) -> tuple[str, ...] | None:
        """Per choice (in order) its shortest start that no other choice shares, run on to the end of its word:
        "Image 1", "Image 2", "Both". Under the choice constraint the first of these to appear ends the phrase
        it starts, at the token that settles the choice (`choice_probabilities` stops reading there too)."""
        texts = [text for text, _ in self.choices]
        stops = []
        for text in texts:
            cut = next((n for n in range(1, len(text) + 1)
                        if not any(o.startswith(text[:n]) for o in texts if o != text)), None)
            if cut is None:
                return None  # a choice that is the start of another is never decided early
            space = text.find(" ", cut)
            stops.append(text[: space if space != -1 else len(text)])
        if len(stops) > MAX_STOP_STRINGS:
            return None
        # Exact only if, in every choice, its own stop is the first of the stops to be complete.
        for text, own in zip(texts, stops):
            first = min((text.find(s) + len(s), s) for s in stops if s in text)
            if first != (len(own), own):
                return None
        return tuple(stops)

    def max_verdict_chars(self) -> int:
        return max(len(text) for text, _ in self.choices)


@dataclass(frozen=True)
class PairScoresFormat(OutputFormat):
    """Per axis a header '<Axis> Score:' then '<Item> 1: x' and '<Item> 2: y', each in [0, 1], x + y = 1.
    reward: the first item's share x / (x + y), averaged over the axes."""

    name: ClassVar[str] = "pair_scores"
    task: str
    axes: tuple[str, ...]
    item: str
    sum_tolerance: float = 0.01

    @classmethod
    def from_spec(cls, task: str, spec: Mapping[str, Any]) -> "PairScoresFormat":
        return cls(task=task, axes=tuple(spec["axes"]), item=spec["item"],
                   sum_tolerance=float(spec.get("sum_tolerance", 0.01)))

    def parse(self, text: str, logprobs: Sequence[Any] | None = None, decisive: bool = False) -> PairScoreVerdict:
        plain = normalize(text)
        scores: dict[str, list[float]] = {}
        missing = []
        for axis in self.axes:
            block = (rf"{phrase_pattern(axis + ' Score')}\s*:?[\s-]*"
                     rf"{phrase_pattern(self.item + ' 1')}\s*:\s*({NUMBER})[\s,;-]*"
                     rf"{phrase_pattern(self.item + ' 2')}\s*:\s*({NUMBER})")
            found = re.findall(block, plain, re.IGNORECASE)
            if not found:
                missing.append(f"{axis} Score")
                continue
            what = f"{self.task}: {axis} Score"
            pair = [parse_number(raw, f"{what}, {self.item} {i}", 0.0, 1.0) for i, raw in enumerate(found[-1], 1)]
            if abs(sum(pair) - 1.0) > self.sum_tolerance:
                raise VerdictError(f"{what}: {pair[0]:g} + {pair[1]:g} = {sum(pair):g}, not 1 "
                                   f"(tolerance {self.sum_tolerance:g})")
            scores[snake_case(axis)] = pair
        if missing:
            raise VerdictError(f"{self.task}: missing {', '.join(repr(m) for m in missing)} in {snippet(text)!r}")
        reward = sum(a / (a + b) for a, b in scores.values()) / len(scores)
        return PairScoreVerdict(task=self.task, reward=reward, scores=scores)

    def verdict_constraint(self) -> dict[str, Any]:
        """Per axis, one of the PAIR_GRID + 1 complementary pairs (x, 1 - x): a grammar cannot add two free
        numbers, but it can list the pairs that sum to 1, so every constrained answer passes the sum check."""
        second = regex_literal(f"\n {self.item} 2: ").replace("\n", r"\n")
        pairs = "|".join(f"{grid_spellings(k)}{second}{grid_spellings(PAIR_GRID - k)}" for k in range(PAIR_GRID + 1))
        blocks = [rf"{regex_literal(axis)} Score:\n {self.item} 1: (?:{pairs})" for axis in self.axes]
        return {"regex": r"\n\n".join(blocks)}

    def max_verdict_chars(self) -> int:
        longest = max(len(grid_value(k, full=True)) + len(grid_value(PAIR_GRID - k, full=True))
                      for k in range(PAIR_GRID + 1))
        block = len(f"X Score:\n {self.item} 1: \n {self.item} 2: ") - 1 + longest
        return sum(block + len(axis) for axis in self.axes) + 2 * (len(self.axes) - 1)


@dataclass(frozen=True)
class AxisScoresFormat(OutputFormat):
    """One line per axis, '<label>: <number>' in a closed range, optionally after a JSON-like
    'Word-wise Scores: [["word", s], ...]' list. reward: the mean axis score mapped to [0, 1]."""

    name: ClassVar[str] = "axis_scores"
    task: str
    axes: tuple[str, ...]
    label: str
    lo: int
    hi: int
    word_scores: bool = False

    WORDS_LABEL: ClassVar[str] = "Word-wise Scores"
    # The word-wise constraint admits up to MAX_WORDS entries of up to WORD_CHARS characters each.
    MAX_WORDS: ClassVar[int] = 32
    WORD_CHARS: ClassVar[int] = 24

    @classmethod
    def from_spec(cls, task: str, spec: Mapping[str, Any]) -> "AxisScoresFormat":
        lo, hi = spec["range"]
        return cls(task=task, axes=tuple(spec["axes"]), label=spec["label"], lo=int(lo), hi=int(hi),
                   word_scores=bool(spec.get("word_scores", False)))

    def parse(self, text: str, logprobs: Sequence[Any] | None = None, decisive: bool = False) -> ScoreVerdict:
        plain = normalize(text)
        scores: dict[str, float] = {}
        missing = []
        for axis in self.axes:
            label = self.label.format(axis=axis)
            found = last_labelled_number(plain, label)
            if found is None:
                missing.append(label)
                continue
            scores[snake_case(axis)] = parse_number(found.group(1), f"{self.task}: {label}", self.lo, self.hi)
        words = self._parse_words(text) if self.word_scores else None
        if missing:
            raise VerdictError(f"{self.task}: missing {', '.join(repr(m) for m in missing)} in {snippet(text)!r}")
        span = self.hi - self.lo
        reward = sum((v - self.lo) / span for v in scores.values()) / len(scores)
        return ScoreVerdict(task=self.task, reward=reward, scores=scores, word_scores=words)

    def _parse_words(self, text: str) -> list[list[Any]]:
        """The word-wise list; every score finite (the prompt sets no range: higher = less well shown)."""
        found = list(re.finditer(rf"{phrase_pattern(self.WORDS_LABEL)}\s*:\s*(\[.*?\]\s*\])", text,
                                 re.IGNORECASE | re.DOTALL))
        if not found:
            raise VerdictError(f"{self.task}: missing '{self.WORDS_LABEL}: [[\"word\", score], ...]' "
                               f"in {snippet(text)!r}")
        raw = found[-1].group(1)
        try:
            pairs = json.loads(raw)
        except json.JSONDecodeError:
            raise VerdictError(f"{self.task}: {self.WORDS_LABEL} is not a valid list: {snippet(raw, 80)!r}") from None
        words = []
        for pair in pairs:
            if (not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], str)
                    or isinstance(pair[1], bool) or not isinstance(pair[1], (int, float))):
                raise VerdictError(f"{self.task}: {self.WORDS_LABEL} entry {pair!r} is not [\"word\", score]")
            if not math.isfinite(pair[1]):
                raise VerdictError(f"{self.task}: {self.WORDS_LABEL} score of {pair[0]!r} is not finite")
            words.append([pair[0], float(pair[1])])
        return words

    def verdict_constraint(self) -> dict[str, Any]:
        number = number_regex(self.lo, self.hi)
        lines = [regex_literal(self.label.format(axis=a)) + ": " + number for a in self.axes]
        axes = r"\n".join(lines)
        if not self.word_scores:
            return {"regex": axes}
        entry = r'\["[^"\\\n]{1,%d}", [0-9](?:\.[0-9]{1,%d})?\]' % (self.WORD_CHARS, DECIMALS)
        words = rf"{regex_literal(self.WORDS_LABEL)}: \[{entry}(?:, {entry}){{0,{self.MAX_WORDS - 1}}}\]"
        return {"regex": words + r"\n\n" + axes}

    def max_verdict_chars(self) -> int:
        axes = sum(len(self.label.format(axis=a)) + 2 + number_chars(self.hi) for a in self.axes) + len(self.axes) - 1
        if not self.word_scores:
            return axes
        entry = len('["", ]') + self.WORD_CHARS + 1 + 1 + DECIMALS
        words = len(self.WORDS_LABEL) + len(": []") + self.MAX_WORDS * entry + (self.MAX_WORDS - 1) * 2
        return words + 2 + axes


@dataclass(frozen=True)
class FinalScoreFormat(OutputFormat):
    """'Final Score: X' in a range, after free reasoning, sub-score lines or element lines as the task says.
    reward: (final - lo) / (hi - lo); the expected score instead when logprobs give it."""

    name: ClassVar[str] = "final_score"
    task: str
    lo: int
    hi: int
    integer: bool = False
    subscores: tuple[str, ...] = ()
    sub_range: tuple[int, int] = (1, 5)
    elements: bool = False
    free_reasoning: bool = False

    # No decisive_stops: the digit of a one-digit final score is already the answer's last token, so stopping
    # there would save only the end token, with one stop string per digit ('Final Score: 1' ... '5'), more than
    # the MAX_STOP_STRINGS vLLM takes in a request (measured: a 400 for five).
    LABEL: ClassVar[str] = "Final Score"
    # The element constraint admits up to MAX_ELEMENTS lines 'element (type): 0|1' of bounded length.
    MAX_ELEMENTS: ClassVar[int] = 10
    ELEMENT_CHARS: ClassVar[int] = 40
    TYPE_CHARS: ClassVar[int] = 20

    @classmethod
    def from_spec(cls, task: str, spec: Mapping[str, Any]) -> "FinalScoreFormat":
        lo, hi = spec["range"]
        return cls(task=task, lo=int(lo), hi=int(hi), integer=bool(spec.get("integer", False)),
                   subscores=tuple(spec.get("subscores", ())), sub_range=tuple(spec.get("sub_range", (1, 5))),
                   elements=bool(spec.get("elements", False)), free_reasoning=bool(spec.get("free_reasoning", False)))

    def parse(self, text: str, logprobs: Sequence[Any] | None = None, decisive: bool = False) -> FinalScoreVerdict:
        plain = normalize(text)
        final = last_labelled_number(plain, self.LABEL)
        if final is None:
            raise VerdictError(f"{self.task}: no '{self.LABEL}: X' found in {snippet(text)!r}")
        value = parse_number(final.group(1), f"{self.task}: {self.LABEL}", self.lo, self.hi, self.integer)
        scores = self._parse_subscores(plain[:final.start()]) if self.subscores else None
        elements = self._parse_elements(plain[:final.start()]) if self.elements else None
        hard = (value - self.lo) / (self.hi - self.lo)
        if logprobs is not None and plain == text and self.soft_scores and final.group(1).isdigit():
            tokens = align(text, logprobs)
            expected = expected_digit(tokens, final.start(1), self.lo, self.hi) if tokens else None
            if expected is not None:
                return FinalScoreVerdict(task=self.task, reward=(expected - self.lo) / (self.hi - self.lo),
                                         final_score=value, scores=scores, elements=elements,
                                         expected_score=expected, reward_kind="soft", hard_reward=hard)
        return FinalScoreVerdict(task=self.task, reward=hard, final_score=value, scores=scores, elements=elements)

    @property
    def soft_scores(self) -> bool:
        """One-digit scores only: the expectation is read off the single score token's alternatives."""
        return self.hi <= 9

    def _parse_subscores(self, text: str) -> dict[str, float]:
        lo, hi = self.sub_range
        scores, missing = {}, []
        for label in self.subscores:
            found = last_labelled_number(text, label)
            if found is None:
                missing.append(label)
                continue
            scores[snake_case(label)] = parse_number(found.group(1), f"{self.task}: {label}", lo, hi, self.integer)
        if missing:
            raise VerdictError(f"{self.task}: missing {', '.join(repr(m) for m in missing)} in {snippet(text)!r}")
        return scores

    def _parse_elements(self, text: str) -> list[dict[str, Any]]:
        """Lines 'element (type): 0|1' before the final score."""
        elements = []
        for m in re.finditer(rf"^[ \t]*(?:[-*]|\d+\.)?[ \t]*(.+?)[ \t]*\(([^()\n]+)\)[ \t]*:[ \t]*({NUMBER})[ \t]*$",
                             text, re.MULTILINE | re.IGNORECASE):
            name, kind, raw = m.group(1).strip(), m.group(2).strip(), m.group(3)
            value = parse_number(raw, f"{self.task}: element {name!r}", 0, 1, integer=True)
            elements.append({"element": name, "type": kind, "value": int(value)})
        return elements

    def _final_line(self) -> str:
        return f"{self.LABEL}: {number_regex(self.lo, self.hi, integer=True)}"

    def verdict_constraint(self) -> dict[str, Any]:
        lines = []
        if self.subscores:
            lo, hi = self.sub_range
            lines += [regex_literal(s) + ": " + number_regex(lo, hi, integer=True) for s in self.subscores]
        if self.elements:
            element = (rf"[A-Za-z0-9][^\n():]{{0,{self.ELEMENT_CHARS - 1}}} "
                       rf"\([A-Za-z ]{{1,{self.TYPE_CHARS}}}\): [01]")
            lines.append(rf"{element}(?:\n{element}){{0,{self.MAX_ELEMENTS - 1}}}")
        lines.append(self._final_line())
        return {"regex": r"\n".join(lines)}

    def max_verdict_chars(self) -> int:
        lines = [len(self.LABEL) + 2 + number_chars(self.hi, integer=True)]
        if self.subscores:
            lines += [len(s) + 2 + number_chars(self.sub_range[1], integer=True) for s in self.subscores]
        if self.elements:
            lines += [self.ELEMENT_CHARS + len(" (): 1") + self.TYPE_CHARS] * self.MAX_ELEMENTS
        return sum(lines) + len(lines) - 1


FORMATS: dict[str, Callable[[str, Mapping[str, Any]], OutputFormat]] = {
    f.name: f.from_spec for f in (ChoiceFormat, PairScoresFormat, AxisScoresFormat, FinalScoreFormat)
}


def build_format(task: str, spec: Mapping[str, Any]) -> OutputFormat:
    try:
        make = FORMATS[spec["format"]]
    except KeyError:
        raise ValueError(f"{task}: unknown output format {spec.get('format')!r}; known: {sorted(FORMATS)}") from None
    return make(task, spec)
