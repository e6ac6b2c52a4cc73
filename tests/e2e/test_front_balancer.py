"""Two `shared` replicas behind one front address (nginx, least connections): one is killed mid-batch.

Nothing is lost (every item gets its one result, all scored) and nothing is scored twice: nginx's access
log shows exactly one successful upstream answer per item.
"""
from __future__ import annotations

import threading

import pytest

from unifiedreward.clients import Item, RewardClient
from unifiedreward.serving.frontend import FrontProxy, find_nginx, keyed_answers, upstream_answers
from unifiedreward.serving.process import free_port
from tests.helpers import picture

N = 60


@pytest.fixture
def front(shared_server, second_server, tmp_path):
    try:
        find_nginx()
    except FileNotFoundError as exc:
        pytest.fail(f"{exc}: `make setup` installs it", pytrace=False)
    upstreams = [f"{s.host}:{s.port}" for s in (shared_server, second_server)]
    with FrontProxy(upstreams, port=free_port(), prefix=tmp_path / "nginx") as proxy:
        yield proxy


def test_batch_survives_a_replica_killed_behind_the_front_address(front, shared_server, second_server, api_key):
    victim = f"{second_server.host}:{second_server.port}"
    survivor = f"{shared_server.host}:{shared_server.port}"
    items = [Item("image_gen.pair_rank", [picture(i, 256), picture(i + 100, 256)], {"caption": "a red circle"}, id=i)
             for i in range(N)]
    killer = threading.Thread(target=second_server.kill)

    def on_result(_result) -> None:
        if not killer.ident and sum(a == (victim, "200") for a in upstream_answers(front.access_log)) >= 3:
            killer.start()

    with RewardClient(front.url + "/v1", api_key=api_key, max_retries=4) as client:
        results = client.score_batch(items, concurrency=8, progress=on_result)
    if killer.ident:
        killer.join()
    assert killer.ident is not None, "the replica was never killed"
    assert not second_server.healthy()
    assert [r.id for r in results] == list(range(N))
    assert all(r.ok for r in results), [str(r.error) for r in results if not r.ok][:3]
    answers = upstream_answers(front.access_log)
    successes = [a for a in answers if a[1] == "200"]
    # Every item answered by a replica; an answer more only for an item the client had to send again (a
    # replica killed while its 200 was still on the wire: nginx logs the 200, the client gets a cut body).
    retried = sum(r.attempts - 1 for r in results)
    assert N <= len(successes) <= N + retried, (len(successes), retried)
    assert {a for a, _ in successes} == {victim, survivor}  # both replicas served this batch
    assert sum(a == survivor for a, _ in successes) > sum(a == victim for a, _ in successes)


def test_keyed_groups_stay_on_one_replica_behind_the_front_and_the_rest_balance(front, shared_server, second_server,
                                                                                 api_key):
    """The client sends a group's key in X-UnifiedReward-Affinity; nginx hashes it consistently (every answer of
    a key from one replica), while requests without a key still go least-connections."""
    start = len(keyed_answers(front.access_log))
    with RewardClient(front.url + "/v1", api_key=api_key) as client:
        groups = [client.rank_group("image_gen.pair_rank", [picture(70_000 + 10 * g + i, 256) for i in range(4)],
                                    caption="a red circle") for g in range(6)]
        plain = client.score_batch([Item("image_gen.pair_rank", [picture(71_000 + 2 * i, 256),
                                                                 picture(71_001 + 2 * i, 256)],
                                         {"caption": "a red circle"}, id=i) for i in range(16)], concurrency=8)
    assert all(g.errors == 0 for g in groups) and all(r.ok for r in plain)
    rows = keyed_answers(front.access_log)[start:]
    per_key: dict[str, set[str]] = {}
    for replica, status, key in rows:
        if key is not None and status == "200":
            per_key.setdefault(key, set()).add(replica)
    assert len(per_key) == 6 and all(len(replicas) == 1 for replicas in per_key.values()), per_key
    unkeyed = [replica for replica, status, key in rows if key is None and status == "200"]
    assert len(unkeyed) == 16 and len(set(unkeyed)) == 2  # least connections spreads the rest
