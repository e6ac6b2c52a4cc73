"""The client's logic without a server: items, results, retries' backoff, endpoint balancing, groups."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from dataclasses import replace

import httpx
import openai
import pytest

from unifiedreward.clients import BadInputError, Item, Result
from unifiedreward.clients._transport import backoff_s
from unifiedreward.clients._constants import RETRY_BACKOFF_MAX_S
from unifiedreward.clients._endpoints import Endpoint, EndpointPool
from unifiedreward.clients.groups import (GroupResult, all_pairs, bradley_terry, cache_friendly_waves, components, games_played,
                            win_rates)
from unifiedreward.prompts import RankVerdict
from tests.helpers import chat_reply


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


def make_pool(n: int, transport: httpx.AsyncBaseTransport | None = None) -> EndpointPool:
    http = httpx.AsyncClient(transport=transport)
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
        pool.mark_failed(up)  # all down: still try one rather than fail untried: the one failing least
        assert up.failures < down.failures and pool.pick() is up
        up.down_until = down.down_until + 5  # ... even if it comes back later than the one failing every time
        assert pool.pick() is up
        await pool.aclose()
        await pool.http.aclose()

    asyncio.run(main())


def test_an_answer_to_a_request_sent_before_the_failure_does_not_revive_the_endpoint():
    """Item 6: requests in flight when an endpoint failed may still succeed; that says nothing about now."""
    async def main():
        pool = make_pool(1)
        (ep,) = pool.endpoints
        sent_before = time.monotonic()
        await asyncio.sleep(0.01)
        pool.mark_failed(ep)
        pool.mark_ok(ep, sent_before)
        assert ep.down_until > time.monotonic() and ep.failures == 1
        pool.mark_ok(ep, time.monotonic())  # a request sent after the failure did succeed: back up
        assert ep.down_until == 0.0 and ep.failures == 0
        await pool.http.aclose()

    asyncio.run(main())


def test_aclose_waits_for_the_probes_it_cancels():
    """Item 6: aclose cancelled probe tasks without awaiting them; they then ran against a closed client."""
    async def main():
        started = asyncio.Event()

        async def slow_health(request: httpx.Request) -> httpx.Response:
            started.set()
            await asyncio.sleep(30)
            return httpx.Response(200)

        pool = make_pool(1, transport=httpx.MockTransport(slow_health))
        (ep,) = pool.endpoints
        pool.mark_failed(ep)
        ep.down_until = 0.001
        pool.pick()  # starts the probe
        probes = list(pool._probes)
        await started.wait()
        await pool.aclose()
        assert probes and all(task.done() for task in probes)
        assert not ep.probing
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


def test_a_candidate_without_a_finished_game_has_no_strength_and_no_rank():
    """Item 1: games (0,1), (0,2), (1,2) all won by the first; candidate 3's games all failed. It used to
    keep the starting strength 0.218 and rank second."""
    outcomes = {(0, 1): 1.0, (0, 2): 1.0, (1, 2): 1.0}
    strengths = bradley_terry(4, outcomes)
    assert strengths[3] is None
    assert sum(strengths[:3]) == pytest.approx(1.0) and strengths[0] > strengths[1] > strengths[2]
    group = GroupResult("image_gen.pair_rank", win_rates(4, outcomes), strengths, games_played(4, outcomes))
    assert group.games == [2, 2, 2, 0] and group.ranking == [0, 1, 2]
    out = json.loads(json.dumps(group.to_dict()))
    assert out["strengths"][3] is None and out["games"] == [2, 2, 2, 0] and out["ranking"] == [0, 1, 2]
    assert bradley_terry(3, {}) == [None, None, None]


def test_a_split_comparison_graph_is_flagged():
    """Pairs (0,1) and (2,3) only (a pair budget, or the linking pairs failed): 0 and 2 each won their one
    game and get the same strength, but nothing says which is better. The result says so."""
    outcomes = {(0, 1): 1.0, (2, 3): 1.0}
    assert components(5, outcomes) == [[0, 1], [2, 3]]  # item 4 never played: in no component
    strengths = bradley_terry(5, outcomes)
    group = GroupResult("image_gen.pair_rank", win_rates(5, outcomes), strengths, games_played(5, outcomes),
                        components=components(5, outcomes))
    assert not group.connected and group.to_dict()["connected"] is False
    assert group.to_dict()["components"] == [[0, 1], [2, 3]]
    linked = {**outcomes, (1, 2): 0.5}
    assert components(5, linked) == [[0, 1, 2, 3]]
    assert GroupResult("t", [], [], components=components(5, linked)).connected


def test_win_rates_and_bradley_terry():
    outcomes = {(0, 1): 1.0, (0, 2): 1.0, (1, 2): 0.5, (0, 3): 0.75, (1, 3): 0.0, (2, 3): 0.25}
    rates = win_rates(4, outcomes)
    assert sum(rates) == pytest.approx(2.0)
    strengths = bradley_terry(4, outcomes)
    assert sum(strengths) == pytest.approx(1.0) and all(s > 0 for s in strengths)
    assert sorted(range(4), key=lambda i: -strengths[i]) == sorted(range(4), key=lambda i: -rates[i])
    assert win_rates(3, {(0, 1): 1.0}) == [1.0, 0.0, None]


def _chat_response(text: str, finish_reason: str) -> dict:
    """The shape of a vLLM chat completion (recorded from the live server, values trimmed)."""
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "UnifiedReward",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason, "logprobs": None}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}


def test_aborted_answers_are_retried_and_4xx_are_typed():
    from unifiedreward.clients import AsyncRewardClient, AuthenticationError, InputRejectedError

    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/health"):
            return httpx.Response(200)
        calls.append(request.url.path)
        if len(calls) == 1:  # a replica shutting down answers 200 with the partial text it had
            return chat_reply(request, _chat_response("Im", "abort"))
        if request.headers["authorization"] != "Bearer sk-good":
            return httpx.Response(401, json={"error": "Unauthorized"})
        if b"bad" in request.content:
            return httpx.Response(400, json={"error": {"message": "image is not an image", "code": 400}})
        return chat_reply(request, _chat_response("Image 1 is better.", "stop"))

    async def scenario():
        request = {"model": "UnifiedReward", "messages": [{"role": "user", "content": "x"}]}
        async with AsyncRewardClient("http://replica/v1", api_key="sk-good",
                                     transport=httpx.MockTransport(handler)) as client:
            completion = await client.complete(request)
            assert completion.text == "Image 1 is better." and completion.attempts == 2
            with pytest.raises(InputRejectedError, match="not an image") as rejected:
                await client.complete({**request, "messages": [{"role": "user", "content": "bad"}]})
            assert rejected.value.attempts == 1  # not retried
        async with AsyncRewardClient("http://replica/v1", api_key="sk-wrong",
                                     transport=httpx.MockTransport(handler)) as client:
            with pytest.raises(AuthenticationError) as refused:
                await client.complete(request)
            assert refused.value.attempts == 1 and refused.value.status_code == 401

    asyncio.run(scenario())
    assert len(calls) == 4


def loop_threads() -> int:
    return sum(t.name == "RewardClient-loop" for t in threading.enumerate())


def test_a_failing_constructor_leaves_no_thread():
    """Item 7: the loop thread was started before the options were checked, and never stopped."""
    from unifiedreward.clients import RewardClient

    before = loop_threads()
    for bad in ({"video_mode": "gif"}, {"max_retries": -1}, {}):
        with pytest.raises(ValueError):
            RewardClient([] if not bad else "http://x/v1", **bad)
    assert loop_threads() == before


def test_ctrl_c_cancels_the_batch_in_flight_and_re_raises():
    """Item 7: KeyboardInterrupt during a call left its requests running on the loop thread while close()
    shut the HTTP pool under them. Now the requests are cancelled before the interrupt propagates."""
    from unifiedreward.clients import Item, RewardClient

    started, cancelled = threading.Event(), threading.Event()

    async def never_answers(request: httpx.Request) -> httpx.Response:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return chat_reply(request, _chat_response("Image 1 is better.", "stop"))

    client = RewardClient("http://replica/v1", transport=httpx.MockTransport(never_answers))
    items = [Item("image_gen.pair_rank", ["data:image/png;base64,AA==", "data:image/png;base64,AB=="],
                  {"caption": "c"}, id=i) for i in range(3)]
    # Python's own Ctrl-C handler, whatever this process inherited: a shell's background job (`make test &`)
    # starts with SIGINT ignored, and then no KeyboardInterrupt would come.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.0, lambda: started.wait(10) and os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    began = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            client.score_batch(items, concurrency=2)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - began < 10
    assert cancelled.is_set(), "the request in flight was still running after Ctrl-C"
    pending = asyncio.run_coroutine_threadsafe(_other_tasks(), client._loop).result(5)
    assert pending == 0
    before = loop_threads()
    client.close()
    assert loop_threads() == before - 1


async def _other_tasks() -> int:
    return sum(1 for t in asyncio.all_tasks() if t is not asyncio.current_task())


def _with_logprobs(text: str, tokens: list[str]) -> dict:
    response = _chat_response(text, "stop")
    response["choices"][0]["logprobs"] = {"content": [
        {"token": t, "logprob": -0.1, "bytes": None,
         "top_logprobs": [{"token": t, "logprob": -0.1, "bytes": None}, {"token": "2", "logprob": -2.5, "bytes": None}]}
        for t in tokens]}
    return response


def test_a_soft_score_fallback_is_stated_and_can_be_refused():
    """Item 2: with logprobs, a verdict whose tokens do not line up (markdown) silently became the hard 0/1
    reward. Now the Result says reward_kind="hard", and logprobs="require" makes it the item's error."""
    from unifiedreward.clients import RewardClient, SoftScoreUnavailableError
    from unifiedreward.clients.jobs import JobOutcome, JobPlan, summary

    answers = {"plain": _with_logprobs("Image 1 is better.", ["Image", " ", "1", " is better."]),
               "markdown": _with_logprobs("**Image 1 is better.**", ["**", "Image", " ", "1", " is better.", "**"])}

    def handler(request: httpx.Request) -> httpx.Response:
        caption = json.loads(request.content)["messages"][0]["content"][-1]["text"]
        return chat_reply(request, answers["markdown" if "markdown" in caption else "plain"])

    media = ["data:image/png;base64,AA==", "data:image/png;base64,AB=="]
    with RewardClient("http://replica/v1", transport=httpx.MockTransport(handler)) as client:
        soft = client.score("image_gen.pair_rank", media, logprobs=True, caption="plain")
        fallback = client.score("image_gen.pair_rank", media, logprobs=True, caption="markdown")
        refused = client.score("image_gen.pair_rank", media, logprobs="require", caption="markdown")
        hard_task = client.score("image_gen.pair_score", media, logprobs="require", caption="plain")
    assert soft.reward_kind == "soft" and 0.5 < soft.reward < 1.0 and soft.to_dict()["reward_kind"] == "soft"
    assert fallback.reward_kind == "hard" and fallback.reward == 1.0 and fallback.to_dict()["reward_kind"] == "hard"
    assert refused.error_type == "SoftScoreUnavailableError" and refused.text == "**Image 1 is better.**"
    with pytest.raises(SoftScoreUnavailableError, match="no soft score"):
        refused.reward
    assert refused.to_dict()["reward"] is None and refused.to_dict()["reward_kind"] is None
    assert hard_task.error_type == "BadInputError" and "has no soft score" in hard_task.error
    outcome = JobOutcome(JobPlan(3, 0, 0, 3), logprobs=True, seconds=1.0)
    for result in (soft, fallback, refused):
        outcome.add(result)
    text = summary(outcome)
    assert "2 ok, 1 failed (SoftScoreUnavailableError 1)" in text
    assert "1 soft, 1 fell back to hard" in text


def test_debiased_soft_and_hard_rewards_are_never_averaged_together():
    soft = RankVerdict("image_gen.pair_rank", 0.8, 1, p_first=0.8, reward_kind="soft", hard_reward=1.0)
    hard = RankVerdict("image_gen.pair_rank", 0.0, 2)
    mixed = Result("image_gen.pair_rank", soft, swapped=Result("image_gen.pair_rank", hard), agreement=True)
    assert mixed.reward_kind == "hard" and mixed.reward == 1.0  # (1.0 + 1 - 0.0) / 2 from the stated verdicts
    both = Result("image_gen.pair_rank", soft, swapped=Result("image_gen.pair_rank", replace(soft, reward=0.3)))
    assert both.reward_kind == "soft" and both.reward == pytest.approx((0.8 + 1 - 0.3) / 2)


def test_cli_request_prints_the_body_the_client_would_send(tmp_path, capsys):
    from PIL import Image

    from unifiedreward.clients.cli import main
    from unifiedreward.prompts import get_task

    for k in range(2):
        Image.new("RGB", (640, 480), (40 * k, 80, 120)).save(tmp_path / f"{k}.png")
    argv = ["request", "--task", "image_gen.pair_rank", "--image", str(tmp_path / "0.png"),
            "--image", str(tmp_path / "1.png"), "--caption", "a red cat", "--max-pixels", "65536"]
    assert main(argv) == 0
    body = json.loads(capsys.readouterr().out)
    task = get_task("image_gen.pair_rank")
    assert body["model"] == "UnifiedReward" and body["temperature"] == 0.0 and body["max_tokens"] == task.max_tokens
    assert body["structured_outputs"] == task.structured_outputs
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    assert parts[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert parts[2]["text"] == task.render(caption="a red cat")
    assert main(["request", "--task", "image_gen.pair_score", "--image", str(tmp_path / "0.png"),
                 "--image", str(tmp_path / "1.png"), "--caption", "c", "--logprobs", "require"]) == 2
    assert "has no soft score" in capsys.readouterr().err
