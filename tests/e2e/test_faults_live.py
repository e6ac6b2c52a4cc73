"""Faults a real network and a real server make, injected between the client and the live tiny server.

One mixed workload (pair and point tasks, some with logprobs, GRPO groups whose first wave streams) runs
twice through testkit's fault proxy: once clean, once with over 10 % of the connections broken (reset
before the answer, reset part-way through it, cut short, a 503 with Retry-After, an answer that never
comes, an answer that stops part-way), and with a second endpoint whose TCP connect never completes. Decoding is greedy, so the faulted run must give every
item exactly one result and every reward the clean run gave; no attempt may wait out the read timeout
where the connect timeout applies; and the faults may cost at most the clean run's wall time again plus
the backoff the client reports.
"""
from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from unifiedreward.clients import AsyncRewardClient, GroupResult, Item, Result
from testkit.faults import FaultProxy, unreachable_listener
from tests.helpers import picture

CAPTION = "a red circle above a blue square"
# What a stalled answer costs: stall_timeout, set as an RL user would to a few times the longest clean request
# (about 2 s here); the connect timeout below it, so the test tells the two apart; an attempt in all at most
# READ_TIMEOUT_S (`timeout`), which no attempt may reach.
STALL_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 3.0
# One connection in seven is faulted (14 %), cycling through the kinds. The client reads every answer as a
# stream (it watches for stalls), so every fault lands on a streamed answer.
FAULT_CYCLE = ("reset_before", "reset_mid_stream", "503", "cut_short", "reset_before", "reset_mid_stream",
               "503", "stall_mid_answer", "stall")
FAULT_KINDS = ("reset_before", "reset_mid_stream", "stall", "503", "cut_short", "stall_mid_answer")
GROUPS, GROUP_SIZE = 8, 5


def plan(n: int) -> str | None:
    return FAULT_CYCLE[(n // 7) % len(FAULT_CYCLE)] if n % 7 == 3 else None


@dataclass
class Attempt:
    host: str
    seconds: float  # until the response head, or until the failure
    outcome: str  # the status code, or the exception's class name


@dataclass
class RecordingTransport(httpx.AsyncBaseTransport):
    """The real transport, with every attempt's duration and outcome recorded: what a connect or a stall
    cost is measured on the wire, not inferred from the results."""

    inner: httpx.AsyncHTTPTransport = field(default_factory=lambda: httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=512, max_keepalive_connections=512)))
    attempts: list[Attempt] = field(default_factory=list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        try:
            response = await self.inner.handle_async_request(request)
        except Exception as exc:
            self.attempts.append(Attempt(request.url.netloc.decode(), time.monotonic() - started, type(exc).__name__))
            raise
        self.attempts.append(Attempt(request.url.netloc.decode(), time.monotonic() - started, str(response.status_code)))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture(scope="module")
def workload():
    images = [picture(100 + i, size=256) for i in range(24)]
    plain = [Item("image_gen.pair_rank", [images[i % 24], images[(i * 5 + 1) % 24]], {"caption": CAPTION}, id=f"rank-{i}")
             for i in range(200)]
    plain += [Item("image_gen.point_score_acs", [images[i % 24]], {"caption": CAPTION}, id=f"acs-{i}")
              for i in range(60)]
    plain += [Item("image_gen.pair_score", [images[(i + 3) % 24], images[(i * 7 + 2) % 24]], {"caption": CAPTION},
                   id=f"pair-score-{i}") for i in range(30)]
    soft = [Item("image_gen.pair_rank", [images[(i + 11) % 24], images[(i * 3 + 4) % 24]], {"caption": CAPTION},
                 id=f"soft-{i}") for i in range(90)]
    groups = [[images[(g * GROUP_SIZE + k) % 24] for k in range(GROUP_SIZE)] for g in range(GROUPS)]
    return plain, soft, groups


async def run_workload(urls: list[str], workload, transport: httpx.AsyncBaseTransport) -> dict[str, Any]:
    plain, soft, groups = workload
    async with AsyncRewardClient(urls, transport=transport, timeout=READ_TIMEOUT_S, stall_timeout=STALL_TIMEOUT_S,
                                 connect_timeout=CONNECT_TIMEOUT_S, max_retries=6) as client:
        started = time.monotonic()
        plain_results, soft_results, *group_results = await asyncio.gather(
            client.score_batch(plain, concurrency=8),
            client.score_batch(soft, concurrency=3, logprobs=True),
            *(client.rank_group("image_gen.pair_rank", members, caption=CAPTION, concurrency=2) for members in groups))
        wall = time.monotonic() - started
    results: dict[Any, Result] = {}
    for result in [*plain_results, *soft_results]:
        assert result.id not in results, f"two results for {result.id}"
        results[result.id] = result
    for g, group in enumerate(group_results):
        assert isinstance(group, GroupResult)
        for pair in group.pairs:
            results[(g, *pair.id)] = pair
    return {"results": results, "wall": wall, "groups": group_results, "plain": plain_results,
            "soft": soft_results}


def test_a_batch_through_network_faults_gets_the_rewards_of_a_clean_run(live_server, workload, report_figure):
    plain, soft, groups = workload
    pairs_per_group = GROUP_SIZE * (GROUP_SIZE - 1) // 2
    expected = {item.id for item in plain + soft} | {(g, i, j) for g in range(GROUPS)
                                                     for i in range(GROUP_SIZE) for j in range(i + 1, GROUP_SIZE)}
    assert len(expected) >= 300

    with FaultProxy(live_server.url, lambda n: None) as clean_proxy:
        clean = asyncio.run(run_workload([clean_proxy.v1()], workload, RecordingTransport()))
    assert set(clean["results"]) == expected
    assert all(r.ok for r in clean["results"].values()), [r.error for r in clean["results"].values() if not r.ok][:3]

    recorder = RecordingTransport()
    with unreachable_listener() as unreachable, \
            FaultProxy(live_server.url, plan, retry_after=1) as proxy:
        faulted = asyncio.run(run_workload([proxy.v1(), unreachable + "/v1"], workload, recorder))
    counts = proxy.counts

    # Every item exactly one result (the dict would have refused a second), every good item scored.
    assert set(faulted["results"]) == expected
    failed = {key: r.error for key, r in faulted["results"].items() if not r.ok}
    assert not failed, list(failed.items())[:3]
    assert len(faulted["plain"]) == len(plain) and len(faulted["soft"]) == len(soft)
    assert all(len(g.pairs) == pairs_per_group for g in faulted["groups"])

    # Over 10 % of the connections faulted, every kind of fault among them, and the dead endpoint tried.
    faults = sum(counts[k] for k in FAULT_KINDS)
    assert faults >= 0.10 * counts["connections"], counts
    assert all(counts[k] > 0 for k in FAULT_KINDS), counts
    connects = [a for a in recorder.attempts if a.outcome == "ConnectTimeout"]
    assert connects, "no request went to the endpoint whose connect never completes"

    # The same rewards as the clean run: hard ones exactly, soft ones to float precision.
    differences = []
    for key, result in faulted["results"].items():
        reference = clean["results"][key]
        if result.reward_kind != reference.reward_kind or abs(result.reward - reference.reward) > 1e-6:
            differences.append((key, reference.text, reference.reward, result.text, result.reward))
        if result.reward_kind == "hard" and result.verdict != reference.verdict:
            differences.append((key, reference.verdict, result.verdict))
    assert not differences, differences[:5]
    assert {r.reward_kind for r in faulted["soft"]} == {"soft"}
    for clean_group, faulted_group in zip(clean["groups"], faulted["groups"]):
        assert faulted_group.games == clean_group.games == [GROUP_SIZE - 1] * GROUP_SIZE
        assert faulted_group.ranking == clean_group.ranking

    # No attempt waited out the read timeout where the connect timeout applies; stalls cost the stall timeout
    # (an answer that never comes: until its head; one that stops part-way: after it, so not in these seconds).
    longest_connect = max(a.seconds for a in connects)
    assert longest_connect < CONNECT_TIMEOUT_S + 2, longest_connect
    assert all(a.seconds < STALL_TIMEOUT_S + 2 for a in recorder.attempts)

    # The faults cost at most the clean run's wall time again, plus the backoff the client reports.
    results = list(faulted["results"].values())
    retried = sum(r.attempts > 1 for r in results)
    backoff_total = sum(r.backoff_s for r in results)
    backoff_max = max(r.backoff_s for r in results)
    bound = 2 * clean["wall"] + backoff_max
    outcomes = collections.Counter(a.outcome for a in recorder.attempts)
    report_figure(
        f"fault injection: {len(results)} items, {counts['connections']} connections through the proxy, "
        f"{faults} faulted ({faults / counts['connections']:.0%}: " +
        ", ".join(f"{k} {counts[k]}" for k in FAULT_KINDS) +
        f"), {len(connects)} connects to the unreachable endpoint (longest {longest_connect:.1f} s, connect "
        f"timeout {CONNECT_TIMEOUT_S:g} s, stall timeout {STALL_TIMEOUT_S:g} s)")
    clean_latency = max(r.latency_s for r in clean["results"].values())
    report_figure(
        f"fault injection: clean run {clean['wall']:.1f} s (longest request {clean_latency:.1f} s), faulted run {faulted['wall']:.1f} s "
        f"(bound 2 x clean + max backoff {backoff_max:.1f} s = {bound:.1f} s); {retried} items retried, "
        f"backoff reported {backoff_total:.1f} s in all; all {len(results)} rewards equal to the clean run's; "
        f"attempt outcomes {dict(outcomes)}")
    assert faulted["wall"] <= bound, (faulted["wall"], clean["wall"], backoff_max)
