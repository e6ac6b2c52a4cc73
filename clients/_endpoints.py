"""Several vLLM endpoints behind one client: least-outstanding-requests balancing, affinity keys routed by
rendezvous hashing with a load bound, cool-down and /health probes for failing endpoints. Every lease is
released on every path (async context manager).

Affinity: a request with a key goes to the up endpoint that ranks highest for that key (highest random
weight: a hash of key and endpoint), so the requests sharing images meet the caches that hold them; an
endpoint that leaves gives away only its own keys. Bounded load: an endpoint holding more than
`load_factor` x the mean in flight (and at least `min_load`) passes the key's request to the key's next
endpoint, so one big group cannot pile onto one replica. Behind vLLM data parallelism (`ranks` > 1) the key
picks a rank the same way, sent in vLLM's `X-data-parallel-rank` header.

An endpoint is marked down by a failure and comes back only by a /health probe or by the success of a
request sent after that failure: an answer to a request that was already in flight says nothing about
the endpoint's state since."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

import httpx
import openai

from ._constants import (AFFINITY_LOAD_FACTOR, AFFINITY_MIN_LOAD, ENDPOINT_COOLDOWN_MAX_S, ENDPOINT_COOLDOWN_S,
                         HEALTH_TIMEOUT_S)


def affinity_token(key: object) -> str:
    """A key as a short header-safe token (16 hex digits): what the nginx front hashes, and what is hashed here."""
    return hashlib.blake2b(str(key).encode(), digest_size=8).hexdigest()


def _weight(token: str, name: str) -> int:
    """The rendezvous weight of one (key, endpoint or rank): the highest wins."""
    return int.from_bytes(hashlib.blake2b(f"{token}|{name}".encode(), digest_size=8).digest(), "big")


def bounded_rendezvous(token: str, names: list[str], loads: list[int], *, load_factor: float = AFFINITY_LOAD_FACTOR,
                       min_load: int = AFFINITY_MIN_LOAD) -> int:
    """The index in `names` a keyed request goes to: the highest-ranked for `token` whose load is under the
    bound max(min_load, ceil(load_factor x (total + 1) / n)) (consistent hashing with bounded loads: some
    name is always under it, since the loads sum to less than n x the bound)."""
    bound = max(min_load, math.ceil(load_factor * (sum(loads) + 1) / len(names)))
    ranked = sorted(range(len(names)), key=lambda i: _weight(token, names[i]), reverse=True)
    return next((i for i in ranked if loads[i] < bound), ranked[0])


@dataclass(eq=False)
class Endpoint:
    base_url: str
    api: openai.AsyncOpenAI
    in_flight: int = 0
    down_until: float = 0.0  # monotonic time; 0 = up
    cooldown_s: float = ENDPOINT_COOLDOWN_S
    probing: bool = False
    failures: int = 0
    served: int = 0
    failed_at: float = float("-inf")  # monotonic time of the last failure
    ranks: int = 1  # vLLM data-parallel size behind this URL: >1 pins keyed requests to a rank
    rank_in_flight: list[int] = field(default_factory=list)
    keyed: int = 0  # requests with an affinity key sent here

    def __post_init__(self) -> None:
        if self.ranks < 1:
            raise ValueError(f"data_parallel_size must be at least 1, got {self.ranks}")
        self.rank_in_flight = [0] * self.ranks

    @property
    def health_url(self) -> str:
        root = self.base_url.rstrip("/")
        return (root[: -len("/v1")] if root.endswith("/v1") else root) + "/health"

    def is_up(self, now: float) -> bool:
        return self.down_until <= now and not self.probing


@dataclass
class EndpointPool:
    endpoints: list[Endpoint]
    http: httpx.AsyncClient
    load_factor: float = AFFINITY_LOAD_FACTOR
    min_load: int = AFFINITY_MIN_LOAD
    _probes: set[asyncio.Task] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.load_factor >= 1.0:
            raise ValueError(f"affinity_load_factor must be at least 1.0 (1 + e), got {self.load_factor!r}")
        if self.min_load < 1:
            raise ValueError(f"affinity_min_load must be at least 1, got {self.min_load!r}")

    def others_up(self, endpoint: Endpoint) -> bool:
        """Whether a request could go elsewhere now (then no need to wait out one endpoint's Retry-After)."""
        now = time.monotonic()
        return any(ep is not endpoint and ep.is_up(now) for ep in self.endpoints)

    def pick(self, affinity: str | None = None) -> Endpoint:
        """Without a key, the up endpoint with the fewest requests in flight (random among equals); with one
        (a token from `affinity_token`), the key's endpoint by bounded rendezvous over the up endpoints. With
        none up, a request is still tried rather than failed without an attempt: on the endpoint with the
        fewest failures in a row (one that drops a connection now and then, not one that has failed every
        attempt and probe since), then the one back first."""
        now = time.monotonic()
        for ep in self.endpoints:
            if ep.down_until and ep.down_until <= now and not ep.probing:
                self._start_probe(ep)
        up = [ep for ep in self.endpoints if ep.is_up(now)]
        if not up:
            return min(self.endpoints, key=lambda ep: (ep.failures, ep.down_until))
        if affinity is not None and len(up) > 1:
            return up[bounded_rendezvous(affinity, [ep.base_url for ep in up], [ep.in_flight for ep in up],
                                         load_factor=self.load_factor, min_load=self.min_load)]
        least = min(ep.in_flight for ep in up)
        return random.choice([ep for ep in up if ep.in_flight == least])

    def pick_rank(self, ep: Endpoint, affinity: str | None) -> int | None:
        """The data-parallel rank a keyed request is pinned to on `ep` (None: vLLM's own balancer decides)."""
        if affinity is None or ep.ranks == 1:
            return None
        return bounded_rendezvous(affinity, [str(r) for r in range(ep.ranks)], ep.rank_in_flight,
                                  load_factor=self.load_factor, min_load=self.min_load)

    @contextlib.asynccontextmanager
    async def lease(self, affinity: str | None = None) -> AsyncIterator[tuple[Endpoint, int | None]]:
        """An endpoint (and data-parallel rank, or None) for one attempt, counted in flight until released."""
        ep = self.pick(affinity)
        rank = self.pick_rank(ep, affinity)
        ep.in_flight += 1
        ep.keyed += affinity is not None
        if rank is not None:
            ep.rank_in_flight[rank] += 1
        try:
            yield ep, rank
        finally:
            ep.in_flight -= 1
            if rank is not None:
                ep.rank_in_flight[rank] -= 1

    def mark_ok(self, ep: Endpoint, sent_at: float) -> None:
        """A request sent at `sent_at` (monotonic) succeeded: the endpoint is well, unless it failed since."""
        ep.served += 1
        if sent_at <= ep.failed_at:
            return  # in flight when the endpoint failed: no news about it now
        if ep.down_until or ep.failures:
            ep.down_until, ep.failures, ep.cooldown_s = 0.0, 0, ENDPOINT_COOLDOWN_S

    def mark_failed(self, ep: Endpoint, retry_after: float | None = None) -> None:
        """Skip the endpoint for a growing cool-down (at least `retry_after`, when the server asked); it
        takes traffic again once /health answers."""
        ep.failures += 1
        now = time.monotonic()
        ep.failed_at = now
        already_down = ep.down_until > now
        if retry_after is not None:
            ep.down_until = max(ep.down_until, now + retry_after)
        if already_down:
            return  # the requests that were in flight fail together: one cool-down step, not one each
        ep.down_until = max(ep.down_until, now + ep.cooldown_s)
        ep.cooldown_s = min(ep.cooldown_s * 2, ENDPOINT_COOLDOWN_MAX_S)

    def _start_probe(self, ep: Endpoint) -> None:
        ep.probing = True
        task = asyncio.get_running_loop().create_task(self._probe(ep))
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _probe(self, ep: Endpoint) -> None:
        try:
            response = await self.http.get(ep.health_url, timeout=HEALTH_TIMEOUT_S)
            healthy = response.status_code == 200
        except (httpx.HTTPError, OSError):
            healthy = False
        finally:
            ep.probing = False
        if healthy:
            ep.down_until = 0.0  # the cool-down stays grown until a request succeeds: a flapping one waits longer
        else:
            self.mark_failed(ep)

    async def aclose(self) -> None:
        """Cancel the probes still running and wait for them, so none outlives the HTTP client."""
        probes = list(self._probes)
        for task in probes:
            task.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
