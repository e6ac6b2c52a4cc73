"""RequestGuard: the input checks a shared endpoint needs and vLLM's server has no flag for.

vLLM loads it itself (`--middleware unifiedreward.serving.guard.RequestGuard`, set by the `shared` profile), so it runs
in the API server process before any vLLM handler parses a body, fetches a URL or decodes an image. It
refuses, with an OpenAI-shaped 4xx error naming the problem:
  - bodies above UNIFIEDREWARD_MAX_BODY_BYTES (413), read in bounded chunks, never buffered beyond the bound;
  - malformed JSON (400);
  - media URLs other than data: URLs, unless vLLM's --allowed-media-domains lists the host (vLLM alone
    fetches any http URL when the list is empty, and answers file:// with a 500);
  - more media items than vLLM's --limit-mm-per-prompt allows, counted before anything is decoded;
  - empty or corrupt base64, bytes that are no image, truncated PNG chunks, and images above
    UNIFIEDREWARD_MAX_IMAGE_PIXELS, all read from the image header (Pillow opens lazily: no pixel decoding);
  - max_tokens above UNIFIEDREWARD_MAX_TOKENS and n above UNIFIEDREWARD_MAX_N;
  - media `uuid`s that do not name their content: vLLM keys its caches by a part's uuid and trusts it, so a
    caller could attach the uuid of another caller's picture to its own and have that picture judged as its
    own. A uuid must be "sha256:" + the sha256 of the part's data URL (checked when the data is there), and a
    part without data may name only such a uuid (the client's media uuids: clients/_uuids.py).
Requests without the right API key pass through untouched: vLLM's own authentication answers them with a
401 before this guard spends anything on their body.

Tenants (UNIFIEDREWARD_TENANTS_FILE, a TOML file; `--tenants` on the launcher): one endpoint for many training
jobs. Each key names a tenant; the guard then does the authentication itself (vLLM is given no key), refuses an
unknown key (401), sets the request's vLLM `priority` from the tenant's class (interactive before bulk; a caller
cannot raise its own), holds each tenant to its share of `max_in_flight` (a request over it waits for a slot,
then gets 429 with Retry-After), has a bulk tenant's new requests wait while interactive ones are in flight on
any of the server's API servers (up to UNIFIEDREWARD_TENANT_YIELD_S), and counts per tenant on /metrics
(labelled by the tenant's name, never by its key).

Limits vLLM has flags for are read from vLLM's own parsed arguments (`app.state.args`), so each has one
source. Self-contained on purpose (standard library and Pillow, both in the official vLLM image): the
Kubernetes manifests mount this one file into that image (deploy/k8s).
"""
from __future__ import annotations

import asyncio
import atexit
import base64
import binascii
import collections
import hashlib
import io
import json
import logging
import math
import mmap
import os
import re
import secrets
import struct
import tempfile
import time
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator
from urllib.parse import urlsplit

# A child of vLLM's logger, so that refusals appear in the server's log with vLLM's format and level.
log = logging.getLogger("vllm.unifiedreward.guard")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Bodies up to this size are checked on the event loop (well under a millisecond); larger ones in a thread.
INLINE_CHECK_BYTES = 1 << 20
# Keys of a chat content part that carry media (with or without a "type", as vLLM's parser accepts them),
# and the modality of vLLM's --limit-mm-per-prompt each counts against.
# Media uuids: the sha256 of the part's data URL (clients/_uuids.py computes the same).
UUID_PREFIX = "sha256:"
UUID_HEX = 64
MEDIA_KEYS = {"image_url": "image", "input_image": "image", "image_pil": "image", "image_embeds": "image",
              "video_url": "video", "video_embeds": "video", "audio_url": "audio", "input_audio": "audio",
              "audio_embeds": "audio"}
# Requests whose body is read and checked.
CHECKED_METHODS = {"POST", "PUT", "PATCH"}
# The routes a reward client uses. vLLM also serves /v1/messages, /v1/responses, /invocations,
# /scale_elastic_ep ..., whose bodies carry media in other shapes (or change the server): closed here.
DEFAULT_POST_PATHS = "/v1/chat/completions,/v1/completions,/tokenize,/detokenize"
# vLLM's authentication guards only these path prefixes; the guard refuses unauthenticated bodies elsewhere.
AUTH_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")
# Tenants: a class is a vLLM priority (lower is scheduled earlier; --scheduling-policy priority), given to every
# request of the tenant's keys. Training steps wait on their rewards; dataset jobs only need throughput.
TENANT_CLASSES = {"interactive": 0, "bulk": 10}
TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
UNKNOWN_TENANT = "unknown"  # the label of refusals whose key names no tenant
TENANT_KEYS = {"key", "key_file", "class", "max_in_flight"}
# The routes whose requests carry vLLM's `priority` field.
PRIORITY_PATHS = {"/v1/chat/completions", "/v1/completions"}
# A request over its tenant's cap is held (not sent to the engine) until one of the tenant's requests ends, in
# arrival order, for at most UNIFIEDREWARD_TENANT_HOLD_S seconds (below the client's 30-s stall timeout); then it
# is refused with 429 and told to come back after RETRY_AFTER_S (the client honours Retry-After).
DEFAULT_TENANT_HOLD_S = 10.0
RETRY_AFTER_S = 1
# A bulk request admitted while interactive requests are in flight anywhere on the server waits at the guard
# until none is, for at most UNIFIEDREWARD_TENANT_YIELD_S seconds (0: never waits), then goes on (still behind
# them in vLLM's priority queue). Priority alone orders only the engine's waiting queue: a bulk request that
# reaches the engine while a trainer's requests are still in the API server (image processing, the chat
# template) is scheduled first, and a running request keeps its place in every step. The bound keeps a steady
# trickle of interactive requests from starving bulk jobs.
DEFAULT_TENANT_YIELD_S = 2.0
YIELD_POLL_S = 0.01


class _Slots:
    """A tenant's share of the engine in this process: `cap` requests at once, the rest held in arrival order."""

    def __init__(self, cap: int) -> None:
        self.cap, self.used = cap, 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def held(self) -> int:
        return sum(not w.done() for w in self.waiters)

    async def take(self, hold_s: float) -> bool:
        if not self.full:
            self.used += 1
            return True
        if hold_s <= 0:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, hold_s)  # give_back hands its slot over (`used` unchanged)
        except TimeoutError:
            return False
        except asyncio.CancelledError:  # the caller went away: a slot handed over in that instant goes on
            if waiter.done() and not waiter.cancelled():
                self.give_back()
            raise
        return True

    @property
    def full(self) -> bool:
        return self.used >= self.cap or self.held > 0

    def give_back(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():  # timed out or cancelled ones are done: skipped
                waiter.set_result(None)
                return
        self.used -= 1


class InteractiveSignal:
    """Interactive requests in flight on this server, for bulk requests to yield to. One API server: this
    process's count. Several (vLLM's --api-server-count, each its own process and event loop): each process
    publishes its own count in an 8-byte shared-memory file (one writer each) in a folder the server's API
    servers share, and a reader adds up the files of the live ones. The folder: `unifiedreward-guard` in
    vLLM's $PROMETHEUS_MULTIPROC_DIR, which vLLM makes for this server's API servers alone and removes when it
    stops (the API servers end without running exit handlers); else one in the temporary directory named after
    their parent process. A folder that cannot be used (not ours, not writable) leaves the count per process,
    and says so in the log."""

    RESCAN_S = 1.0

    def __init__(self, api_servers: int, folder: Path | None = None) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._mine: mmap.mmap | None = None
        self._others: dict[int, mmap.mmap] = {}
        self._scanned = -math.inf
        self.folder: Path | None = None
        if api_servers > 1:
            self._share(folder or shared_folder())

    def _share(self, folder: Path) -> None:
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            if folder.stat().st_uid != os.getuid() or folder.is_symlink():
                raise PermissionError(f"{folder} belongs to another user")
            mine = folder / str(os.getpid())
            fd = os.open(mine, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.ftruncate(fd, 8)
                self._mine = mmap.mmap(fd, 8)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("tenants: bulk requests yield to interactive ones of this API server only (cannot share "
                        "the count with the other API servers in %s: %s)", folder, exc)
            return
        self.folder = folder
        atexit.register(_unlink_quietly, mine, folder)

    def begin(self) -> None:
        self.count += 1
        self._idle.clear()
        self._publish()

    def end(self) -> None:
        self.count -= 1
        self._publish()
        if self.count == 0:
            self._idle.set()

    def _publish(self) -> None:
        if self._mine is not None:
            struct.pack_into("q", self._mine, 0, self.count)

    def anywhere(self) -> bool:
        """Whether an interactive request is in flight in this process or another API server of this server."""
        if self.count > 0:
            return True
        if self.folder is None:
            return False
        now = time.monotonic()
        if now - self._scanned > self.RESCAN_S:
            self._rescan()
            self._scanned = now
        return any(struct.unpack_from("q", m, 0)[0] > 0 for m in self._others.values())

    def _rescan(self) -> None:
        assert self.folder is not None
        alive: set[int] = set()
        for entry in os.scandir(self.folder):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            pid = int(entry.name)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:  # a process of an earlier server with the same parent id
                _unlink_quietly(Path(entry.path))
                continue
            except PermissionError:
                continue
            alive.add(pid)
            if pid not in self._others:
                try:
                    with open(entry.path, "rb") as handle:
                        self._others[pid] = mmap.mmap(handle.fileno(), 8, access=mmap.ACCESS_READ)
                except (OSError, ValueError):
                    alive.discard(pid)
        for pid in set(self._others) - alive:
            self._others.pop(pid).close()

    async def wait_idle(self, limit_s: float) -> float:
        """Wait until no interactive request is in flight anywhere, or `limit_s`; the seconds waited."""
        begun = time.monotonic()
        while self.anywhere():
            left = limit_s - (time.monotonic() - begun)
            if left <= 0:
                break
            if self.count > 0:  # this process's own: woken the moment they end
                try:
                    await asyncio.wait_for(self._idle.wait(), left)
                except TimeoutError:
                    break
            else:  # another process's: read again shortly
                await asyncio.sleep(min(YIELD_POLL_S, left))
        return time.monotonic() - begun


def shared_folder() -> Path:
    """Where the API servers of this server keep their interactive counts."""
    metrics = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if metrics:
        return Path(metrics) / "unifiedreward-guard"
    return Path(tempfile.gettempdir()) / f"unifiedreward-guard-{os.getppid()}"


def _unlink_quietly(path: Path, folder: Path | None = None) -> None:
    """Remove a count's file (and the folder, once the last API server has gone)."""
    try:
        path.unlink()
        if folder is not None:
            folder.rmdir()
    except OSError:
        pass


class TenantsError(ValueError):
    """A tenants file that cannot be used: the message names the file, the tenant and the problem (never a key)."""


@dataclass(frozen=True)
class Tenant:
    """One caller of a shared endpoint. `max_in_flight` is the whole server's; each API-server process holds
    its share (`per_process_cap`)."""

    name: str
    tenant_class: str
    max_in_flight: int
    key_hash: bytes = field(repr=False)

    @property
    def priority(self) -> int:
        return TENANT_CLASSES[self.tenant_class]

    def per_process_cap(self, api_servers: int) -> int:
        return max(1, math.ceil(self.max_in_flight / max(1, api_servers)))


def load_tenants(path: str | os.PathLike) -> tuple[Tenant, ...]:
    """Read and check a tenants file: `[tenants.NAME]` tables with `key` or `key_file` (relative to the file),
    `class` ("interactive" or "bulk") and `max_in_flight` (a whole number >= 1)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TenantsError(f"cannot read the tenants file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TenantsError(f"the tenants file {path} is not valid TOML: {exc}") from None
    tables = data.get("tenants")
    if not isinstance(tables, dict) or not tables:
        raise TenantsError(f"the tenants file {path} has no [tenants.NAME] tables")
    tenants, seen = [], {}
    for name, table in tables.items():
        where = f"{path}: [tenants.{name}]"
        if not TENANT_NAME.match(name) or name == UNKNOWN_TENANT:
            raise TenantsError(f"{where}: a tenant's name is 1-64 letters, digits, '_', '.' or '-' (not "
                               f"{UNKNOWN_TENANT!r}); it labels the tenant's figures on /metrics")
        if not isinstance(table, dict):
            raise TenantsError(f"{where} must be a table")
        extra = sorted(set(table) - TENANT_KEYS)
        if extra:
            raise TenantsError(f"{where}: unknown setting(s) {', '.join(extra)} (allowed: "
                               f"{', '.join(sorted(TENANT_KEYS))})")
        if ("key" in table) == ("key_file" in table):
            raise TenantsError(f"{where}: give exactly one of key or key_file")
        if "key_file" in table:
            key_path = (path.parent / str(table["key_file"])).resolve()
            try:
                key = key_path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise TenantsError(f"{where}: cannot read key_file {key_path}: {exc.strerror or exc}") from None
        else:
            key = table["key"].strip() if isinstance(table["key"], str) else ""
        if len(key) < 16:
            raise TenantsError(f"{where}: the key is empty or shorter than 16 characters")
        tenant_class = table.get("class")
        if tenant_class not in TENANT_CLASSES:
            raise TenantsError(f"{where}: class must be one of {', '.join(map(repr, TENANT_CLASSES))}, not "
                               f"{tenant_class!r}")
        cap = table.get("max_in_flight")
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise TenantsError(f"{where}: max_in_flight must be a whole number >= 1, not {cap!r}")
        digest = hashlib.sha256(key.encode()).digest()
        if digest in seen:
            raise TenantsError(f"{path}: tenants {seen[digest]!r} and {name!r} have the same key")
        seen[digest] = name
        tenants.append(Tenant(name, tenant_class, cap, digest))
    return tuple(tenants)


class Refused(Exception):
    """A request the guard refuses: HTTP status, OpenAI error type and a message naming the problem."""

    def __init__(self, status: int, message: str, param: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.retry_after = retry_after

    @property
    def error_type(self) -> str:
        return {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
                413: "RequestTooLargeError", 429: "RateLimitError"}.get(
            self.status, "BadRequestError")

    @property
    def reason(self) -> str:
        """The refusal's kind, as /metrics counts it."""
        return {401: "unknown_key", 404: "route_not_served", 413: "too_large", 429: "over_cap"}.get(
            self.status, "bad_input")

    def body(self) -> bytes:
        error = {"message": str(self), "type": self.error_type, "param": self.param, "code": self.status}
        return json.dumps({"error": error, "object": "error"}).encode()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


@dataclass(frozen=True)
class Limits:
    """What the guard enforces. Defaults apply when the variables are unset (the profile sets them all)."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_tokens: int = 1024
    max_n: int = 4
    post_paths: frozenset[str] = frozenset(DEFAULT_POST_PATHS.split(","))
    # From vLLM's arguments: items per modality, allowed fetch domains, API keys.
    media_limits: tuple[tuple[str, int], ...] = ()
    allowed_domains: frozenset[str] = frozenset()
    key_hashes: tuple[bytes, ...] = ()
    # With a tenants file: its tenants (the keys are theirs), and the API-server processes sharing each cap.
    tenants: tuple[Tenant, ...] = ()
    api_servers: int = 1
    tenant_hold_s: float = DEFAULT_TENANT_HOLD_S
    tenant_yield_s: float = DEFAULT_TENANT_YIELD_S

    @classmethod
    def from_env(cls, args: Any = None) -> "Limits":
        media = getattr(args, "limit_mm_per_prompt", None) or {}
        domains = getattr(args, "allowed_media_domains", None) or []
        keys = list(getattr(args, "api_key", None) or []) or [os.environ.get("VLLM_API_KEY", "")]
        tenants_file = os.environ.get("UNIFIEDREWARD_TENANTS_FILE", "").strip()
        tenants = load_tenants(tenants_file) if tenants_file else ()
        if tenants and any(keys):
            raise TenantsError("with a tenants file the tenants' keys are the only keys: give vLLM no --api-key "
                               "and no VLLM_API_KEY")
        return cls(
            max_body_bytes=_env_int("UNIFIEDREWARD_MAX_BODY_BYTES", cls.max_body_bytes),
            max_image_pixels=_env_int("UNIFIEDREWARD_MAX_IMAGE_PIXELS", cls.max_image_pixels),
            max_tokens=_env_int("UNIFIEDREWARD_MAX_TOKENS", cls.max_tokens),
            max_n=_env_int("UNIFIEDREWARD_MAX_N", cls.max_n),
            post_paths=frozenset(p.strip() for p in os.environ.get(
                "UNIFIEDREWARD_POST_PATHS", DEFAULT_POST_PATHS).split(",") if p.strip()),
            media_limits=tuple((k, _item_limit(v)) for k, v in dict(media).items()),
            allowed_domains=frozenset(d.lower() for d in domains),
            key_hashes=tuple(hashlib.sha256(k.encode()).digest() for k in keys if k),
            tenants=tenants,
            tenant_hold_s=float(os.environ.get("UNIFIEDREWARD_TENANT_HOLD_S", "").strip() or DEFAULT_TENANT_HOLD_S),
            tenant_yield_s=float(os.environ.get("UNIFIEDREWARD_TENANT_YIELD_S", "").strip() or DEFAULT_TENANT_YIELD_S),
            api_servers=max(1, int(getattr(args, "api_server_count", None) or 1)),
        )

    def tenant_for(self, headers: dict[bytes, bytes]) -> Tenant | None:
        """The tenant whose key the request carries, or None."""
        digest = _bearer_digest(headers)
        if digest is None:
            return None
        found = None
        for tenant in self.tenants:  # every key compared, in constant time each
            if secrets.compare_digest(digest, tenant.key_hash):
                found = tenant
        return found

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        if not self.key_hashes:
            return True
        digest = _bearer_digest(headers)
        return digest is not None and any(secrets.compare_digest(digest, known) for known in self.key_hashes)


def _bearer_digest(headers: dict[bytes, bytes]) -> bytes | None:
    """The sha256 of the request's `Authorization: Bearer` token (keys are compared as digests), or None."""
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return hashlib.sha256(token.encode("latin-1")).digest()


def _item_limit(value: Any) -> int:
    """vLLM accepts `{"image": 16}` and `{"video": {"count": 2, ...}}` forms."""
    return int(value["count"]) if isinstance(value, dict) else int(value)


class RequestGuard:
    """Pure ASGI middleware (no body is buffered beyond the limit; streaming responses pass through)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self._limits: Limits | None = None
        self.slots: dict[str, _Slots] = {}  # per tenant, in this process
        self.metrics: TenantMetrics | None = None
        self.interactive: InteractiveSignal | None = None  # made with the limits (it needs the API-server count)
        tenants_file = os.environ.get("UNIFIEDREWARD_TENANTS_FILE", "").strip()
        if tenants_file:  # every tenant on /metrics from the start, at zero (the file is checked again on first use)
            try:
                self.metrics = TenantMetrics.shared([t.name for t in load_tenants(tenants_file)])
            except TenantsError as exc:
                log.error("%s", exc)

    def limits(self, scope: Scope) -> Limits:
        if self._limits is None:  # vLLM's arguments exist once the app is built: read them on first use
            app = scope.get("app")
            self._limits = Limits.from_env(getattr(getattr(app, "state", None), "args", None))
            if self._limits.tenants:
                self.metrics = self.metrics or TenantMetrics.shared([t.name for t in self._limits.tenants])
                self.interactive = InteractiveSignal(self._limits.api_servers)
                log.info("tenants: %s", ", ".join(
                    f"{t.name} ({t.tenant_class}, priority {t.priority}, {t.per_process_cap(self._limits.api_servers)}"
                    f" in flight per API server of {self._limits.api_servers})" for t in self._limits.tenants))
        return self._limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self.limits(scope)
        if limits.tenants:
            await self._tenant_call(scope, receive, send, limits)
            return
        if scope.get("method") not in CHECKED_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if not limits.authorized(headers):
            if path.startswith(AUTH_PREFIXES):
                await self.app(scope, receive, send)  # vLLM's own authentication answers 401
            else:
                await _respond(send, Refused(401, "a valid API key is required (Authorization: Bearer ...)"))
            return
        try:
            body, _ = await _checked_body(scope, path, receive, headers, limits)
        except Refused as refused:
            log.info("refused %s %s with %d: %s", scope.get("method"), scope["path"], refused.status, refused)
            await _respond(send, refused)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _tenant_call(self, scope: Scope, receive: Receive, send: Send, limits: Limits) -> None:
        """The tenants' path: this guard authenticates (vLLM has no key), caps, sets the priority, counts."""
        headers = dict(scope.get("headers") or [])
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        method = scope.get("method")
        tenant = limits.tenant_for(headers)
        assert self.metrics is not None
        if tenant is None:
            if method in CHECKED_METHODS or path.startswith(AUTH_PREFIXES):
                refused = Refused(401, "a valid API key is required (Authorization: Bearer ...): this key names "
                                       "no tenant of this endpoint")
                self._refuse_log(UNKNOWN_TENANT, method, path, refused)
                await _respond(send, refused)
            else:  # /health, /metrics, /ping ...: what vLLM serves without a key
                await self.app(scope, receive, send)
            return
        if method not in CHECKED_METHODS:  # GET /v1/models and the like: authenticated, nothing to count
            await self.app(scope, receive, send)
            return
        name, cap = tenant.name, tenant.per_process_cap(limits.api_servers)
        slots = self.slots.setdefault(name, _Slots(cap))
        if slots.full:
            self.metrics.held.labels(name).inc()
            try:
                admitted = await slots.take(limits.tenant_hold_s)
            finally:
                self.metrics.held.labels(name).dec()
        else:
            admitted = await slots.take(0)
        if not admitted:
            refused = Refused(429, f"tenant {name!r} has {cap} requests in flight on this API server, its share of "
                                   f"max_in_flight={tenant.max_in_flight}, and this one waited "
                                   f"{limits.tenant_hold_s:g} s for a slot; retry after {RETRY_AFTER_S} s",
                              retry_after=RETRY_AFTER_S)
            self._refuse_log(name, method, path, refused)
            await _respond(send, refused)
            return
        started = time.perf_counter()
        answer = _AnswerReader(send)
        interactive, counted = tenant.tenant_class == "interactive", False
        assert self.interactive is not None
        try:
            if not interactive and limits.tenant_yield_s > 0 and self.interactive.anywhere():
                self.metrics.held.labels(name).inc()
                try:
                    waited = await self.interactive.wait_idle(limits.tenant_yield_s)
                finally:
                    self.metrics.held.labels(name).dec()
                self.metrics.yields.labels(name).inc()
                self.metrics.yield_seconds.labels(name).inc(waited)
            if interactive:
                self.interactive.begin()
            self.metrics.in_flight.labels(name).inc()
            counted = True
            try:
                body, request = await _checked_body(scope, path, receive, headers, limits)
            except Refused as refused:
                self._refuse_log(name, method, path, refused)
                await _respond(send, refused)
                return
            if request is not None and path.rstrip("/") in PRIORITY_PATHS:
                body = with_priority(body, request, tenant.priority)
                scope = {**scope, "headers": _with_length(scope.get("headers") or [], len(body))}
            self.metrics.requests.labels(name).inc()
            await self.app(scope, _replay(body, receive), answer.send)
        finally:
            slots.give_back()
            if counted:
                if interactive:
                    self.interactive.end()
                self.metrics.in_flight.labels(name).dec()
            if answer.status is not None:
                self.metrics.answered(name, answer.status, answer.usage(), time.perf_counter() - started)

    def _refuse_log(self, tenant: str, method: Any, path: str, refused: Refused) -> None:
        """A line per refusal (tenant, reason, the problem), never the request's contents or its key."""
        assert self.metrics is not None
        self.metrics.refusals.labels(tenant, refused.reason).inc()
        log.info("refused %s %s with %d for tenant %s (%s): %s", method, path, refused.status, tenant,
                 refused.reason, refused)


def with_priority(body: bytes, request: dict[str, Any], priority: int) -> bytes:
    """The body with vLLM's `priority` set to the tenant's: spliced in after the opening brace (no re-encoding
    of megabytes of base64), or, when the caller sent a priority of its own, the request re-encoded without it."""
    if "priority" in request or not request:
        return json.dumps({**request, "priority": priority}).encode()
    start = body.index(b"{") + 1
    return body[:start] + b'"priority":%d,' % priority + body[start:]


def _with_length(headers: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    return [*kept, (b"content-length", str(length).encode())]


class _AnswerReader:
    """Passes the answer on untouched and notes its status and its `usage` (the last one seen: a plain
    answer's body, or the final event of a stream that asked for include_usage)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status: int | None = None
        self._json = bytearray()
        self._streamed = False
        self._usage: dict[str, Any] | None = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            content_type = dict(message.get("headers") or []).get(b"content-type", b"")
            self._streamed = content_type.startswith(b"text/event-stream")
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            if self._streamed:
                if b'"usage"' in chunk:
                    self._scan_events(chunk)
            elif len(self._json) < 1 << 20:
                self._json += chunk
        await self._send(message)

    def _scan_events(self, chunk: bytes) -> None:
        for line in chunk.split(b"\n"):
            if line.startswith(b"data: {") and b'"usage"' in line:
                try:
                    usage = json.loads(line[6:]).get("usage")
                except (ValueError, AttributeError):
                    continue
                if isinstance(usage, dict):
                    self._usage = usage

    def usage(self) -> dict[str, Any]:
        if not self._streamed and self._json:
            try:
                usage = json.loads(self._json).get("usage")
                if isinstance(usage, dict):
                    self._usage = usage
            except (ValueError, AttributeError):
                pass
        return self._usage or {}


class TenantMetrics:
    """Per-tenant figures on vLLM's /metrics (prometheus_client, which vLLM serves; with several API-server
    processes vLLM's multiprocess registry sums each process's files). Labelled by tenant name, never by key."""

    _shared: "TenantMetrics | None" = None

    def __init__(self, names: list[str]) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter("unifiedreward_tenant_requests", "Requests a tenant sent to the engine",
                                ["tenant"])
        self.refusals = Counter("unifiedreward_tenant_refusals", "Requests the guard refused, by reason",
                                ["tenant", "reason"])
        self.answers = Counter("unifiedreward_tenant_answers", "Answers by HTTP status", ["tenant", "status"])
        self.in_flight = Gauge("unifiedreward_tenant_in_flight", "Requests of a tenant in flight", ["tenant"],
                               multiprocess_mode="livesum")
        self.held = Gauge("unifiedreward_tenant_held", "Requests of a tenant waiting at the guard (for a slot under "
                          "its cap, or a bulk one for interactive requests to finish)",
                          ["tenant"], multiprocess_mode="livesum")
        self.yields = Counter("unifiedreward_tenant_yields", "Requests of a bulk tenant that waited at the guard "
                              "for interactive requests to finish", ["tenant"])
        self.yield_seconds = Counter("unifiedreward_tenant_yield_seconds", "Seconds a bulk tenant's requests waited "
                                     "at the guard for interactive requests to finish", ["tenant"])
        self.prompt_tokens = Counter("unifiedreward_tenant_prompt_tokens", "Prompt tokens of a tenant's answers",
                                     ["tenant"])
        self.completion_tokens = Counter("unifiedreward_tenant_completion_tokens",
                                         "Completion tokens of a tenant's answers", ["tenant"])
        self.latency = Histogram("unifiedreward_tenant_request_duration_seconds",
                                 "Time from a tenant's request to the end of its answer", ["tenant"],
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        for name in names:  # every tenant shows, at zero, before its first request
            for metric in (self.requests, self.prompt_tokens, self.completion_tokens, self.latency, self.yields,
                           self.yield_seconds):
                metric.labels(name)
            self.in_flight.labels(name).set(0)
            self.held.labels(name).set(0)

    @classmethod
    def shared(cls, names: list[str]) -> "TenantMetrics":
        """One set per process (prometheus_client refuses a name twice in its registry)."""
        if cls._shared is None:
            cls._shared = cls(names)
        return cls._shared

    def answered(self, tenant: str, status: int, usage: dict[str, Any], seconds: float) -> None:
        self.answers.labels(tenant, str(status)).inc()
        self.latency.labels(tenant).observe(seconds)
        for key, counter in (("prompt_tokens", self.prompt_tokens), ("completion_tokens", self.completion_tokens)):
            value = usage.get(key)
            if isinstance(value, int) and value > 0:
                counter.labels(tenant).inc(value)


async def _checked_body(scope: Scope, path: str, receive: Receive, headers: dict[bytes, bytes],
                        limits: Limits) -> tuple[bytes, dict[str, Any] | None]:
    """The request's body and its parsed JSON, once every check passed; Refused for the first that does not."""
    if path.rstrip("/") not in limits.post_paths:
        raise Refused(404, f"{scope.get('method')} {path} is not served by this endpoint (served: "
                           f"{', '.join(sorted(limits.post_paths))})")
    body = await _read_body(receive, headers, limits.max_body_bytes)
    if len(body) > INLINE_CHECK_BYTES:  # parsing megabytes would stall every other request
        return body, await asyncio.to_thread(check_request, body, headers, limits)
    return body, check_request(body, headers, limits)


async def _respond(send: Send, refused: Refused) -> None:
    body = refused.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if refused.retry_after is not None:
        headers.append((b"retry-after", str(refused.retry_after).encode()))
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, headers: dict[bytes, bytes], max_bytes: int) -> bytes:
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise Refused(413, f"request body of {int(declared):,} bytes is above this server's limit of "
                           f"{max_bytes:,} bytes")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise Refused(413, f"request body is above this server's limit of {max_bytes:,} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive callable that hands the already-read body to vLLM, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def check_request(body: bytes, headers: dict[bytes, bytes], limits: Limits) -> dict[str, Any] | None:
    """Raise Refused for the first problem in a request body; return the parsed request when it may go to
    vLLM (None for a body that is not JSON, which vLLM answers itself)."""
    content_type = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
    if content_type not in (b"application/json", b""):
        return None  # multipart uploads (audio transcription) are not this model's; vLLM answers them
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused(400, f"malformed JSON in the request body: {exc}") from None
    if not isinstance(request, dict):
        raise Refused(400, "the request body must be a JSON object")
    _check_sampling(request, limits)
    counts: dict[str, int] = {}
    for where, kind, url, uuid in _media_items(request):
        counts[kind] = counts.get(kind, 0) + 1
        _check_count(kind, counts[kind], limits)
        _check_media_url(where, kind, url, limits)
        if uuid is not None:
            _check_uuid(where, url, uuid)
    return request


def _check_sampling(request: dict[str, Any], limits: Limits) -> None:
    for key in ("max_tokens", "max_completion_tokens"):
        value = request.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limits.max_tokens:
            raise Refused(400, f"{key}={value} is above this server's cap of {limits.max_tokens} output "
                               "tokens per request", key)
    n = request.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > limits.max_n:
        raise Refused(400, f"n={n} is above this server's cap of {limits.max_n} completions per request", "n")


def _media_items(request: dict[str, Any]) -> Iterator[tuple[str, str, Any, Any]]:
    """(where, modality, url or None, uuid or None) for every media content part of a chat request."""
    messages = request.get("messages")
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                continue
            for key in MEDIA_KEYS.keys() & part.keys():
                value = part[key]
                url = value.get("url") if isinstance(value, dict) else value
                yield f"messages[{i}].content[{j}].{key}", MEDIA_KEYS[key], url, part.get("uuid")


def media_uuid(url: str) -> str:
    """The uuid that names a data URL's content."""
    return UUID_PREFIX + hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()


def _check_uuid(where: str, url: Any, uuid: Any) -> None:
    """A uuid names its content: the sha256 of the data URL sent with it, or, without data, a uuid of that form
    (which only the content it hashes can have been cached under)."""
    digits = uuid[len(UUID_PREFIX):] if isinstance(uuid, str) and uuid.startswith(UUID_PREFIX) else ""
    if len(digits) != UUID_HEX or any(c not in "0123456789abcdef" for c in digits):
        raise Refused(400, f"{where}: a media uuid on this server is {UUID_PREFIX!r} + the sha256 (hex) of the "
                           f"part's data URL, not {str(uuid)[:80]!r}", where)
    if isinstance(url, str):
        if url[:5].lower() != "data:":
            raise Refused(400, f"{where}: a media uuid names inline data only, not a URL to fetch", where)
        if media_uuid(url) != uuid:
            raise Refused(400, f"{where}: the media uuid does not match its data (it must be {UUID_PREFIX!r} + "
                               f"the sha256 of the data URL)", where)


def _check_count(kind: str, count: int, limits: Limits) -> None:
    allowed = dict(limits.media_limits).get(kind)
    if allowed is not None and count > allowed:
        raise Refused(400, f"more than {allowed} {kind} item(s) in one request: this server accepts at most "
                           f"{allowed} (--limit-mm-per-prompt)")


def _check_media_url(where: str, kind: str, url: Any, limits: Limits) -> None:
    if not isinstance(url, str):
        return  # not a URL (embeddings, audio data): vLLM validates the shape
    if url[:5].lower() == "data:":
        _check_data_url(where, kind, url, limits)
        return
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        host = (parts.hostname or "").lower()
        if host and host in limits.allowed_domains:
            return
        allowed = ", ".join(sorted(limits.allowed_domains)) or "none"
        raise Refused(400, f"{where}: this server does not fetch media URLs from {host or 'that host'} "
                           f"(allowed domains: {allowed}); send the {kind} inline as a data: URL", where)
    raise Refused(400, f"{where}: {scheme or 'scheme-less'} URLs are refused: this server reads no local "
                       f"files; send the {kind} inline as a data: URL", where)


def _check_data_url(where: str, kind: str, url: str, limits: Limits) -> None:
    header, comma, payload = url.partition(",")
    if not comma:
        raise Refused(400, f"{where}: malformed data URL (no comma after the media type)", where)
    if not header.lower().endswith(";base64"):
        raise Refused(400, f"{where}: data URLs must be base64-encoded (data:<type>;base64,...)", where)
    if not payload.strip():
        raise Refused(400, f"{where}: empty {kind} data", where)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Refused(400, f"{where}: corrupt base64 in the {kind} data URL ({exc})", where) from None
    if not data:
        raise Refused(400, f"{where}: empty {kind} data", where)
    if kind == "image":
        check_image_header(where, data, limits.max_image_pixels)


def check_image_header(where: str, data: bytes, max_pixels: int) -> None:
    """Read the image's header (no pixel decoding): refuse non-images, truncated PNGs and pixel bombs."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise Refused(400, f"{where}: the image is a decompression bomb (far more pixels than this "
                               f"server's bound of {max_pixels:,})", where) from None
        except UnidentifiedImageError:
            raise Refused(400, f"{where}: the data is not an image in a known format "
                               f"({len(data):,} bytes)", where) from None
        except Exception as exc:  # noqa: BLE001 - any header parse failure means an unreadable image
            raise Refused(400, f"{where}: unreadable image header ({exc})", where) from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise Refused(400, f"{where}: image of {width}x{height} = {width * height:,} pixels is above this "
                               f"server's bound of {max_pixels:,} pixels; resize it before sending", where)
        if image.format == "PNG":
            _check_png_chunks(where, image)


def _check_png_chunks(where: str, image: Any) -> None:
    """PNG's chunk CRCs cover the whole file: verify() walks them without inflating any pixel data."""
    try:
        image.verify()
    except Exception as exc:  # noqa: BLE001 - Pillow raises SyntaxError, OSError or struct.error here
        raise Refused(400, f"{where}: truncated or corrupt PNG ({exc or type(exc).__name__})", where) from None
