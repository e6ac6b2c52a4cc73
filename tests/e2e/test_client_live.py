"""The client an RL loop leans on, against the live server(s): batches with bad items, several endpoints
with one stopped mid-batch, groups, debias, videos, deadlines, and the CLI."""
from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys
import threading
import time

import av
import numpy as np
import pytest
import requests

from unifiedreward.clients import AsyncRewardClient, Item, RewardClient
from unifiedreward.clients.groups import all_pairs
from tests.helpers import picture

CAPTION = "a red circle above a blue square"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(12):
        path = folder / f"img{i}.png"
        picture(i, size=320).save(path)
        paths.append(path)
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(paths[0].read_bytes()[:200])  # a truncated PNG
    return {"good": paths, "corrupt": corrupt, "missing": folder / "missing.png"}


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "bar.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 320, 256, "yuv420p"
        for i in range(48):
            frame = np.zeros((256, 320, 3), np.uint8)
            frame[:, (i * 6) % 300:(i * 6) % 300 + 20] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def batch_with_bad_items(images, n: int = 200):
    """n pair_rank items; every 10th is bad, cycling through three kinds of bad."""
    good, items, bad = images["good"], [], {}
    for i in range(n):
        media = [good[i % 12], good[(i + 1) % 12]]
        if i % 10 == 3:
            kind = ("missing", "corrupt", "count")[(i // 10) % 3]
            media = {"missing": [images["missing"], good[0]], "corrupt": [images["corrupt"], good[0]],
                     "count": [good[0]]}[kind]
            bad[i] = kind
        items.append(Item("image_gen.pair_rank", media, {"caption": CAPTION}, id=i))
    return items, bad


def test_batch_of_200_with_10_percent_bad_items(live_server, images):
    items, bad = batch_with_bad_items(images)
    assert len(bad) == 20
    with RewardClient(live_server.base_url) as client:
        results = client.score_batch(items, concurrency=32)
    assert [r.id for r in results] == list(range(200))
    failed = {r.id for r in results if not r.ok}
    assert failed == set(bad)
    messages = {"missing": "not found", "corrupt": "cannot decode", "count": "takes 2 image"}
    for r in results:
        if r.ok:
            assert r.verdict.winner in (1, 2, None) and r.attempts == 1 and r.endpoint == live_server.base_url
            assert r.usage["prompt_tokens"] > 0 and r.latency_s > 0
        else:
            assert r.error_type == "BadInputError" and messages[bad[r.id]] in r.error
            assert r.verdict is None and r.attempts == 0


def test_two_endpoints_one_stopped_mid_batch(live_server, second_server, api_key, images):
    """Every item still gets exactly one result, and all are scored: the survivor takes over. (The second
    replica runs the `shared` profile and wants the key; the first has none and ignores it.)"""
    items = [Item("image_gen.pair_rank", [images["good"][i % 12], images["good"][(i + 5) % 12]],
                  {"caption": CAPTION}, id=i) for i in range(200)]
    with RewardClient(second_server.base_url, api_key=api_key) as warm_up:  # a fresh replica's first requests are slow
        assert all(r.ok for r in warm_up.score_batch(items[:4]))
    done = []
    stopper = threading.Thread(target=second_server.stop)

    def on_result(result) -> None:
        done.append(result)
        # Stop it once it has served a few items of this batch (both replicas are then in use) and while
        # most of the batch is still to come.
        if not stopper.ident and sum(r.endpoint == second_server.base_url for r in done) >= 3:
            stopper.start()

    client = RewardClient([live_server.base_url, second_server.base_url], api_key=api_key, max_retries=4)
    try:
        results = client.score_batch(items, concurrency=16, progress=on_result)
        endpoints = client._async.pool.endpoints
        assert all(ep.in_flight == 0 for ep in endpoints)  # released on every path, errors included
    finally:
        client.close()
        if stopper.is_alive():
            stopper.join()
    assert stopper.ident is not None, "the second replica was never stopped"
    assert [r.id for r in results] == list(range(200)) and len(done) == 200
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    served = {url: sum(r.endpoint == url for r in results) for url in (live_server.base_url, second_server.base_url)}
    assert served[second_server.base_url] > 0, "the second replica served before it was stopped"
    assert served[live_server.base_url] > served[second_server.base_url]
    assert not second_server.healthy()


def test_group_of_6_gives_each_pair_the_verdict_it_gets_alone(live_server, images):
    """rank_group encodes each candidate once and orders the pairs for vLLM's prefix cache: neither may
    change what the model sees. Every pair's verdict equals the one it gets scored alone (greedy)."""
    with RewardClient(live_server.base_url) as client:
        group = client.rank_group("image_gen.pair_rank", images["good"][:6], caption=CAPTION)
        alone = client.score_batch([Item("image_gen.pair_rank", [images["good"][i], images["good"][j]],
                                         {"caption": CAPTION}, id=(i, j)) for i, j in all_pairs(6)])
    assert group.errors == 0 and [p.id for p in group.pairs] == all_pairs(6)
    assert [p.verdict for p in group.pairs] == [r.verdict for r in alone]
    assert group.games == [5] * 6 and sorted(group.ranking) == list(range(6))
    wins = [sum((p.verdict.winner == 1) if i == p.id[0] else (p.verdict.winner == 2) for p in group.pairs
                if i in p.id) for i in range(6)]
    if max(wins) > min(wins):  # the candidate with the most outright wins ranks first
        assert wins[group.ranking[0]] == max(wins)


def test_group_with_a_pair_budget_and_a_bad_candidate(live_server, images):
    """The missing candidate's pairs fail alone; it has no games, no strength and no rank (it used to keep
    the starting strength and rank as if judged)."""
    media = list(images["good"][:5]) + [images["missing"]]
    with RewardClient(live_server.base_url) as client:
        group = client.rank_group("image_gen.pair_score", media, pairs=8, caption=CAPTION)
    assert len(group.pairs) == 8
    with_bad = [p for p in group.pairs if 5 in p.id]
    assert with_bad, "the budget gives every candidate games"
    assert all(p.error_type == "BadInputError" and "not found" in p.error for p in with_bad)
    assert all(p.ok for p in group.pairs if 5 not in p.id)
    assert group.errors == len(with_bad)
    assert group.games[5] == 0 and group.strengths[5] is None and group.win_rates[5] is None
    assert 5 not in group.ranking and sorted(group.ranking) == [i for i in range(5) if group.games[i]]
    assert sum(group.strengths[i] for i in group.ranking) == pytest.approx(1.0)


def test_debias_scores_both_orders(live_server, images):
    """The swapped result is the pair the other way round on the server (the same answer as scoring the
    reversed pair directly), and the debiased reward combines the two orders' own kind of reward."""
    a, b = images["good"][:2]
    with RewardClient(live_server.base_url) as client:
        result = client.score("image_gen.pair_rank", [a, b], debias=True, logprobs=True, caption=CAPTION)
        reversed_pair = client.score("image_gen.pair_rank", [b, a], logprobs=True, caption=CAPTION)
        understanding = client.score("image_und.pair_rank", [a], debias=True, constraint="verdict",
                                     question="What is shown?", answer1="Circles.", answer2="Nothing.")
        answers_swapped = client.score("image_und.pair_rank", [a], constraint="verdict", question="What is shown?",
                                       answer1="Nothing.", answer2="Circles.")
    assert result.ok and result.swapped.text == reversed_pair.text
    assert result.swapped.verdict.winner == reversed_pair.verdict.winner
    assert result.reward_kind == "soft" and 0.0 <= result.reward <= 1.0
    assert understanding.ok and understanding.swapped.text == answers_swapped.text
    assert understanding.reward_kind == "hard"
    # Hard verdicts of the two orders: both prefer the same answer -> 1 or 0; they contradict -> 0.5.
    first, second = understanding.verdict.winner, understanding.swapped.verdict.winner
    agree = first is not None and second is not None and first != second
    assert understanding.agreement == agree
    if agree:
        assert understanding.reward == {1: 1.0, 2: 0.0}[first]
    elif first == second:  # each order prefers whichever answer comes first: no preference
        assert understanding.reward == 0.5


def test_video_file_as_frames_and_as_url(live_server, video):
    with RewardClient(live_server.base_url) as frames_client:
        as_frames = frames_client.score("video_gen.point_score", [video], caption="a white bar moves right")
    with RewardClient(live_server.base_url, video_mode="url") as url_client:
        as_url = url_client.score("video_und.point_score", [video], question="What moves?", response="A bar.")
    assert as_frames.ok and as_url.ok, (as_frames.error, as_url.error)
    assert as_frames.usage["prompt_tokens"] > 16 * 64  # 16 frames reached the model
    assert as_url.verdict.final_score in (1, 2, 3, 4, 5)


def test_corrupt_video_fails_alone(live_server, video, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(video.read_bytes()[:300])
    items = [Item("video_und.point_score", [path], {"question": "q", "response": "r"}, id=str(path.name))
             for path in (video, broken, video)]
    with RewardClient(live_server.base_url) as client:
        results = client.score_batch(items)
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error_type == "BadInputError" and "video" in results[1].error


def test_deadline_turns_unfinished_items_into_errors(live_server, images):
    items = [Item("image_gen.pair_rank", images["good"][:2], {"caption": CAPTION}, id=i) for i in range(5)]
    with RewardClient(live_server.base_url) as client:
        results = client.score_batch(items, deadline_s=0)
    assert [r.error_type for r in results] == ["DeadlineExceededError"] * 5


def test_a_deadline_passing_mid_batch_cancels_what_is_in_flight(live_server, images):
    """Items finished before the deadline keep their verdicts; the rest fail as DeadlineExceededError at
    the deadline (not when their requests end); their requests are cancelled on the server too; the
    client stays usable."""
    good = images["good"]
    items = [Item("image_gen.pair_score", [good[i % 12], good[(i + 4) % 12]], {"caption": CAPTION}, id=i)
             for i in range(40)]
    with RewardClient(live_server.base_url) as client:
        single = client.score_batch(items[:1])[0]
        assert single.ok
        deadline = max(1.0, 4 * single.latency_s)
        started = time.monotonic()
        results = client.score_batch(items, concurrency=2, deadline_s=deadline)
        elapsed = time.monotonic() - started
        after = client.score("image_gen.pair_rank", good[:2], caption=CAPTION)
    kinds = collections.Counter(r.error_type for r in results)
    assert [r.id for r in results] == list(range(40))
    assert kinds[None] >= 1 and kinds["DeadlineExceededError"] >= 10, kinds
    assert set(kinds) == {None, "DeadlineExceededError"}, kinds
    assert elapsed < deadline + 2.0, (elapsed, deadline)
    assert after.ok
    # The cancelled requests were dropped by the client's connections closing: vLLM aborts them.
    for _ in range(50):
        if running_requests(live_server) == 0:
            break
        time.sleep(0.1)
    assert running_requests(live_server) == 0


def running_requests(server) -> float:
    text = requests.get(server.url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:num_requests_running"))


def test_async_client_is_the_same_core(live_server, images):
    async def main():
        async with AsyncRewardClient(live_server.base_url) as client:
            return await asyncio.gather(client.score("image_gen.point_score_acs", images["good"][:1], caption=CAPTION),
                                        client.score_batch([Item("nope", [])]))

    result, (bad,) = asyncio.run(main())
    assert bad.error_type == "BadInputError" and "unknown task 'nope'" in bad.error
    assert result.ok and set(result.verdict.scores) == {"alignment", "coherence", "style"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unifiedreward.clients", *args], capture_output=True, text=True, timeout=300)


def test_cli_score_one_item(live_server, images):
    proc = run_cli("score", "--task", "image_gen.pair_rank", "--image", str(images["good"][0]),
                   "--image", str(images["good"][1]), "--caption", CAPTION, "--base-url", live_server.base_url)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["verdict"]["winner"] in (1, 2, None) and result["error"] is None


def test_cli_batch_jsonl_in_order_with_failures(live_server, images, tmp_path):
    good = [str(p) for p in images["good"]]
    lines = [json.dumps({"id": f"item-{i}", "task": "image_gen.pair_rank", "images": [good[i], good[i + 1]],
                         "caption": CAPTION}) for i in range(6)]
    lines[2] = json.dumps({"id": "item-2", "task": "image_gen.pair_rank", "images": [str(images["missing"]), good[0]],
                           "caption": CAPTION})
    lines.insert(4, "{this is not json")
    lines.append(json.dumps({"id": "q", "task": "image_und.point_score", "images": [good[0]],
                             "question": "What is shown?", "response": "Circles."}))
    source, target = tmp_path / "items.jsonl", tmp_path / "results.jsonl"
    source.write_text("\n".join(lines) + "\n")
    proc = run_cli("score", "--input", str(source), "--output", str(target), "--concurrency", "4",
                   "--constraint", "verdict", "--base-url", live_server.base_url)
    assert proc.returncode == 1  # some items failed
    out = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(out) == len(lines)
    # a line that is not an item has no id of its own: it is known by its line number
    assert [o["id"] for o in out] == ["item-0", "item-1", "item-2", "item-3", 5, "item-4", "item-5", "q"]
    assert list(out[0])[:6] == ["id", "verdict", "error", "text", "usage", "latency_s"]
    assert [o["error"] is None for o in out] == [True, True, False, True, False, True, True, True]
    assert "not found" in out[2]["error"] and "invalid JSON" in out[4]["error"]
    assert "8 items" in proc.stderr and "6 ok, 2 failed" in proc.stderr


def test_cli_group(live_server, images):
    proc = run_cli("group", "--task", "image_gen.pair_rank", "--caption", CAPTION, "--base-url", live_server.base_url,
                   *[arg for p in images["good"][:4] for arg in ("--image", str(p))])
    assert proc.returncode == 0, proc.stderr
    group = json.loads(proc.stdout)
    assert group["games"] == [3, 3, 3, 3] and group["errors"] == 0 and len(group["pairs"]) == 6
    assert sorted(group["ranking"]) == [0, 1, 2, 3]
    strengths = group["strengths"]
    assert [strengths[i] for i in group["ranking"]] == sorted(strengths, reverse=True)
