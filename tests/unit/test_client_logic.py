"""The client's logic without a server: items, results, retries' backoff, endpoint balancing, groups."""
from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from clients import BadInputError, Item, Result, RewardError
from clients._async import backoff_s
from clients._constants import RETRY_BACKOFF_MAX_S
from clients._endpoints import Endpoint, EndpointPool
from clients.cli import read_items
from clients.groups import all_pairs, bradley_terry, cache_friendly_waves, win_rates
from prompts import RankVerdict


def test_item_from_mapping():
    item = Item.from_mapping({"id": 7, "task": "image_gen.pair_rank", "images": ["a.png", "b.png"], "caption": "c"})
    assert (item.id, item.task, list(item.media), dict(item.fields)) == (7, "image_gen.pair_rank", ["a.png", "b.png"],
                                                                        {"caption": "c"})
    with pytest.raises(BadInputError, match="no 'task'"):
        Item.from_mapping({"images": []})
    with pytest.raises(BadInputError, match="once"):
        Item.from_mapping({"task": "t", "images": ["a"], "videos": ["b"]})
    with pytest.raises(BadInputError, match="object"):
        Item.from_mapping(["task"])


def test_result_reward_raises_the_items_error():
    failed = Result.failure(BadInputError("image file not found: x.png"), task="image_gen.pair_rank", id=3)
    assert not failed.ok and failed.error_type == "BadInputError"
    with pytest.raises(BadInputError, match="not found"):
        failed.reward
    assert failed.to_dict()["reward"] is None and failed.to_dict()["error"] == "image file not found: x.png"
    first = Result("image_gen.pair_rank", RankVerdict("image_gen.pair_rank", 1.0, 1))
    swapped = Result("image_gen.pair_rank", RankVerdict("image_gen.pair_rank", 0.5, None))
    debiased = Result("image_gen.pair_rank", first.verdict, swapped=swapped, agreement=False)
    assert first.reward == 1.0 and debiased.reward == pytest.approx(0.75)
    assert json.loads(json.dumps(debiased.to_dict()))["swapped"]["verdict"]["winner"] is None


def test_backoff_is_jittered_and_capped():
    values = [backoff_s(a) for a in range(1, 12) for _ in range(20)]
    assert all(0 < v <= RETRY_BACKOFF_MAX_S for v in values)
    assert len({round(v, 6) for v in values}) > 50


def make_pool(n: int) -> EndpointPool:
    http = httpx.AsyncClient()
    endpoints = [Endpoint(f"http://127.0.0.1:{9 + i}/v1", openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{9 + i}/v1",
                                                                             api_key="x", http_client=http))
                 for i in range(n)]
    return EndpointPool(endpoints, http)


def test_least_outstanding_requests_and_release_on_errors():
    async def main():
        pool = make_pool(3)
        leases = [pool.lease() for _ in range(6)]
        held = [await lease.__aenter__() for lease in leases]
        assert sorted(ep.in_flight for ep in pool.endpoints) == [2, 2, 2]  # spread evenly
        for lease in leases:
            await lease.__aexit__(None, None, None)
        with pytest.raises(RuntimeError):
            async with pool.lease():
                raise RuntimeError("a failed request")
        assert [ep.in_flight for ep in pool.endpoints] == [0, 0, 0]
        await pool.http.aclose()
        return held

    asyncio.run(main())


def test_a_failed_endpoint_is_skipped_then_probed_back():
    async def main():
        pool = make_pool(2)
        down, up = pool.endpoints
        pool.mark_failed(down)
        pool.mark_failed(down)  # failures of requests in flight together count once
        assert down.cooldown_s == 2.0
        assert all(pool.pick() is up for _ in range(20))
        down.down_until = 0.001  # cool-down over: the next pick probes /health (nothing listens: stays down)
        assert pool.pick() is up and down.probing
        await asyncio.gather(*pool._probes)
        assert not down.probing and down.down_until > 0 and down.cooldown_s == 4.0
        pool.mark_failed(up)  # all down: still pick the one back first rather than fail untried
        assert pool.pick() in pool.endpoints
        await pool.aclose()
        await pool.http.aclose()

    asyncio.run(main())


def test_pairs_budget_and_cache_waves():
    assert len(all_pairs(6)) == 15
    budget = all_pairs(6, 7)
    assert len(budget) == 7 and len(set(budget)) == 7
    assert {i for pair in budget for i in pair} == set(range(6))  # every candidate plays
    first, rest = cache_friendly_waves(all_pairs(4))
    assert [p[0] for p in first] == [0, 1, 2]  # one pair per leading candidate goes first
    assert sorted(first + rest) == all_pairs(4)


def test_win_rates_and_bradley_terry():
    outcomes = {(0, 1): 1.0, (0, 2): 1.0, (1, 2): 0.5, (0, 3): 0.75, (1, 3): 0.0, (2, 3): 0.25}
    rates = win_rates(4, outcomes)
    assert sum(rates) == pytest.approx(2.0)
    strengths = bradley_terry(4, outcomes)
    assert sum(strengths) == pytest.approx(1.0) and all(s > 0 for s in strengths)
    assert sorted(range(4), key=lambda i: -strengths[i]) == sorted(range(4), key=lambda i: -rates[i])
    assert win_rates(3, {(0, 1): 1.0}) == [1.0, 0.0, None]


def test_read_items_keeps_bad_lines_in_place(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": 1, "task": "t", "images": ["a"]}\n\n{oops\n{"id": 2}\n[1]\n')
    entries = read_items(path)
    assert isinstance(entries[0], Item) and entries[0].id == 1
    assert [type(e).__name__ for e in entries] == ["Item", "Result", "Result", "Result"]
    assert "line 3: invalid JSON" in entries[1].error and "line 4" in entries[2].error and entries[2].id == 2
    assert all(isinstance(e.exception, RewardError) for e in entries[1:])


def _chat_response(text: str, finish_reason: str) -> dict:
    """The shape of a vLLM chat completion (recorded from the live server, values trimmed)."""
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "UnifiedReward",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason, "logprobs": None}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}


def test_aborted_answers_are_retried_and_4xx_are_typed():
    from clients import AsyncRewardClient, AuthenticationError, InputRejectedError

    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/health"):
            return httpx.Response(200)
        calls.append(request.url.path)
        if len(calls) == 1:  # a replica shutting down answers 200 with the partial text it had
            return httpx.Response(200, json=_chat_response("Im", "abort"))
        if request.headers["authorization"] != "Bearer sk-good":
            return httpx.Response(401, json={"error": "Unauthorized"})
        if b"bad" in request.content:
            return httpx.Response(400, json={"error": {"message": "image is not an image", "code": 400}})
        return httpx.Response(200, json=_chat_response("Image 1 is better.", "stop"))

    async def scenario():
        request = {"model": "UnifiedReward", "messages": [{"role": "user", "content": "x"}]}
        async with AsyncRewardClient("http://replica/v1", api_key="sk-good") as client:
            client._http._transport = httpx.MockTransport(handler)
            completion = await client.complete(request)
            assert completion.text == "Image 1 is better." and completion.attempts == 2
            with pytest.raises(InputRejectedError, match="not an image") as rejected:
                await client.complete({**request, "messages": [{"role": "user", "content": "bad"}]})
            assert rejected.value.attempts == 1  # not retried
        async with AsyncRewardClient("http://replica/v1", api_key="sk-wrong") as client:
            client._http._transport = httpx.MockTransport(handler)
            with pytest.raises(AuthenticationError) as refused:
                await client.complete(request)
            assert refused.value.attempts == 1 and refused.value.status_code == 401

    asyncio.run(scenario())
    assert len(calls) == 4
