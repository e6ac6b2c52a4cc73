"""score_stream without a server: the client's own transport method answers (a stub: what is measured here
is the stream's bookkeeping). Items pulled lazily and a bounded number alive, counted not timed; input
order through the reorder buffer; a graceful stop; leaving early cancels what is in flight."""
from __future__ import annotations

import asyncio
import random
import threading
from typing import Any, Iterator

import httpx
import pytest

from unifiedreward.clients import AsyncRewardClient, Completion, Item, RewardClient
from unifiedreward.clients._constants import ENCODE_AHEAD
from tests.helpers import chat_reply

URLS = ["data:image/png;base64,AA==", "data:image/png;base64,AB=="]
CHAT_RESPONSE = {"id": "c", "object": "chat.completion", "created": 0, "model": "UnifiedReward",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "Image 1 is better."},
                              "finish_reason": "stop", "logprobs": None}],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class StubClient(AsyncRewardClient):
    """Answers every request itself, after `delay(request)` seconds; counts requests sent and cancelled."""

    def __init__(self, delay=lambda request: 0.0) -> None:
        super().__init__("http://stub/v1")
        self.delay = delay
        self.sent = 0
        self.cancelled = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def complete(self, request: dict[str, Any], *, stream: bool = False, first_token=None,
                       affinity=None) -> Completion:
        self.sent += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            seconds = self.delay(request)
            if seconds:
                await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        return Completion("Image 1 is better.", "stop", {"prompt_tokens": 1, "completion_tokens": 1}, None, 0.0,
                          self.pool.endpoints[0].base_url)


class Counted(list):
    """A media list that counts how many instances are alive (created and not yet garbage collected)."""

    alive = 0
    peak = 0
    lock = threading.Lock()

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        with Counted.lock:
            Counted.alive += 1
            Counted.peak = max(Counted.peak, Counted.alive)

    def __del__(self) -> None:
        with Counted.lock:
            Counted.alive -= 1


def counted_items(n: int, pulled: list[int]) -> Iterator[Item]:
    for i in range(n):
        pulled[0] += 1
        yield Item("image_gen.pair_rank", Counted(URLS), {"caption": str(i)}, id=i)


def test_a_generator_of_100k_items_keeps_at_most_the_window_alive():
    """Counted, not timed: the media of at most concurrency x (1 + ENCODE_AHEAD) items exist at once,
    however long the generator, and every item gets exactly one result."""
    concurrency = 16
    window = concurrency * (1 + ENCODE_AHEAD)
    pulled = [0]
    Counted.alive = Counted.peak = 0

    async def main() -> tuple[int, set[int]]:
        client = StubClient()
        seen: set[int] = set()
        async with client:
            async for result in client.score_stream(counted_items(100_000, pulled), concurrency=concurrency):
                assert result.ok and result.id not in seen
                seen.add(result.id)
                assert pulled[0] - len(seen) <= window  # never pulled far ahead of what is finished
        return client.max_in_flight, seen

    max_in_flight, seen = asyncio.run(main())
    assert seen == set(range(100_000)) and pulled[0] == 100_000
    assert Counted.peak <= window, f"{Counted.peak} items alive at once, the window is {window}"
    assert max_in_flight <= concurrency


@pytest.mark.parametrize("ordered", [True, False])
def test_ordered_yields_input_order_and_unordered_completion_order(ordered):
    rng = random.Random(0)
    delays = {str(i): rng.choice([0.0, 0.001, 0.02]) for i in range(200)}

    def delay(request):
        return delays[request["messages"][0]["content"][-1]["text"].rsplit("[", 1)[1].rstrip("]")]

    async def main() -> list[int]:
        async with StubClient(delay) as client:
            items = [Item("image_gen.pair_rank", URLS, {"caption": str(i)}, id=i) for i in range(200)]
            return [r.id async for r in client.score_stream(items, concurrency=8, ordered=ordered)]

    ids = asyncio.run(main())
    assert sorted(ids) == list(range(200))
    if ordered:
        assert ids == list(range(200))
    else:
        assert ids != list(range(200))  # the slow ones came later


def test_bad_items_fail_alone_in_place():
    items = [{"task": "image_gen.pair_rank", "images": URLS, "caption": "c", "id": 0}, {"id": 1},
             Item("image_gen.pair_rank", URLS[:1], {"caption": "c"}, id=2), "not an item",
             Item("image_gen.pair_rank", URLS, {"caption": "c"}, id=4)]

    async def main():
        async with StubClient() as client:
            return [r async for r in client.score_stream(items, ordered=True)]

    results = asyncio.run(main())
    assert [r.id for r in results] == [0, 1, 2, 3, 4]
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert "no 'task'" in results[1].error and "takes 2 image" in results[2].error


def test_stop_sends_nothing_new_and_lets_the_requests_in_flight_finish():
    stop = asyncio.Event()

    async def main():
        async with StubClient(lambda request: 0.05) as client:
            results = []
            items = (Item("image_gen.pair_rank", URLS, {"caption": str(i)}, id=i) for i in range(1000))
            async for result in client.score_stream(items, concurrency=4, stop=stop, ordered=True):
                results.append(result)
                if len(results) == 10:
                    stop.set()
            return results, client.sent, client.cancelled

    results, sent, cancelled = asyncio.run(main())
    assert cancelled == 0 and all(r.ok for r in results)
    assert len(results) == sent  # every request sent was answered and delivered, none started after stop
    assert 10 <= sent <= 10 + 4 + 1
    assert len({r.id for r in results}) == len(results)


def test_leaving_the_loop_early_cancels_the_requests_in_flight():
    async def main():
        client = StubClient(lambda request: 30.0 if request["messages"][0]["content"][-1]["text"].endswith("[5]")
                            else 0.0)
        async with client:
            items = [Item("image_gen.pair_rank", URLS, {"caption": str(i)}, id=i) for i in range(50)]
            stream = client.score_stream(items, concurrency=4, ordered=True)
            got = []
            async for result in stream:
                got.append(result.id)
                if len(got) == 5:
                    break  # item 5 is still in flight
            await stream.aclose()
            await asyncio.sleep(0)
            return got, client.cancelled, client.in_flight

    got, cancelled, in_flight = asyncio.run(main())
    assert got == [0, 1, 2, 3, 4] and cancelled >= 1 and in_flight == 0


def test_the_sync_twin_iterates_lazily_and_cancels_on_break():
    pulled, answered, cancelled = [0], [0], [0]

    async def slow_answer(request: httpx.Request) -> httpx.Response:
        try:
            await asyncio.sleep(0.01 if answered[0] < 20 else 30)
        except asyncio.CancelledError:
            cancelled[0] += 1
            raise
        answered[0] += 1
        return chat_reply(request, CHAT_RESPONSE)

    with RewardClient("http://stub/v1", transport=httpx.MockTransport(slow_answer)) as client:
        it = client.score_iter(counted_items(10_000, pulled), concurrency=4)
        first = [next(it) for _ in range(20)]
        it.close()  # items 20.. are in flight, waiting 30 s
        assert all(r.ok for r in first) and len({r.id for r in first}) == 20
        assert pulled[0] <= 20 + 4 * (1 + ENCODE_AHEAD) + 1
        assert cancelled[0] >= 1


def test_an_input_that_fails_while_read_raises_from_the_stream():
    def broken() -> Iterator[Item]:
        yield Item("image_gen.pair_rank", URLS, {"caption": "c"}, id=0)
        raise OSError("disk gone")

    async def main():
        async with StubClient() as client:
            return [r async for r in client.score_stream(broken())]

    with pytest.raises(OSError, match="disk gone"):
        asyncio.run(main())
