"""End to end against the real vLLM server (tiny checkpoint), over HTTP."""
from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from unifiedreward.clients import BadInputError
from unifiedreward.prompts import RankVerdict, ScoreVerdict, get_task
from tests.helpers import picture

CAPTION = "a red circle above a blue square"


def jpeg_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return base64.b64encode(buffer.getvalue()).decode()


def test_models_lists_unifiedreward(live_server):
    models = openai.OpenAI(base_url=live_server.base_url, api_key="EMPTY").models.list()
    assert "UnifiedReward" in [m.id for m in models.data]


def test_pair_rank_through_the_client(client):
    task = get_task("image_gen.pair_rank")
    result = client.score(task, [picture(1), picture(2)], caption=CAPTION)
    result.raise_for_error()
    assert isinstance(result.verdict, RankVerdict)
    assert result.text in task.decisive_stops  # stopped at the deciding token (decode="decisive")
    stated = next(c for c in task.structured_outputs["choice"] if c.startswith(result.text))
    assert result.verdict.winner == task.parse(stated).winner
    assert result.verdict.winner in (1, 2, None)
    assert result.verdict.reward == {1: 1.0, 2: 0.0, None: 0.5}[result.verdict.winner]
    # Two 512 x 512 images at 256 vision tokens each, plus the instruction.
    assert result.usage["prompt_tokens"] > 2 * 256
    assert result.latency_s > 0


def test_point_score_acs_through_the_client(client):
    result = client.score("image_gen.point_score_acs", [picture(3, size=1024)], caption=CAPTION)
    result.raise_for_error()
    assert isinstance(result.verdict, ScoreVerdict)
    assert set(result.verdict.scores) == {"alignment", "coherence", "style"}
    assert all(1.0 <= v <= 5.0 for v in result.verdict.scores.values())
    assert 0.0 <= result.verdict.reward <= 1.0
    # The client resized 1024 x 1024 to the 512 x 512 cap: 256 vision tokens, not 1024.
    assert result.usage["prompt_tokens"] < 256 + 400


def test_bad_input_is_refused_before_sending(client):
    result = client.score("image_gen.pair_rank", [picture(4)], caption=CAPTION)
    assert not result.ok and result.error_type == "BadInputError" and result.attempts == 0
    assert "takes 2 image" in result.error
    with pytest.raises(BadInputError, match="takes 2 image"):
        result.reward


def test_request_shaped_like_the_authors_client(live_server):
    """As in the authors' vllm_request.py: JPEG base64 parts before the text, do_sample and max_tokens."""
    prompt = get_task("image_gen.pair_rank").render(caption=CAPTION)
    content = [{"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{jpeg_b64(picture(s))}"}}
               for s in (5, 6)]
    content.append({"type": "text", "text": prompt})
    payload = {"model": "UnifiedReward", "messages": [{"role": "user", "content": content}],
               "do_sample": False, "max_tokens": 32}
    response = requests.post(f"{live_server.base_url}/chat/completions", json=payload, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["usage"]["completion_tokens"] <= 32


def batched_decode_steps(server) -> float:
    """Engine steps that computed 2 to 8 tokens: decode steps shared by several requests (a prefill of
    these prompts computes hundreds of tokens; a lone request decodes one token per step)."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    buckets = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:iteration_tokens_total_bucket":
                buckets[sample.labels["le"]] = buckets.get(sample.labels["le"], 0.0) + sample.value
    return buckets["8.0"] - buckets["1.0"]


def test_concurrent_requests_are_batched_together(live_server):
    """Continuous batching: 8 requests sent at once share the engine's decode steps; the same 8 sent one
    after another never do. Read from vLLM's own histogram of tokens per step: counted, not timed."""
    api = openai.OpenAI(base_url=live_server.base_url, api_key="EMPTY", max_retries=0)
    task = get_task("image_gen.pair_rank")

    def send(seed: int) -> None:
        urls = [f"data:image/jpeg;base64,{jpeg_b64(picture(seed * 2 + i, size=256))}" for i in range(2)]
        reply = api.chat.completions.create(model="UnifiedReward", messages=task.messages(urls, caption=CAPTION),
                                            max_tokens=48, extra_body={"ignore_eos": True})
        assert reply.usage.completion_tokens == 48

    send(1000)  # warm-up
    before = batched_decode_steps(live_server)
    for seed in range(100, 108):
        send(seed)
    sequential = batched_decode_steps(live_server) - before
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, range(200, 208)))
    concurrent = batched_decode_steps(live_server) - before - sequential
    assert sequential == 0, f"{sequential:g} shared steps while requests went one at a time"
    assert concurrent >= 10, f"only {concurrent:g} decode steps were shared by several requests"


def test_cpu_build_binds_engine_core_to_its_workers_cores(live_server):
    """On vLLM's CPU build the launcher binds EngineCore to the cores its worker bound itself to
    (serving/cpu_affinity.py): every EngineCore thread, including those it started after, stays off the cores
    left to the API server and the clients."""
    import os
    import time

    import psutil

    from unifiedreward.serving.config import detect_platform
    from unifiedreward.serving.cpu_affinity import ENGINE_NAME, named, worker_cpus

    if detect_platform() != "cpu":
        pytest.skip("the CUDA build: nothing is bound")
    workers = worker_cpus(live_server.proc.pid)
    if not workers or workers >= os.sched_getaffinity(0):
        pytest.skip("the worker is bound to every CPU here: no core is left to keep EngineCore off")
    engines = [p for p in psutil.Process(live_server.proc.pid).children(recursive=True) if named(p, ENGINE_NAME)]
    assert engines, "no VLLM::EngineCore process under the server"

    def affinity(thread_id: int) -> set[int]:
        try:
            return os.sched_getaffinity(thread_id)
        except OSError:  # the thread ended meanwhile
            return set()

    deadline = time.monotonic() + 10  # bound within a second of the worker binding itself, before ready
    while True:
        unbound = [(e.pid, t.id, affinity(t.id)) for e in engines for t in e.threads()
                   if not affinity(t.id) <= workers]
        if not unbound or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not unbound, f"EngineCore threads not bound to the worker's CPUs {sorted(workers)}: {unbound[:3]}"
