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

Limits vLLM has flags for are read from vLLM's own parsed arguments (`app.state.args`), so each has one
source. Self-contained on purpose (standard library and Pillow, both in the official vLLM image): the
Kubernetes manifests mount this one file into that image (deploy/k8s).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import logging
import os
import secrets
import warnings
from dataclasses import dataclass
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


class Refused(Exception):
    """A request the guard refuses: HTTP status, OpenAI error type and a message naming the problem."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param

    @property
    def error_type(self) -> str:
        return {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
                413: "RequestTooLargeError"}.get(
            self.status, "BadRequestError")

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

    @classmethod
    def from_env(cls, args: Any = None) -> "Limits":
        media = getattr(args, "limit_mm_per_prompt", None) or {}
        domains = getattr(args, "allowed_media_domains", None) or []
        keys = list(getattr(args, "api_key", None) or []) or [os.environ.get("VLLM_API_KEY", "")]
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
        )

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        if not self.key_hashes:
            return True
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(token.encode("latin-1")).digest()
        return any(secrets.compare_digest(digest, known) for known in self.key_hashes)


def _item_limit(value: Any) -> int:
    """vLLM accepts `{"image": 16}` and `{"video": {"count": 2, ...}}` forms."""
    return int(value["count"]) if isinstance(value, dict) else int(value)


class RequestGuard:
    """Pure ASGI middleware (no body is buffered beyond the limit; streaming responses pass through)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self._limits: Limits | None = None

    def limits(self, scope: Scope) -> Limits:
        if self._limits is None:  # vLLM's arguments exist once the app is built: read them on first use
            app = scope.get("app")
            self._limits = Limits.from_env(getattr(getattr(app, "state", None), "args", None))
        return self._limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in CHECKED_METHODS:
            await self.app(scope, receive, send)
            return
        limits = self.limits(scope)
        headers = dict(scope.get("headers") or [])
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if not limits.authorized(headers):
            if path.startswith(AUTH_PREFIXES):
                await self.app(scope, receive, send)  # vLLM's own authentication answers 401
            else:
                await _respond(send, Refused(401, "a valid API key is required (Authorization: Bearer ...)"))
            return
        try:
            if path.rstrip("/") not in limits.post_paths:
                raise Refused(404, f"{scope.get('method')} {path} is not served by this endpoint (served: "
                                   f"{', '.join(sorted(limits.post_paths))})")
            body = await _read_body(receive, headers, limits.max_body_bytes)
            if len(body) > INLINE_CHECK_BYTES:  # parsing megabytes would stall every other request
                await asyncio.to_thread(check_request, body, headers, limits)
            else:
                check_request(body, headers, limits)
        except Refused as refused:
            log.info("refused %s %s with %d: %s", scope.get("method"), scope["path"], refused.status, refused)
            await _respond(send, refused)
            return
        await self.app(scope, _replay(body, receive), send)


async def _respond(send: Send, refused: Refused) -> None:
    body = refused.body()
    await send({"type": "http.response.start", "status": refused.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
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


def check_request(body: bytes, headers: dict[bytes, bytes], limits: Limits) -> None:
    """Raise Refused for the first problem in a request body; return when it may go to vLLM."""
    content_type = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
    if content_type not in (b"application/json", b""):
        return  # multipart uploads (audio transcription) are not this model's; vLLM answers them
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
