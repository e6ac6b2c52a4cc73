"""Routing that follows the image, on two live replicas (the `shared` profile's two servers): a group's pairs stay
on one replica (read from each replica's own counters), a replica killed mid-run gives its groups to the other
and every pair is scored exactly once, and a replica that stalls mid-answer is left within stall_timeout."""
from __future__ import annotations

import asyncio
import time

import pytest

from benchmarks.metrics import scrape
from benchmarks.replicas import key_homed_on
from unifiedreward.clients import AsyncRewardClient, RequestFailedError, RewardClient, build_request, encode_media
from unifiedreward.clients._endpoints import affinity_token, bounded_rendezvous
from unifiedreward.clients._requests import EncodeOptions
from unifiedreward.prompts import get_task
from testkit.faults import FaultProxy, every
from tests.helpers import picture

TASK = "image_gen.pair_rank"
CAPTION = "a red circle above a blue square"


def served(server, api_key) -> float:
    return scrape(server.url, api_key)["request_success_total"]


def counters(server, api_key) -> dict[str, float]:
    return scrape(server.url, api_key)


def homed_keys(urls: list[str], homes: list[int]) -> list[str]:
    """Affinity keys whose endpoints are urls[home] for each home, in order."""
    keys: list[str] = []
    for k in range(10_000):
        if len(keys) == len(homes):
            return keys
        if bounded_rendezvous(affinity_token(f"key-{k}"), urls, [0] * len(urls)) == homes[len(keys)]:
            keys.append(f"key-{k}")
    raise AssertionError("no keys found")


def candidates(n: int, seed: int) -> list:
    return [picture(seed + i, 384) for i in range(n)]


def test_affinity_keeps_a_group_on_one_replica_read_from_each_replicas_counters(shared_server, second_server, api_key):
    servers = [shared_server, second_server]
    urls = [s.base_url for s in servers]
    with RewardClient(urls, api_key=api_key) as client:
        for home, seed in ((0, 61_000), (1, 62_000)):
            before = [counters(s, api_key) for s in servers]
            group = client.rank_group(TASK, candidates(8, seed), caption=CAPTION, affinity=key_homed_on(urls, home))
            after = [counters(s, api_key) for s in servers]
            assert group.errors == 0 and len(group.pairs) == 28
            answered = [a["request_success_total"] - b["request_success_total"] for b, a in zip(before, after)]
            assert answered[home] == 28 and answered[1 - home] == 0, answered
            hits = after[home]["prefix_cache_hits_total"] - before[home]["prefix_cache_hits_total"]
            assert hits > 0  # the group's leading images were computed once, on the replica that saw them all
            assert {p.endpoint for p in group.pairs} == {urls[home]}
    # The same group without affinity: least outstanding, spread over both (what a group met before).
    before = [served(s, api_key) for s in servers]
    with RewardClient(urls, api_key=api_key, affinity=False) as client:
        assert client.rank_group(TASK, candidates(8, 63_000), caption=CAPTION).errors == 0
    answered = [served(s, api_key) - b for s, b in zip(servers, before)]
    assert sum(answered) == 28 and min(answered) > 0, answered


def test_a_replica_killed_mid_run_moves_its_groups_and_every_pair_is_scored_once(shared_server, second_server,
                                                                                  api_key):
    survivor, victim = shared_server, second_server
    urls = [survivor.base_url, victim.base_url]
    keys = homed_keys(urls, [0, 1] * 3)  # three groups homed on each replica
    before = served(survivor, api_key)

    async def main():
        async with AsyncRewardClient(urls, api_key=api_key, max_retries=4) as client:
            victim_endpoint = client.pool.endpoints[1]

            async def kill_after_some_answers() -> None:
                while victim_endpoint.served < 3:
                    await asyncio.sleep(0.05)
                await asyncio.to_thread(victim.kill)

            killer = asyncio.ensure_future(kill_after_some_answers())
            groups = await asyncio.gather(*(client.rank_group(TASK, candidates(6, 64_000 + 100 * g), caption=CAPTION,
                                                              affinity=key) for g, key in enumerate(keys)))
            killed = killer.done()
            killer.cancel()
            return groups, killed

    groups, killed = asyncio.run(main())
    assert killed and not victim.healthy()
    for group in groups:
        assert group.errors == 0, [p.error for p in group.pairs if not p.ok][:3]
        assert len(group.pairs) == 15 and len({p.id for p in group.pairs}) == 15
    victims_groups = [g for i, g in enumerate(groups) if i % 2 == 1]
    # The victim's groups finished on the survivor: every pair answered after the kill came from it.
    assert any(p.endpoint == survivor.base_url for g in victims_groups for p in g.pairs)
    on_survivor = sum(p.endpoint == survivor.base_url for g in groups for p in g.pairs)
    # Scored once: the survivor counted exactly the answers the client took from it, nothing twice.
    assert served(survivor, api_key) - before == on_survivor


def test_a_replica_that_stalls_mid_answer_is_left_within_stall_timeout(shared_server, second_server, api_key):
    """A proxy in front of one replica forwards the first 300 bytes of every third answer and then nothing. With
    stall_timeout=2 each stalled attempt is abandoned after 2 s of silence and retried on the other replica; the
    attempt limit is 60 s, which a missed stall would wait out."""
    with FaultProxy(shared_server.url, every(3, ["stall_mid_answer"]), stall_after_bytes=300) as stalling:
        urls = [stalling.v1(), second_server.base_url]

        async def main():
            async with AsyncRewardClient(urls, api_key=api_key, stall_timeout=2, timeout=60, max_retries=4) as client:
                started = time.monotonic()
                group = await client.rank_group(TASK, candidates(5, 65_000), caption=CAPTION,
                                                affinity=key_homed_on(urls, 0))
                return group, time.monotonic() - started

        group, wall = asyncio.run(main())
    assert stalling.counts["stall_mid_answer"] >= 1
    assert group.errors == 0 and len(group.pairs) == 10
    assert any(p.attempts > 1 and p.endpoint == second_server.base_url for p in group.pairs)
    assert wall < 60, f"a stalled answer was waited out ({wall:.0f} s)"

    # One request, no retry, every answer stalled: it fails as a stall, long before the attempt limit.
    task = get_task(TASK)
    media = encode_media(task, candidates(2, 66_000), EncodeOptions("JPEG", 95, 65536, 262144, "frames", True))
    request = build_request(task, media, {"caption": CAPTION}, model="UnifiedReward")
    with FaultProxy(shared_server.url, every(1, ["stall_mid_answer"])) as stalling:
        with RewardClient(stalling.v1(), api_key=api_key, stall_timeout=1.5, timeout=60, max_retries=0) as client:
            started = time.monotonic()
            with pytest.raises(RequestFailedError, match=r"stalled: no bytes for stall_timeout=1.5 s"):
                client.complete(request)
            assert time.monotonic() - started < 30
