"""Media uuids (clients/_uuids.py): what goes on the wire, scripted with httpx.MockTransport, and the guard's check."""
from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from unifiedreward.clients import RewardClient
from unifiedreward.clients._uuids import SentMedia, image_part, media_uuid, sent_with_data
from unifiedreward.serving.guard import Refused, _check_uuid
from unifiedreward.serving.guard import media_uuid as guard_uuid
from tests.helpers import chat_reply

A, B, C = ("data:image/png;base64," + x for x in ("AAAA", "BBBB", "CCCC"))


def _answer(text: str = "Image 1 is better.") -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "UnifiedReward",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}


class Wire:
    """A scripted server that records the image parts of every request and refuses a part without data whose
    uuid it has not seen with data (vLLM's processor cache, as one API process holds it)."""

    def __init__(self, forget_after: int | None = None) -> None:
        self.requests: list[list[dict]] = []
        self.cached: set[str] = set()
        self.forget_after = forget_after

    def __call__(self, request: httpx.Request) -> httpx.Response:
        parts = [p for p in json.loads(request.content)["messages"][0]["content"] if p["type"] == "image_url"]
        self.requests.append(parts)
        if self.forget_after is not None and len(self.requests) == self.forget_after:
            self.cached.clear()  # another API process, or an evicted entry
        for index, part in enumerate(parts):
            if part["image_url"] is None and part["uuid"] not in self.cached:
                return httpx.Response(400, json={"error": {"message": f"Cache miss for image at index {index} but "
                                                           "data is not provided.", "type": "BadRequestError",
                                                           "code": 400}})
        self.cached |= {p["uuid"] for p in parts if p["image_url"] and "uuid" in p}
        return chat_reply(request, _answer())


def test_a_uuid_is_the_hash_of_its_data_url_in_the_client_and_the_guard():
    assert media_uuid(A) == "sha256:" + hashlib.sha256(A.encode()).hexdigest() == guard_uuid(A)
    assert image_part(A) == {"type": "image_url", "image_url": {"url": A}, "uuid": media_uuid(A)}
    assert image_part("https://x/a.png") == "https://x/a.png"  # a fetched URL: no uuid (its bytes are not here)


def test_slim_sends_what_the_endpoint_answered_for_by_uuid_alone_and_keeps_the_original():
    media = SentMedia(per_endpoint=2)
    request = {"messages": [{"role": "user", "content": [image_part(A), image_part(B), {"type": "text", "text": "t"}]}]}
    assert media.slim(request, "e1") == (request, set())
    media.remember("e1", sent_with_data(request))
    slim, uuids = media.slim(request, "e1")
    assert uuids == {media_uuid(A), media_uuid(B)}
    assert slim["messages"][0]["content"][:2] == [{"type": "image_url", "image_url": None, "uuid": media_uuid(A)},
                                                  {"type": "image_url", "image_url": None, "uuid": media_uuid(B)}]
    assert request["messages"][0]["content"][0]["image_url"] == {"url": A}  # the original, for a resend
    assert media.slim(request, "e2") == (request, set())  # per endpoint
    media.remember("e1", {media_uuid(C)})  # an LRU of 2: B was used last, A goes
    assert media.slim(request, "e1")[1] == {media_uuid(B)}
    media.forget("e1", {media_uuid(B)})
    assert media.slim(request, "e1")[1] == set()


def test_a_repeated_image_goes_by_uuid_alone_and_a_cache_miss_is_sent_again_with_the_data():
    wire = Wire(forget_after=3)
    with RewardClient("http://replica/v1", transport=httpx.MockTransport(wire)) as client:
        first = client.score("image_gen.pair_rank", [A, B], caption="c")
        second = client.score("image_gen.pair_rank", [B, C], caption="c")  # B by uuid; C with data
        third = client.score("image_gen.pair_rank", [A, C], caption="c")  # both by uuid: refused, sent whole
        media = client.media
    assert first.ok and second.ok and third.ok and third.attempts == 1  # a miss is no failed attempt
    kinds = [["uuid" if p["image_url"] is None else "data" for p in parts] for parts in wire.requests]
    assert kinds == [["data", "data"], ["uuid", "data"], ["uuid", "uuid"], ["data", "data"]]
    assert all(p["uuid"] == media_uuid(p["image_url"]["url"]) for parts in wire.requests for p in parts if p["image_url"])
    assert (media.slimmed, media.misses) == (3, 2)


def test_media_uuids_off_sends_every_image_whole_and_without_uuid():
    wire = Wire()
    with RewardClient("http://replica/v1", media_uuids=False, transport=httpx.MockTransport(wire)) as client:
        assert client.score("image_gen.pair_rank", [A, B], caption="c").ok
        assert client.score("image_gen.pair_rank", [A, B], caption="c").ok
    assert all("uuid" not in p and p["image_url"]["url"] in (A, B) for parts in wire.requests for p in parts)


def test_a_group_and_debias_send_each_image_with_its_data_once():
    """rank_group: the images go with their data only in the first wave (one pair per leading candidate, sent
    together: 2 (n - 1) images), every later pair names them by uuid; debias: the second order waits for the
    first one's first token and then names both images by uuid."""
    stream_wire = Wire()

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        response = stream_wire(request)
        if not body.get("stream") or response.status_code != 200:
            return response
        chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "UnifiedReward",
                 "choices": [{"index": 0, "delta": {"content": "Image 1"}, "finish_reason": "stop"}]}
        usage = {**chunk, "choices": [], "usage": _answer()["usage"]}
        text = "".join(f"data: {json.dumps(c)}\n\n" for c in (chunk, usage)) + "data: [DONE]\n\n"
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})

    images = ["data:image/png;base64," + x * 4 for x in "ABCDE"]
    with RewardClient("http://replica/v1", transport=httpx.MockTransport(handler)) as client:
        group = client.rank_group("image_gen.pair_rank", images, caption="c")
        with_data = sum(p["image_url"] is not None for parts in stream_wire.requests for p in parts)
        assert group.errors == 0 and len(stream_wire.requests) == 10
        assert with_data == 2 * (len(images) - 1)  # the first wave; the other 6 pairs by uuid alone
        stream_wire.requests.clear()
        fresh = ["data:image/png;base64," + x * 8 for x in "XY"]
        debiased = client.score("image_gen.pair_rank", fresh, caption="c", debias=True)
    assert debiased.ok and debiased.swapped is not None
    assert [[p["image_url"] is None for p in parts] for parts in stream_wire.requests] == [[False, False], [True, True]]


@pytest.mark.parametrize("uuid, url, problem", [
    ("img-1", A, "sha256"),                                      # not a content hash
    ("sha256:" + "0" * 64, A, "does not match its data"),        # another content's hash
    ("sha256:" + "Z" * 64, None, "sha256"),                      # not hex
    (media_uuid(A), "https://cdn.example.org/a.png", "inline data only"),
])
def test_the_guard_refuses_a_uuid_that_does_not_name_its_content(uuid, url, problem):
    with pytest.raises(Refused, match=problem):
        _check_uuid("messages[0].content[0].image_url", url, uuid)


def test_the_guard_passes_a_uuid_with_its_data_and_a_well_formed_uuid_alone():
    _check_uuid("p", A, media_uuid(A))
    _check_uuid("p", None, media_uuid(B))
