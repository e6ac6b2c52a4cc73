"""`unifiedreward score --input ... --output ...` as a job runner for datasets of any size.

Each result is written the moment it is final (input order through a small reorder buffer, or completion
order), so a job killed at any point keeps everything it finished; `--resume` reads the output back and
scores only what is missing (and what failed, unless told not to). SIGINT/SIGTERM stop it gracefully:
nothing new is sent, the requests in flight get `grace` seconds, what finished is written, and the job
says how many items are left and how to resume. `--shard I/N` splits one input across N processes.
"""
from __future__ import annotations

import asyncio
import collections
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from unifiedreward.prompts import get_task

from ._async import AsyncRewardClient, ProgressBar
from ._types import Result
from .dataset_io import Row, Sink, Source, id_key
from .errors import BadInputError

EXIT_BY_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass(frozen=True)
class Shard:
    """Items whose 0-based position modulo `count` is `index`."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> "Shard":
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise BadInputError(f"--shard {text!r}: write it as I/N, e.g. 0/4") from None
        if count < 1 or not 0 <= index < count:
            raise BadInputError(f"--shard {text!r}: needs 0 <= I < N")
        return cls(index, count)

    def __contains__(self, position: int) -> bool:
        return position % self.count == self.index


@dataclass
class JobPlan:
    """What a run will do, decided before any request: the keys already done, those to score."""

    total: int  # items in this shard
    done: int  # already in the output and kept
    retried: int  # failed earlier, scored again
    todo: int


@dataclass
class JobOutcome:
    plan: JobPlan
    logprobs: Any = False
    written: int = 0
    failed: collections.Counter = field(default_factory=collections.Counter)
    soft: int = 0
    fallbacks: int = 0  # logprobs asked, the task has soft scores, the answer gave none: a hard reward
    seconds: float = 0.0
    stopped_by: signal.Signals | None = None

    def add(self, result: Result) -> None:
        self.written += 1
        if not result.ok:
            self.failed[result.error_type] += 1
        elif result.reward_kind == "soft":
            self.soft += 1
        elif self.logprobs and result.task and get_task(result.task).soft_scores:
            self.fallbacks += 1

    @property
    def left(self) -> int:
        return self.plan.todo - self.written

    @property
    def exit_code(self) -> int:
        if self.stopped_by is not None:
            return EXIT_BY_SIGNAL.get(self.stopped_by, 1)
        return 1 if self.failed else 0


def plan_job(source: Source, sink: Sink, *, shard: Shard, resume: bool, retry_failed: bool,
             overwrite: bool) -> tuple[JobPlan, set[str]]:
    """Check the input (ids unique across the whole file, before anything is sent) and the output (never
    clobbered without --overwrite), and decide what to score. Returns the plan and the keys to skip."""
    seen: dict[str, int] = {}
    in_shard: list[str] = []
    for row in source.rows():
        key = id_key(row.id)
        if key in seen:
            raise BadInputError(f"{source.path}: id {row.id!r} appears twice (lines {seen[key]} and {row.line}); "
                                f"ids must be unique")
        seen[key] = row.line
        if row.position in shard:
            in_shard.append(key)
    if sink.exists() and not resume:
        if not overwrite:
            raise BadInputError(f"{sink.path} exists: --resume to continue that job, or --overwrite to replace it")
        sink.clear()
    done = sink.done() if resume else {}
    retry = {key for key, ok in done.items() if not ok} if retry_failed else set()
    sink.drop(retry)
    skip = {key for key in done if key not in retry}
    wanted = set(in_shard)
    return JobPlan(total=len(in_shard), done=len(skip & wanted), retried=len(retry & wanted),
                   todo=len(wanted - skip)), skip


def items_to_score(source: Source, shard: Shard, skip: set[str]) -> Iterator[dict[str, Any] | Result]:
    """The rows still to score, lazily: item mappings (with their id), or failed Results for bad rows."""
    for row in source.rows():
        if row.position not in shard or id_key(row.id) in skip:
            continue
        yield _item(row)


def _item(row: Row) -> dict[str, Any] | Result:
    if row.data is None:
        return Result.failure(BadInputError(row.error or f"line {row.line}: not an item"), id=row.id)
    return {**row.data, "id": row.id}


async def run_job(client: AsyncRewardClient, source: Source, sink: Sink, *, shard: Shard = Shard(),
                  resume: bool = False, retry_failed: bool = True, overwrite: bool = False, ordered: bool = True,
                  concurrency: int = 64, grace_s: float = 30.0, progress: bool = False,
                  **options: Any) -> JobOutcome:
    """Score what the plan says, writing each result as it is final. Signals stop it gracefully."""
    plan, skip = plan_job(source, sink, shard=shard, resume=resume, retry_failed=retry_failed, overwrite=overwrite)
    outcome = JobOutcome(plan, logprobs=options.get("logprobs", False))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    consumer = asyncio.current_task()

    grace_timer: list[asyncio.TimerHandle] = []

    def on_signal(signum: signal.Signals) -> None:
        if outcome.stopped_by is not None:  # a second signal: no more grace
            consumer.cancel()
            return
        outcome.stopped_by = signum
        stop.set()
        print(f"\nunifiedreward: {signum.name}: no new requests; waiting up to {grace_s:g} s for the "
              f"requests in flight (again to stop now)", file=sys.stderr)
        grace_timer.append(loop.call_later(grace_s, consumer.cancel))

    for signum in EXIT_BY_SIGNAL:
        loop.add_signal_handler(signum, on_signal, signum)
    bar = ProgressBar(plan.todo, description="scoring") if progress else None
    started = time.monotonic()
    try:
        stream = client.score_stream(items_to_score(source, shard, skip), concurrency=concurrency,
                                     ordered=ordered, stop=stop, **options)
        async for result in stream:
            sink.write(result)
            outcome.add(result)
            if bar is not None:
                bar.add(result)
    except asyncio.CancelledError:
        if outcome.stopped_by is None:
            raise
    finally:
        for timer in grace_timer:
            timer.cancel()
        for signum in EXIT_BY_SIGNAL:
            loop.remove_signal_handler(signum)
        sink.close()
        if bar is not None:
            bar.close()
        outcome.seconds = time.monotonic() - started
    return outcome


def summary(outcome: JobOutcome, argv: Sequence[str] = ()) -> str:
    """The end-of-job lines: counts by outcome, soft/hard rewards with logprobs, the resume command."""
    plan = outcome.plan
    failed = sum(outcome.failed.values())
    rate = outcome.written / outcome.seconds if outcome.seconds else 0.0
    lines = [f"unifiedreward: {outcome.written} items in {outcome.seconds:.1f} s ({rate:.1f} items/s): "
             f"{outcome.written - failed} ok, {failed} failed"
             + (" (" + ", ".join(f"{k} {n}" for k, n in outcome.failed.most_common()) + ")" if failed else "")]
    if outcome.logprobs:
        hard = outcome.written - failed - outcome.soft - outcome.fallbacks
        lines[0] += (f"; rewards: {outcome.soft} soft, {outcome.fallbacks} fell back to hard (no soft score in "
                     f"the answer), {hard} hard (task has no soft score)")
    if plan.done or plan.retried:
        lines.append(f"unifiedreward: resumed: {plan.done} already done, {plan.retried} failed earlier and retried")
    if outcome.stopped_by is not None:
        command = ["unifiedreward", *argv] + ([] if "--resume" in argv else ["--resume"])
        lines.append(f"unifiedreward: stopped by {outcome.stopped_by.name}: {outcome.left} of {plan.todo} items "
                     f"left; resume with:\n  {shlex.join(command)}")
    return "\n".join(lines)
