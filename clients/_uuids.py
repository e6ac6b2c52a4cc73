"""Media uuids: every inline image carries a hash of its data, and an image an endpoint has already answered for
goes to it by that uuid alone.

vLLM 0.32 takes a `uuid` on a chat content part (vllm/renderers/chat_utils.py) and keys its multimodal caches by
it instead of hashing the data (the processor cache in the API server, the encoder and prefix caches in the
engine). With the data present it still decodes the image; a part that names a uuid and carries no data
(`"image_url": null`) skips loading, decoding and the image processor when the API process that takes the request
has the uuid in its processor cache, and is refused (400 "Cache miss for image ...") when it does not: another
API server (each has its own cache), another replica behind one address, or an evicted entry. The client then
sends the request again with the data, at once (`CACHE_MISS`); nothing else changes.

Where it pays: a GRPO group sends each candidate in n - 1 pairs, debias sends each pair twice, a batch may repeat
an image. The uuid is sha256 of the data URL, so it names the content: the shared profile's guard checks that a
uuid sent with data is that data's hash, so one caller cannot attach its uuid to another picture.
"""
from __future__ import annotations

import collections
import hashlib
from typing import Any, Iterator, Mapping

UUID_PREFIX = "sha256:"
# The start of vLLM's message for a part without data whose uuid its processor cache lacks.
CACHE_MISS = "Cache miss for"
REMEMBERED_PER_ENDPOINT = 65536  # uuids kept per endpoint (an LRU): ~8 MB at most


def media_uuid(url: str) -> str:
    """The uuid of an inline image: sha256 of its data URL (serving/guard.py checks the same)."""
    return UUID_PREFIX + hashlib.sha256(url.encode("ascii")).hexdigest()


def image_part(url: str) -> dict[str, Any] | str:
    """An encoded image as the content part it is sent as: a data URL with its uuid; other URLs unchanged."""
    if not url.startswith("data:"):
        return url
    return {"type": "image_url", "image_url": {"url": url}, "uuid": media_uuid(url)}


def _parts(request: Mapping[str, Any]) -> Iterator[tuple[int, int, dict[str, Any]]]:
    for i, message in enumerate(request.get("messages") or ()):
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, Mapping) and part.get("type") == "image_url" and part.get("uuid"):
                    yield i, j, part  # type: ignore[misc]


def sent_with_data(request: Mapping[str, Any]) -> set[str]:
    """The uuids of the images a request carries with their data."""
    return {part["uuid"] for _, _, part in _parts(request) if part.get("image_url")}


def is_cache_miss(exc: BaseException) -> bool:
    """vLLM refused a part without data: the API process that took it does not hold its uuid."""
    return getattr(exc, "status_code", None) == 400 and CACHE_MISS in str(exc)


class SentMedia:
    """Per endpoint, the uuids of images it has answered a request for (so its processor cache holds them,
    unless another API process took the request or the entry was evicted: see CACHE_MISS)."""

    def __init__(self, per_endpoint: int = REMEMBERED_PER_ENDPOINT) -> None:
        self.per_endpoint = per_endpoint
        self._known: dict[str, collections.OrderedDict[str, None]] = {}
        self.slimmed = 0  # images sent by uuid alone
        self.misses = 0  # of which refused and sent again with their data

    def remember(self, endpoint: str, uuids: set[str]) -> None:
        known = self._known.setdefault(endpoint, collections.OrderedDict())
        for uuid in uuids:
            known[uuid] = None
            known.move_to_end(uuid)
        while len(known) > self.per_endpoint:
            known.popitem(last=False)

    def forget(self, endpoint: str, uuids: set[str]) -> None:
        known = self._known.get(endpoint, {})
        for uuid in uuids:
            known.pop(uuid, None)

    def slim(self, request: dict[str, Any], endpoint: str) -> tuple[dict[str, Any], set[str]]:
        """The request with every image this endpoint has answered for sent by its uuid alone (a copy; the
        original is kept for a resend), and those uuids."""
        known = self._known.get(endpoint)
        if not known:
            return request, set()
        slim: dict[tuple[int, int], dict[str, Any]] = {}
        for i, j, part in _parts(request):
            if part.get("image_url") and part["uuid"] in known:
                slim[(i, j)] = {"type": "image_url", "image_url": None, "uuid": part["uuid"]}
                known.move_to_end(part["uuid"])
        if not slim:
            return request, set()
        messages = [dict(m) for m in request["messages"]]
        for i in {i for i, _ in slim}:
            messages[i]["content"] = [slim.get((i, j), part) for j, part in enumerate(messages[i]["content"])]
        self.slimmed += len(slim)
        return {**request, "messages": messages}, {part["uuid"] for part in slim.values()}
