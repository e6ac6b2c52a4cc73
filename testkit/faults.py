"""Fault injection for tests of the client against the real server, on loopback only.

`FaultProxy` sits between an HTTP/1.1 client (httpx, through the openai package) and a real HTTP server
(vLLM's OpenAI server under uvicorn) and breaks chosen connections in the ways a network and an overloaded
server do: a reset before any answer, a reset or a clean close in the middle of the body, an answer that
never comes, an answer that stops arriving part-way with the connection left open (a hung engine, a half-dead
proxy), a 503 with Retry-After. Every request gets a connection of its own (the proxy adds
`Connection: close` both ways), so a per-connection plan is a per-request plan and a test can say exactly
which attempt of the client fails and how.

`unreachable_listener` gives an address whose TCP connect never completes, for connect-timeout tests.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import select
import socket
import struct
import threading
from typing import Callable, Iterator, Sequence

FAULTS = ("reset_before", "reset_mid_stream", "stall", "503", "cut_short", "stall_mid_answer")
Plan = Callable[[int], str | None]

# After a partial body, wait this long before the fault so the client has read what was sent: the fault then
# lands mid-body every time instead of racing with the head.
_SETTLE_S = 0.05
_HEAD_LIMIT = 1 << 20
_HOP_BY_HOP = (b"connection", b"keep-alive", b"proxy-connection")


def every(n: int, kinds: Sequence[str], offset: int = 0) -> Plan:
    """A deterministic plan: connections offset, offset+n, offset+2n, ... are faulted, cycling through kinds."""
    if n < 1 or not kinds:
        raise ValueError("every() needs n >= 1 and at least one kind")
    unknown = set(kinds) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULTS}")

    def plan(number: int) -> str | None:
        k, r = divmod(number - offset, n)
        return kinds[k % len(kinds)] if number >= offset and r == 0 else None
    return plan


def _close_header(head: bytes) -> bytes:
    """The same head with its Connection-type headers replaced by `Connection: close`."""
    lines = head[:-4].split(b"\r\n")
    kept = [line for line in lines[1:] if line.split(b":", 1)[0].strip().lower() not in _HOP_BY_HOP]
    return b"\r\n".join([lines[0], *kept, b"Connection: close"]) + b"\r\n\r\n"


def _headers(head: bytes) -> dict[bytes, bytes]:
    """Header names (lower case) to values; the last one wins, which is enough for framing headers."""
    pairs = (line.split(b":", 1) for line in head[:-4].split(b"\r\n")[1:] if b":" in line)
    return {name.strip().lower(): value.strip() for name, value in pairs}


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A whole chunked body, raw (size lines, data, trailers), to forward unchanged."""
    raw = b""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        raw += size_line
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                raw += line
            return raw + line
        raw += await reader.readexactly(size + 2)


def _is_streamed(body: bytes) -> bool:
    try:
        return json.loads(body).get("stream") is True
    except (ValueError, AttributeError):
        return False


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0, so the peer gets an RST instead of a FIN."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """A loopback TCP proxy that faults the connections its plan names. Runs its own asyncio loop in a thread.

    `plan(n)` gets the number (0-based) of each connection whose request path is in `only_paths` (None: all
    paths) and returns a kind from FAULTS or None for a clean relay. Requests to other paths are relayed clean
    and take no number, so health checks do not shift the plan.

    `counts` has one entry per kind applied, "clean" for planned connections relayed untouched,
    "connections" for planned connections in all (= faults + clean), "streamed" and "streamed_faulted" for
    those planned by stream_plan, "passthrough" for requests outside
    only_paths and "upstream_error" for requests whose upstream connect failed (the client gets an RST).
    `log` has (number, kind or "clean", request line) per request; passthrough requests have number -1 and
    kind "passthrough". Both are written by the proxy's thread: read them after stop(), or between requests.

    `stream_plan`: when given, streamed requests (a JSON body with "stream": true) are numbered apart, from
    0, and planned by it instead, so that a test can fault streamed answers however few they are.

    `retry_after` is sent as an integer when whole (RFC 9110 delay-seconds), else as a decimal ("0.5"), which
    the openai package accepts too and keeps retry tests short. `stall_s`: how long a stalled connection stays
    open without an answer before the proxy closes it (None: until the client gives up). "stall_mid_answer"
    forwards the first `stall_after_bytes` bytes of the answer (its head included, as it leaves the proxy) and
    then nothing, the connection open (for `stall_s`, or until the client gives up); an answer shorter than that
    passes whole.
    """

    def __init__(self, upstream: str, plan: Plan, *, retry_after: float = 1.0, stall_s: float | None = None,
                 only_paths: tuple[str, ...] | None = ("/v1/chat/completions",), stream_plan: Plan | None = None,
                 stall_after_bytes: int = 300):
        host, _, port = upstream.removeprefix("http://").rstrip("/").rpartition(":")
        self.upstream = (host, int(port))
        self.plan = plan
        self.stream_plan = stream_plan
        self.retry_after = retry_after
        self.stall_s = stall_s
        self.stall_after_bytes = stall_after_bytes
        self.only_paths = only_paths
        self.counts: collections.Counter[str] = collections.Counter()
        self.log: list[tuple[int, str, str]] = []
        self.url = ""
        self._numbered = {"plain": 0, "stream": 0}
        self._tasks: set[asyncio.Task] = set()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._plan_errors: list[Exception] = []

    def v1(self) -> str:
        return self.url + "/v1"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), name="fault-proxy", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error
        return self

    def stop(self) -> None:
        """Close the listener and every open connection, wait for the thread; raise what the plan raised."""
        if self._thread is None:
            return
        assert self._loop is not None and self._stopping is not None
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join()
        self._thread = None
        if self._plan_errors:
            raise RuntimeError(f"the fault plan failed {len(self._plan_errors)} time(s)") from self._plan_errors[0]

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def retry_after_header(self) -> str:
        return str(int(self.retry_after)) if float(self.retry_after).is_integer() else str(self.retry_after)

    async def _serve(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            server = await asyncio.start_server(self._accept, "127.0.0.1", 0, limit=_HEAD_LIMIT)
            self.url = "http://127.0.0.1:%d" % server.sockets[0].getsockname()[1]
        except BaseException as exc:  # surfaced by start() in the caller's thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stopping.wait()
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # the client went away or sent something that is not HTTP/1.1: nothing to relay
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, target, _ = request_line.split(" ", 2)
        headers = _headers(head)
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            body = await _read_chunked(reader)
        else:
            body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
        line = f"{method} {target}"
        if self.only_paths is None or target.split("?", 1)[0] in self.only_paths:
            series = "stream" if self.stream_plan is not None and _is_streamed(body) else "plain"
            number = self._numbered[series]
            self._numbered[series] += 1
            try:
                kind = self._kind(number, self.stream_plan if series == "stream" else self.plan)
            except Exception as exc:  # raised again by stop(), in the test's thread; the client sees a close
                self._plan_errors.append(exc)
                return
            self.counts["connections"] += 1
            if series == "stream":
                self.counts["streamed"] += 1
                self.counts["streamed_faulted"] += kind != "clean"
        else:
            number, kind = -1, "passthrough"
        self.counts[kind] += 1
        self.log.append((number, kind, line))

        if kind == "reset_before":
            _reset(writer)
        elif kind == "stall":
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(reader.read(), self.stall_s)  # returns at the client's EOF
        elif kind == "503":
            await self._answer_503(writer)
        else:
            await self._forward(kind, _close_header(head) + body, reader, writer)

    @staticmethod
    def _kind(number: int, plan: Plan) -> str:
        kind = plan(number) or "clean"
        if kind not in FAULTS and kind != "clean":
            raise ValueError(f"plan({number}) returned {kind!r}; known kinds: {FAULTS}")
        return kind

    async def _answer_503(self, writer: asyncio.StreamWriter) -> None:
        body = b'{"error": {"message": "injected 503", "type": "ServiceUnavailable", "code": 503}}'
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (self.retry_after_header.encode(), len(body), body))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def _forward(self, kind: str, request: bytes, client_reader: asyncio.StreamReader,
                       client: asyncio.StreamWriter) -> None:
        try:
            up_reader, upstream = await asyncio.open_connection(*self.upstream, limit=_HEAD_LIMIT)
        except OSError:
            self.counts["upstream_error"] += 1
            _reset(client)
            return
        try:
            upstream.write(request)
            await upstream.drain()
            head = await up_reader.readuntil(b"\r\n\r\n")
            if kind == "stall_mid_answer":
                await self._stall_mid_answer(_close_header(head), up_reader, client_reader, client)
                return
            client.write(_close_header(head))
            if kind in ("clean", "passthrough"):
                await self._relay_until_either_closes(up_reader, client_reader, client)
                client.close()
                await client.wait_closed()
                return
            client.write(await self._part_of_body(head, up_reader))
            await client.drain()
            await asyncio.sleep(_SETTLE_S)
            if kind == "reset_mid_stream":
                _reset(client)
            else:  # cut_short
                client.close()
                await client.wait_closed()
        finally:
            upstream.transport.abort()

    async def _stall_mid_answer(self, head: bytes, up_reader: asyncio.StreamReader,
                                client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        """The first `stall_after_bytes` bytes of the answer, then silence with the connection open."""
        budget = self.stall_after_bytes
        data = head
        while True:
            client.write(data[:budget])
            await client.drain()
            budget -= len(data[:budget])
            if budget <= 0:
                break
            data = await up_reader.read(budget)
            if not data:  # the whole answer was shorter: it passed
                client.close()
                await client.wait_closed()
                return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(client_reader.read(), self.stall_s)  # returns at the client's EOF

    @staticmethod
    async def _relay_until_either_closes(up_reader: asyncio.StreamReader, client_reader: asyncio.StreamReader,
                                         client: asyncio.StreamWriter) -> None:
        """Copy the upstream's bytes to the client until the upstream closes or the client hangs up."""
        async def relay() -> None:
            while data := await up_reader.read(65536):
                client.write(data)
                await client.drain()

        tasks = {asyncio.ensure_future(relay()), asyncio.ensure_future(client_reader.read())}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    async def _part_of_body(head: bytes, up_reader: asyncio.StreamReader) -> bytes:
        """The start of the body: half of a sized body, else the first chunk (one SSE event from uvicorn)."""
        headers = _headers(head)
        if b"content-length" in headers:
            return await up_reader.readexactly(int(headers[b"content-length"]) // 2)
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            size_line = await up_reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            return size_line + await up_reader.readexactly(size + 2) if size else b""
        return await up_reader.read(65536)


@contextlib.contextmanager
def unreachable_listener() -> Iterator[str]:
    """A listening socket whose accept queue is full, so a client's connect() hangs until its own timeout.

    With listen(0), Linux holds one established connection in the accept queue (the queue is full when its
    length is greater than the backlog) and drops SYNs while it is full; nobody ever calls accept(). The
    helper fills the queue with its own non-blocking connects until one of them stays pending, which is the
    proof that SYNs are being dropped. Needs net.ipv4.tcp_abort_on_overflow = 0 (the default); with 1 the
    kernel may answer an overflow with an RST, a refusal instead of a timeout.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        for _ in range(8):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            fillers.append(filler)
            filler.setblocking(False)
            filler.connect_ex(address)
            if not select.select([], [filler], [], 0.05)[1]:
                break  # this connect is pending: the queue is full
        else:
            raise RuntimeError("could not fill the accept queue: connects to a listen(0) socket keep completing")
        yield "http://127.0.0.1:%d" % address[1]
    finally:
        for sock in fillers:
            sock.close()
        listener.close()
