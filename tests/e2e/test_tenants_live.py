"""Tenants on the real server: the `shared` profile's server runs with a tenants file (tests/conftest.py:
`trainer` interactive with the session's key, `bulk` and `capped` bulk). Each key works, an unknown one is
refused, a tenant over its cap gets 429 with Retry-After while the client's batch still scores every item,
the priorities reach vLLM's scheduler (read from the server's counters, not timed), and /metrics counts per
tenant, by name, adding up to vLLM's own totals."""
from __future__ import annotations

import asyncio

import httpx
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from unifiedreward.clients import AsyncRewardClient, Item, RewardClient
from tests.helpers import metric_total, picture


def scrape(server) -> str:
    return requests.get(server.url + "/metrics", timeout=10).text


def pair(seed: int, tmp_path) -> Item:
    paths = []
    for k in (0, 1):
        path = tmp_path / f"t{seed}-{k}.jpg"
        picture(10_000 + 2 * seed + k, 512).save(path, quality=90)
        paths.append(str(path))
    return Item("image_gen.pair_rank", paths, {"caption": f"a test picture {seed}"}, id=seed)


def test_each_tenants_key_works_and_an_unknown_key_is_refused(shared_server, tenant_keys, tmp_path):
    item = pair(0, tmp_path)
    for name in ("trainer", "bulk"):
        with RewardClient(shared_server.base_url, api_key=tenant_keys[name]) as client:
            assert client.score_batch([item])[0].ok, name
    with RewardClient(shared_server.base_url, api_key="sk-nobody-" + "n" * 24, max_retries=0) as client:
        result = client.score_batch([item])[0]
    assert not result.ok and result.error_type == "AuthenticationError", result.error
    assert "names no tenant" in result.error
    models = httpx.get(shared_server.base_url + "/models", headers={"Authorization": "Bearer sk-nobody-" + "n" * 24})
    assert models.status_code == 401
    assert httpx.get(shared_server.base_url + "/models",
                     headers={"Authorization": f"Bearer {tenant_keys['bulk']}"}).status_code == 200


def test_a_tenant_over_its_cap_gets_429_with_retry_after_and_the_batch_still_scores_every_item(
        shared_server, tenant_keys, tmp_path):
    items = [pair(100 + k, tmp_path) for k in range(24)]
    before = scrape(shared_server)

    async def raw_burst() -> list[httpx.Response]:
        """12 long answers at once (256 tokens each): 4 get slots, the rest are held 1 s and refused."""
        body = {"model": "UnifiedReward", "messages": [{"role": "user", "content": "Describe a red cat."}],
                "max_tokens": 256, "ignore_eos": True}
        async with httpx.AsyncClient(timeout=120) as http:
            return await asyncio.gather(*(
                http.post(shared_server.base_url + "/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {tenant_keys['capped']}"}) for _ in range(12)))

    answers = asyncio.run(raw_burst())
    codes = sorted(a.status_code for a in answers)
    assert 429 in codes and set(codes) <= {200, 429}, codes  # capped: max_in_flight 4 over 2 API servers
    assert codes.count(200) >= 4  # every slot was used (and held requests may have got one in their second)
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["retry-after"] == "1" and "its share of max_in_flight=4, and this one waited 1 s" in refused.json()["error"]["message"]
    with RewardClient(shared_server.base_url, api_key=tenant_keys["capped"], max_retries=8) as client:
        results = client.score_batch(items, concurrency=16)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    after = scrape(shared_server)
    refusals = (metric_total(after, "unifiedreward_tenant_refusals_total", tenant="capped", reason="over_cap")
                - metric_total(before, "unifiedreward_tenant_refusals_total", tenant="capped", reason="over_cap"))
    assert refusals >= codes.count(429)  # the raw burst's, and any the client met and retried


def test_the_bulk_tenant_waits_behind_the_interactive_one_in_vllms_queue(shared_server, tenant_keys, tmp_path,
                                                                          report_figure):
    """40 bulk pairs of distinct images queue for prefill (2,048 tokens a step on the CPU build); a probe sent
    while they wait is scheduled by its tenant's priority. Read from the server's counters: how many bulk answers
    were complete when the probe's answer came. The same probe with the bulk key is the control (first come,
    first served among equals)."""
    flood = [pair(200 + k, tmp_path) for k in range(40)]
    probe = pair(300, tmp_path)

    async def bulk_done_when_probe_answers(probe_key: str, seeds: list[Item]) -> float:
        async with AsyncRewardClient(shared_server.base_url, api_key=tenant_keys["bulk"]) as bulk, \
                AsyncRewardClient(shared_server.base_url, api_key=probe_key) as prober:
            start = metric_total(scrape(shared_server), "unifiedreward_tenant_answers_total", tenant="bulk")
            job = asyncio.create_task(bulk.score_batch(seeds, concurrency=len(seeds)))
            for _ in range(600):  # until the engine holds a queue of them
                await asyncio.sleep(0.05)
                if metric_total(scrape(shared_server), "vllm:num_requests_waiting") >= 20:
                    break
            else:
                pytest.fail("the flood never queued in the engine")
            answer = (await prober.score_batch([probe]))[0]
            done = metric_total(scrape(shared_server), "unifiedreward_tenant_answers_total", tenant="bulk") - start
            results = await job
            assert answer.ok and all(r.ok for r in results)
            return done

    interactive = asyncio.run(bulk_done_when_probe_answers(tenant_keys["trainer"], flood))
    control = asyncio.run(bulk_done_when_probe_answers(
        tenant_keys["bulk"], [pair(400 + k, tmp_path) for k in range(40)]))
    report_figure(f"tenants: of 40 queued bulk pairs, {interactive:g} were answered before an interactive probe's "
                  f"answer, {control:g} before the same probe with the bulk key")
    assert interactive < control and interactive <= 20, (interactive, control)


def test_metrics_count_per_tenant_by_name_never_by_key_and_add_up_to_vllms_totals(
        shared_server, tenant_keys, tmp_path):
    before = scrape(shared_server)
    for name, seeds in (("trainer", range(500, 506)), ("bulk", range(510, 514))):
        with RewardClient(shared_server.base_url, api_key=tenant_keys[name]) as client:
            assert all(r.ok for r in client.score_batch([pair(s, tmp_path) for s in seeds], concurrency=4))
    after = scrape(shared_server)
    assert all(key not in after for key in tenant_keys.values())
    names = {s.labels.get("tenant") for f in text_string_to_metric_families(after) for s in f.samples
             if s.name.startswith("unifiedreward_tenant_")}
    assert {"trainer", "bulk", "capped"} <= names

    def delta(name: str, **labels: str) -> float:
        return metric_total(after, name, **labels) - metric_total(before, name, **labels)

    per_tenant = {t: delta("unifiedreward_tenant_answers_total", tenant=t, status="200") for t in ("trainer", "bulk")}
    assert per_tenant == {"trainer": 6, "bulk": 4}
    assert delta("unifiedreward_tenant_requests_total") == delta("vllm:request_success_total") == 10
    assert delta("unifiedreward_tenant_prompt_tokens_total") == delta("vllm:prompt_tokens_total") > 0
    assert delta("unifiedreward_tenant_completion_tokens_total") == delta("vllm:generation_tokens_total") > 0
    assert delta("unifiedreward_tenant_in_flight") == 0


def test_bulk_requests_on_every_api_server_wait_while_an_interactive_one_runs(shared_server, tenant_keys):
    """The shared server runs two API-server processes, each with its own guard. While an interactive answer
    streams, bulk requests sent on fresh connections (vLLM accepts each on its least-loaded API server: the
    other one than the stream's, for the first) all wait at the guard: the interactive count is shared through
    one shared-memory file per API server, in vLLM's metrics folder for them. Read from the server: the
    folder holds exactly the API servers' files, and every bulk request counts one yield on /metrics."""
    from pathlib import Path

    from benchmarks.processes import ServerProcesses

    port = int(shared_server.url.rsplit(":", 1)[1])
    processes = ServerProcesses.find(port)
    assert processes is not None
    api = {p.pid for p in processes.api_servers()}
    assert len(api) == 2 and processes.root.pid not in api  # two API-server processes under one supervisor
    trainer = {"Authorization": f"Bearer {tenant_keys['trainer']}"}
    bulk = {"Authorization": f"Bearer {tenant_keys['bulk']}"}
    question = {"model": "UnifiedReward", "messages": [{"role": "user", "content": "Describe a red cat."}]}
    before = scrape(shared_server)

    async def main() -> tuple[list[int], bool]:
        async with httpx.AsyncClient(timeout=120) as http:
            async with http.stream("POST", shared_server.base_url + "/chat/completions", headers=trainer,
                                   json={**question, "max_tokens": 600, "ignore_eos": True, "stream": True}) as stream:
                lines = stream.aiter_lines()
                await anext(lines)  # the interactive request is in the engine, decoding
                async def rest() -> None:
                    async for _ in lines:
                        pass

                drain = asyncio.create_task(rest())

                async def one_bulk() -> int:
                    async with httpx.AsyncClient(timeout=120) as fresh:  # a connection of its own
                        answer = await fresh.post(shared_server.base_url + "/chat/completions", headers=bulk,
                                                  json={**question, "max_tokens": 4})
                        return answer.status_code

                statuses = await asyncio.gather(*(one_bulk() for _ in range(6)))
                streaming_still = not drain.done()
                await drain
        return list(statuses), streaming_still

    statuses, streaming_still = asyncio.run(main())
    after = scrape(shared_server)
    assert statuses == [200] * 6
    yields = (metric_total(after, "unifiedreward_tenant_yields_total", tenant="bulk")
              - metric_total(before, "unifiedreward_tenant_yields_total", tenant="bulk"))
    waited = (metric_total(after, "unifiedreward_tenant_yield_seconds_total", tenant="bulk")
              - metric_total(before, "unifiedreward_tenant_yield_seconds_total", tenant="bulk"))
    assert yields == 6 and waited > 0.5, (yields, waited, streaming_still)
    assert metric_total(after, "unifiedreward_tenant_yields_total", tenant="trainer") == 0
    # Each API server maps its own count's file (process titles overwrite /proc/<pid>/environ: read the maps).
    own = {p.pid: [m.path for m in p.memory_maps() if m.path.endswith(f"/unifiedreward-guard/{p.pid}")]
           for p in processes.api_servers()}
    assert all(own.values()), own
    folder = Path(next(iter(own.values()))[0]).parent
    assert {int(f.name) for f in folder.iterdir()} == api, sorted(folder.iterdir())
    assert any(folder.parent.glob("counter_*.db"))  # vLLM's metrics folder for its API servers, removed with it
