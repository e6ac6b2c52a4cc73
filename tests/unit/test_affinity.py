"""Routing that follows the image (clients/_endpoints.py): rendezvous hashing with a load bound, the affinity and
data-parallel-rank headers on the wire (httpx.MockTransport), and a stalled answer left within stall_timeout
(the fault proxy in front of a plain standard-library upstream)."""
from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from http.server import ThreadingHTTPServer

import httpx
import pytest

from unifiedreward.clients import AsyncRewardClient, Item, RewardClient
from unifiedreward.clients._constants import AFFINITY_HEADER, DATA_PARALLEL_RANK_HEADER
from unifiedreward.clients._endpoints import affinity_token, bounded_rendezvous
from testkit.faults import FaultProxy, every
from tests.helpers import chat_reply, picture
from tests.unit.test_faults import EVENTS
from tests.unit.test_faults import Upstream as FaultsUpstream

NAMES = [f"http://10.0.0.{i}:8000/v1" for i in range(1, 4)]
CHAT = {"id": "c", "object": "chat.completion", "created": 0, "model": "UnifiedReward",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Image 1 is better."},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}


def top(token: str, names: list[str]) -> str:
    return names[bounded_rendezvous(token, names, [0] * len(names))]


def test_a_key_always_ranks_the_same_endpoint_and_keys_spread_evenly():
    tokens = [affinity_token(f"group-{k}") for k in range(3000)]
    assert all(top(t, NAMES) == top(t, list(reversed(NAMES))) for t in tokens[:50])  # not the list's order
    shares = collections.Counter(top(t, NAMES) for t in tokens)
    assert all(800 < shares[n] < 1200 for n in NAMES), shares


def test_an_endpoint_that_leaves_gives_away_only_its_own_keys():
    tokens = [affinity_token(k) for k in range(2000)]
    before = {t: top(t, NAMES) for t in tokens}
    after = {t: top(t, NAMES[:1] + NAMES[2:]) for t in tokens}
    moved = [t for t in tokens if before[t] != after[t]]
    assert moved and all(before[t] == NAMES[1] for t in moved)
    assert len(moved) == sum(v == NAMES[1] for v in before.values())


def test_the_load_bound_passes_a_key_to_its_next_endpoint_only_above_the_bound():
    token = affinity_token("big group")
    home = bounded_rendezvous(token, NAMES, [0, 0, 0])
    second = bounded_rendezvous(token, [n for i, n in enumerate(NAMES) if i != home], [0, 0])
    loads = [0, 0, 0]
    loads[home] = 31  # under the floor (min_load 32): stays home whatever the others hold
    assert bounded_rendezvous(token, NAMES, loads) == home
    loads[home] = 32  # at the floor, and above 1.25 x the mean: passed on, to the key's own next endpoint
    assert NAMES[bounded_rendezvous(token, NAMES, loads)] == [n for i, n in enumerate(NAMES) if i != home][second]
    busy = [100, 100, 100]  # all busy alike: the bound is ceil(1.25 x 301 / 3) = 126, home is under it
    assert bounded_rendezvous(token, NAMES, busy) == home
    busy[home] = 143  # the bound ceil(1.25 x 344 / 3) = 144: still under
    assert bounded_rendezvous(token, NAMES, busy) == home
    busy[home] = 144  # the bound ceil(1.25 x 345 / 3) = 144: at it, passed on
    assert bounded_rendezvous(token, NAMES, busy) != home
    with pytest.raises(ValueError, match="affinity_load_factor"):
        AsyncRewardClient(NAMES, affinity_load_factor=0.9)


class Wire:
    """Answers every chat request; records (host, affinity header, rank header) per request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/health"):
            return httpx.Response(200)
        self.seen.append((request.url.host, request.headers.get(AFFINITY_HEADER),
                          request.headers.get(DATA_PARALLEL_RANK_HEADER)))
        return chat_reply(request, CHAT)


def images(n: int, seed: int = 0) -> list:
    return [picture(seed + i, 64) for i in range(n)]


def test_a_group_goes_to_one_endpoint_with_one_key_and_groups_spread():
    wire = Wire()
    urls = [f"http://replica-{i}/v1" for i in range(2)]
    with RewardClient(urls, transport=httpx.MockTransport(wire)) as client:
        for g in range(12):
            wire.seen.clear()
            group = client.rank_group("image_gen.pair_rank", images(8, 10 * g), caption="a cat")
            assert group.errors == 0 and len(wire.seen) == 28
            assert len({host for host, _, _ in wire.seen}) == 1, collections.Counter(wire.seen)
            assert len({key for _, key, _ in wire.seen}) == 1 and wire.seen[0][1] is not None
            assert all(rank is None for _, _, rank in wire.seen)  # no data parallelism declared: no rank
        homes = collections.Counter(r.endpoint for r in group.pairs)
        assert len(homes) == 1
        # A caller's own key: the same key, the same endpoint, call after call.
        hosts = set()
        for g in range(3):
            wire.seen.clear()
            client.rank_group("image_gen.pair_rank", images(3, 500 + g), caption="a cat", affinity="prompt-7")
            hosts |= {host for host, _, _ in wire.seen}
        assert len(hosts) == 1


def test_many_groups_at_once_spread_over_both_endpoints():
    wire = Wire()
    urls = [f"http://replica-{i}/v1" for i in range(2)]

    async def main():
        async with AsyncRewardClient(urls, transport=httpx.MockTransport(wire)) as client:
            await asyncio.gather(*(client.rank_group("image_gen.pair_rank", images(4, 20 * g), caption="x")
                                   for g in range(16)))

    asyncio.run(main())
    per_key = collections.defaultdict(set)
    for host, key, _ in wire.seen:
        per_key[key].add(host)
    assert len(per_key) == 16 and all(len(hosts) == 1 for hosts in per_key.values())
    assert len({host for host, _, _ in wire.seen}) == 2


def test_affinity_off_sends_no_header_and_balances_by_load():
    wire = Wire()
    with RewardClient(["http://a/v1", "http://b/v1"], affinity=False, transport=httpx.MockTransport(wire)) as client:
        client.rank_group("image_gen.pair_rank", images(8), caption="a cat")
    assert all(key is None for _, key, _ in wire.seen)


def test_items_with_one_key_meet_and_debias_keeps_both_orders_together():
    wire = Wire()
    urls = [f"http://replica-{i}/v1" for i in range(3)]
    items = [Item("image_gen.pair_rank", images(2, 2 * i), {"caption": "a cat"}, id=i, affinity=f"prompt-{i % 4}")
             for i in range(24)]
    with RewardClient(urls, transport=httpx.MockTransport(wire)) as client:
        results = client.score_batch(items, concurrency=8)
        assert all(r.ok for r in results)
        by_key = collections.defaultdict(set)
        for r, item in zip(results, items):
            by_key[item.affinity].add(r.endpoint)
        assert all(len(e) == 1 for e in by_key.values())
        for seed in range(6):
            result = client.score("image_gen.pair_rank", images(2, 900 + 2 * seed), caption="x", debias=True)
            assert result.ok and result.endpoint == result.swapped.endpoint
    assert Item.from_mapping({"task": "image_gen.pair_rank", "images": ["a", "b"], "affinity": 7}).affinity == 7


def test_data_parallel_ranks_are_pinned_per_key_in_range():
    wire = Wire()
    with RewardClient("http://dp/v1", data_parallel_size=4, transport=httpx.MockTransport(wire)) as client:
        for g in range(12):
            before = len(wire.seen)
            client.rank_group("image_gen.pair_rank", images(3, 30 * g), caption="a cat")
            ranks = {rank for _, _, rank in wire.seen[before:]}
            assert len(ranks) == 1
        client.score("image_gen.pair_rank", images(2, 999), caption="x")  # no key: vLLM's own balancer
    assert wire.seen[-1][2] is None
    assert {rank for _, _, rank in wire.seen[:-1]} <= {"0", "1", "2", "3"}
    assert len({rank for _, _, rank in wire.seen[:-1]}) >= 2
    with pytest.raises(ValueError, match="data_parallel_size"):
        AsyncRewardClient("http://dp/v1", data_parallel_size=0)


class Upstream(FaultsUpstream):
    """The fault tests' upstream, streaming a finished chat answer (a finish reason last), like vLLM's."""
    events = [*EVENTS, {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    pause_s = 0.0


@pytest.fixture(scope="module")
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def test_an_answer_that_stalls_midway_is_left_within_stall_timeout_and_retried_elsewhere(upstream):
    """The proxy forwards 300 bytes of every answer, then nothing. With stall_timeout=0.5 the attempt is
    abandoned after half a second of silence and retried on the other endpoint; without the watch it would
    last the whole timeout (20 s here)."""
    request = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    with FaultProxy(upstream, every(1, ["stall_mid_answer"])) as stalling:

        async def main(stall_timeout):
            async with AsyncRewardClient([stalling.v1()], stall_timeout=stall_timeout, timeout=20,
                                         max_retries=0) as client:
                started = time.monotonic()
                with pytest.raises(Exception) as failure:
                    await client.complete(request)
                return time.monotonic() - started, failure.value

        elapsed, error = asyncio.run(main(0.5))
    assert elapsed < 10 and "stalled" in str(error) and "stall_timeout=0.5" in str(error)
    assert stalling.counts["stall_mid_answer"] == 1

    with FaultProxy(upstream, every(1, ["stall_mid_answer"])) as stalling, \
            FaultProxy(upstream, lambda n: None) as healthy:
        async def retried():
            async with AsyncRewardClient([stalling.v1(), healthy.v1()], stall_timeout=0.5, timeout=20) as client:
                client.pool.endpoints[1].in_flight = 1  # the first pick goes to the stalling endpoint
                completion = await client.complete(request)
                client.pool.endpoints[1].in_flight = 0
                return completion, client.pool.endpoints[0]

        completion, stalled = asyncio.run(retried())
    assert completion.attempts == 2 and completion.endpoint == healthy.v1() and stalled.failures == 1
    assert completion.text.startswith("token 0") and completion.finish_reason == "stop"


def test_a_dataset_column_can_be_the_affinity_key():
    from unifiedreward.clients.dataset_io import parse_mapping

    assert parse_mapping(["affinity=prompt_id"]) == {"affinity": ("prompt_id",)}
