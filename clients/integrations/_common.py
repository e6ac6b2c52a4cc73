"""What the adapters share: a framework's tensors and arrays as images the client encodes, prompts and
completions as text, the endpoint, one pooled client per process or event loop, and the on_error rule."""
from __future__ import annotations

import asyncio
import atexit
import logging
import math
import os
import threading
import weakref
from typing import Any, Literal, Sequence

import numpy as np

from .._async import AsyncRewardClient
from .._constants import DEFAULT_BASE_URL
from .._types import Result
from ..client import RewardClient
from ..errors import BadInputError

log = logging.getLogger("unifiedreward.clients.integrations")
BASE_URL_ENV = "UNIFIEDREWARD_BASE_URL"
OnError = Literal["raise", "nan", "none"]
ON_ERROR = ("raise", "nan", "none")


# -- endpoints and clients ---------------------------------------------------------------------------

def endpoints(base_url: str | Sequence[str] | None = None, router_address: str | None = None) -> list[str]:
    """The base URLs: given, else verl's `host:port` router address, else $UNIFIEDREWARD_BASE_URL (several
    separated by commas), else the local default."""
    if base_url:
        return [base_url] if isinstance(base_url, str) else list(base_url)
    if router_address:
        address = router_address if "://" in router_address else f"http://{router_address}"
        return [address.rstrip("/") + ("" if address.rstrip("/").endswith("/v1") else "/v1")]
    return [u.strip() for u in os.environ.get(BASE_URL_ENV, DEFAULT_BASE_URL).split(",") if u.strip()]


def _key(urls: Sequence[str], options: dict[str, Any]) -> tuple:
    return tuple(urls), tuple(sorted(options.items()))


_shared: dict[tuple, RewardClient] = {}
_shared_lock = threading.Lock()


def shared_client(urls: Sequence[str], **options: Any) -> RewardClient:
    """One RewardClient per process and configuration: thread-safe (its own event loop), one connection
    pool for every call of a trainer's reward function, closed at exit."""
    key = _key(urls, options)
    with _shared_lock:
        client = _shared.get(key)
        if client is None:
            client = _shared[key] = RewardClient(list(urls), **options)
    return client


@atexit.register
def _close_shared() -> None:
    with _shared_lock:
        for client in _shared.values():
            client.close()
        _shared.clear()


_per_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, AsyncRewardClient]]" = \
    weakref.WeakKeyDictionary()


def loop_client(urls: Sequence[str], **options: Any) -> AsyncRewardClient:
    """One AsyncRewardClient per running event loop and configuration (a client's connections belong to
    the loop that opened them): verl's reward loop and TRL's daemon loop each keep theirs for the run. A
    loop that ends through `asyncio.run` (a trainer that runs one per step) closes its clients first."""
    loop = asyncio.get_running_loop()
    clients = _per_loop.setdefault(loop, {})
    key = _key(urls, options)
    if key not in clients:
        client = clients[key] = AsyncRewardClient(list(urls), **options)
        # An async generator suspended in its try: the loop's shutdown (asyncio.run's shutdown_asyncgens)
        # closes it, and its finally closes the client. Held by the client, so it lives as long as the client.
        client._closed_with_loop = _closed_at_shutdown(loop, key, client)  # type: ignore[attr-defined]
        asyncio.ensure_future(client._closed_with_loop.__anext__())  # type: ignore[attr-defined]
    return clients[key]


async def _closed_at_shutdown(loop: asyncio.AbstractEventLoop, key: tuple, client: AsyncRewardClient):
    try:
        yield
    finally:
        await client.aclose()
        clients = _per_loop.get(loop, {})
        if clients.get(key) is client:  # the generator refers to the loop: drop the entry, or it lives on
            del clients[key]
        if not clients:
            _per_loop.pop(loop, None)


# -- failures ----------------------------------------------------------------------------------------

def check_on_error(on_error: str, allowed: Sequence[str] = ON_ERROR) -> None:
    if on_error not in allowed:
        raise ValueError(f"on_error must be one of {tuple(allowed)}, not {on_error!r}")


def failed_value(result: Result, on_error: str, where: str) -> float | None:
    """The value a failed item gets: its error raised ("raise"), or NaN / None with the failure logged.
    Never a number that could pass for a reward."""
    if on_error == "raise":
        result.raise_for_error()
    log.warning("%s: item %r failed (%s: %s); its reward is %s", where, result.id, result.error_type, result.error,
                "NaN" if on_error == "nan" else "None")
    return math.nan if on_error == "nan" else None


def axis_scores(result: Result) -> dict[str, float]:
    """A successful item's scores by axis (alignment, coherence, ...), and its final score where it has one."""
    verdict = result.verdict
    out = {axis: float(value) for axis, value in (getattr(verdict, "scores", None) or {}).items()
           if not isinstance(value, list)}
    if getattr(verdict, "final_score", None) is not None:
        out["final_score"] = float(verdict.final_score)
    return out


# -- tensors, arrays and images ------------------------------------------------------------------------

def _is_torch(value: Any) -> bool:
    return type(value).__module__.split(".", 1)[0] == "torch"


def _array(value: Any) -> np.ndarray:
    """A numpy array of a tensor (any device, bf16 included) or an array-like; torch is never imported here."""
    if _is_torch(value):
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _hwc_uint8(array: np.ndarray, channels_first: bool, what: str) -> np.ndarray:
    if array.ndim == 2:
        array = array[None] if channels_first else array[..., None]
    if array.ndim != 3:
        raise BadInputError(f"{what}: an image must have 2 or 3 dimensions, got shape {array.shape}")
    if channels_first:
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] not in (1, 3, 4):
        layout = "C x H x W" if channels_first else "H x W x C"
        raise BadInputError(f"{what}: expected {layout} with 1, 3 or 4 channels, got shape {array.shape}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise BadInputError(f"{what}: images must be uint8 or float in [0, 1], got {array.dtype}")
        if not np.isfinite(array).all():
            raise BadInputError(f"{what}: the image holds NaN or infinite values")
        array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if array.shape[-1] == 1:
        array = array[..., 0]
    return np.ascontiguousarray(array)


def _channels_first(value: Any, array: np.ndarray) -> bool:
    """torch tensors are channel-first whatever their dtype; numpy floats too (N x C x H x W in [0, 1], as
    diffusion pipelines hand them over); numpy uint8 is channel-last (H x W x C, as PIL gives it)."""
    return _is_torch(value) or array.dtype != np.uint8


def image_of(value: Any, what: str = "image") -> Any:
    """One image as the client takes it: PIL images, paths, bytes and URLs pass; a C x H x W tensor
    (uint8, or float in [0, 1]) or an array becomes an H x W x C uint8 array."""
    if isinstance(value, (str, bytes, os.PathLike)) or type(value).__module__.startswith("PIL."):
        return value
    array = _array(value)
    return _hwc_uint8(array, _channels_first(value, array), what)


def images_of(batch: Any) -> list[Any]:
    """A batch of images: N x C x H x W float tensors or arrays in [0, 1], N x C x H x W uint8 tensors,
    N x H x W x C uint8 arrays, or a list of single images (PIL, paths, tensors, arrays)."""
    if isinstance(batch, (list, tuple)):
        return [image_of(x, f"image {i}") for i, x in enumerate(batch)]
    array = _array(batch)
    if array.ndim != 4:
        raise BadInputError(f"a batch of images must have 4 dimensions (N x C x H x W or N x H x W x C), "
                            f"got shape {array.shape}")
    channels_first = _channels_first(batch, array)
    return [_hwc_uint8(a, channels_first, f"image {i}") for i, a in enumerate(array)]


def video_frames_of(video: Any, count: int) -> list[np.ndarray]:
    """`count` evenly spaced frames of a T x C x H x W tensor (uint8, or float in [0, 1]) or a T x H x W x C
    uint8 array, first to last: the catalogue's frame layout for video tasks."""
    array = _array(video)
    if array.ndim != 4 or array.shape[0] < 1:
        raise BadInputError(f"a video must be T x C x H x W (or T x H x W x C), got shape {array.shape}")
    total = array.shape[0]
    picks = [round(i * (total - 1) / (count - 1)) for i in range(count)] if count > 1 else [total // 2]
    channels_first = _channels_first(video, array)
    return [_hwc_uint8(array[i], channels_first, f"video frame {i}") for i in picks]


def is_video(value: Any) -> bool:
    """A T x C x H x W (or T x H x W x C) tensor or array, as opposed to one C x H x W image."""
    if isinstance(value, (str, bytes, os.PathLike, list, tuple)) or type(value).__module__.startswith("PIL."):
        return False
    return getattr(value, "ndim", None) == 4


# -- prompts and completions as text -----------------------------------------------------------------------

def text_of(message: Any, role: str | None = None) -> str:
    """The text of a prompt or completion: a string as it is; a conversation (a list of {"role", "content"})
    its last message of `role` (any role if None), with the text parts of a multimodal content joined."""
    if isinstance(message, str):
        return message
    if isinstance(message, dict):
        message = [message]
    if not isinstance(message, (list, tuple)) or not message:
        raise BadInputError(f"expected a string or a list of chat messages, got {type(message).__name__}")
    turns = [m for m in message if isinstance(m, dict) and (role is None or m.get("role") == role)]
    if not turns:
        raise BadInputError(f"no {role or 'chat'} message in {message!r:.200}")
    content = turns[-1].get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")
    raise BadInputError(f"a chat message without text content: {turns[-1]!r:.200}")
