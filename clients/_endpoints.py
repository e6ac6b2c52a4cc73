"""Several vLLM endpoints behind one client: least-outstanding-requests balancing, cool-down and /health
probes for failing endpoints. Every lease is released on every path (async context manager).

An endpoint is marked down by a failure and comes back only by a /health probe or by the success of a
request sent after that failure: an answer to a request that was already in flight says nothing about
the endpoint's state since."""
from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

import httpx
import openai

from ._constants import ENDPOINT_COOLDOWN_MAX_S, ENDPOINT_COOLDOWN_S, HEALTH_TIMEOUT_S


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
    _probes: set[asyncio.Task] = field(default_factory=set)

    def others_up(self, endpoint: Endpoint) -> bool:
        """Whether a request could go elsewhere now (then no need to wait out one endpoint's Retry-After)."""
        now = time.monotonic()
        return any(ep is not endpoint and ep.is_up(now) for ep in self.endpoints)

    def pick(self) -> Endpoint:
        """The up endpoint with the fewest requests in flight (random among equals). With none up, a request
        is still tried rather than failed without an attempt: on the endpoint with the fewest failures in a
        row (one that drops a connection now and then, not one that has failed every attempt and probe
        since), then the one back first."""
        now = time.monotonic()
        for ep in self.endpoints:
            if ep.down_until and ep.down_until <= now and not ep.probing:
                self._start_probe(ep)
        up = [ep for ep in self.endpoints if ep.is_up(now)]
        if not up:
            return min(self.endpoints, key=lambda ep: (ep.failures, ep.down_until))
        least = min(ep.in_flight for ep in up)
        return random.choice([ep for ep in up if ep.in_flight == least])

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[Endpoint]:
        ep = self.pick()
        ep.in_flight += 1
        try:
            yield ep
        finally:
            ep.in_flight -= 1

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
