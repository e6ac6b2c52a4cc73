"""Media uuids on the live tiny servers: an image sent again by its uuid alone gives the verdicts it gives with
its data (groups, debias, a batch that repeats an image), through 2 API servers (each with its own processor
cache: a miss is sent again with the data), and the shared profile's guard refuses a uuid that does not name
its content."""
from __future__ import annotations

import httpx

from unifiedreward.clients import Item, RewardClient, encode_image
from unifiedreward.clients._uuids import media_uuid
from unifiedreward.prompts import get_task
from tests.helpers import picture


def _rewards(results) -> list[float]:
    return [round(r.reward, 6) for r in results]


def test_a_repeated_image_by_uuid_gives_the_verdicts_it_gives_with_its_data(live_server):
    images = [picture(60_000 + k, size=192) for k in range(6)]
    reference = picture(60_100, size=192)  # one image in every pair of the batch
    batch = [Item("image_gen.pair_rank", [reference, image], {"caption": "a red cat"}, id=k)
             for k, image in enumerate(images)]
    outcomes = {}
    for uuids in (False, True):
        with RewardClient(live_server.base_url, media_uuids=uuids) as client:
            group = client.rank_group("image_gen.pair_rank", images, caption="a red cat", logprobs=True)
            debiased = client.score_batch(batch[:3], logprobs=True, debias=True, concurrency=1)
            repeated = client.score_batch(batch, logprobs=True, concurrency=1)
            outcomes[uuids] = (group, debiased, repeated, client.media.slimmed, client.media.misses)
    plain, by_uuid = outcomes[False], outcomes[True]
    assert plain[0].errors == by_uuid[0].errors == 0
    assert _rewards(plain[0].pairs) == _rewards(by_uuid[0].pairs)
    assert _rewards(plain[1]) == _rewards(by_uuid[1]) and _rewards(plain[2]) == _rewards(by_uuid[2])
    assert plain[3] == 0 and by_uuid[3] > 0  # images did go by uuid alone
    # 2 API servers with a cache each: some uuids miss and go again with their data; none is an error.
    assert by_uuid[4] <= by_uuid[3]


def test_the_shared_profile_takes_the_clients_uuids_and_refuses_a_forged_one(shared_server, api_key):
    images = [picture(61_000 + k, size=128) for k in range(4)]
    with RewardClient(shared_server.base_url, api_key=api_key) as client:
        group = client.rank_group("image_gen.pair_rank", images, caption="a dog")
        assert group.errors == 0 and client.media.slimmed > 0
    task = get_task("image_gen.pair_rank")
    mine, theirs = encode_image(picture(61_100, size=128)), encode_image(picture(61_101, size=128))
    forged = {"type": "image_url", "image_url": {"url": mine}, "uuid": media_uuid(theirs)}  # another's picture
    body = {"model": "UnifiedReward", "max_tokens": 8, "messages": [{"role": "user", "content": [
        forged, {"type": "image_url", "image_url": {"url": theirs}}, {"type": "text", "text": task.render(caption="x")}]}]}
    answer = httpx.post(shared_server.base_url + "/chat/completions", json=body, timeout=60,
                        headers={"Authorization": f"Bearer {api_key}"})
    assert answer.status_code == 400 and "does not match its data" in answer.json()["error"]["message"]
