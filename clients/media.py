"""Media to OpenAI content URLs: encoded in memory, resized to the size the server would choose."""
from __future__ import annotations

import base64
import io
import math
import os
from pathlib import Path
from typing import Union

from PIL import Image, UnidentifiedImageError

from ._constants import DEFAULT_IMAGE_FORMAT, DEFAULT_JPEG_QUALITY, IMAGE_FACTOR, MAX_PIXELS, MIN_PIXELS
from .errors import BadInputError

try:  # numpy is a dependency, but keep the import cheap to fail
    import numpy as np
except ImportError:  # pragma: no cover
    np = None  # type: ignore[assignment]

ImageInput = Union[str, os.PathLike, bytes, Image.Image, "np.ndarray"]
MAX_ASPECT_RATIO = 200


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """The Qwen processors' sizing rule (as qwen_vl_utils.smart_resize, without importing torch):
    sides on a `factor` grid, area within [min_pixels, max_pixels], aspect ratio kept."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise BadInputError(f"aspect ratio {max(height, width) / min(height, width):.0f} exceeds {MAX_ASPECT_RATIO}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def load_image(item: ImageInput) -> Image.Image:
    """A PIL image from a path, bytes, a PIL image or an HWC uint8 array; BadInputError names the problem."""
    if isinstance(item, Image.Image):
        return item
    if np is not None and isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3, 4)):
            raise BadInputError(f"an image array must be HxW or HxWxC (C in 1, 3, 4) uint8, "
                                f"got shape {item.shape} dtype {item.dtype}")
        return Image.fromarray(item.squeeze(-1) if item.ndim == 3 and item.shape[2] == 1 else item)
    if isinstance(item, (bytes, bytearray)):
        source, what = io.BytesIO(item), f"{len(item)} bytes"
    elif isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise BadInputError(f"image file not found: {path}")
        source, what = path, str(path)
    else:
        raise BadInputError(f"unsupported image input of type {type(item).__name__}")
    try:
        image = Image.open(source)
        image.load()  # decode now: a truncated or corrupt file fails here, not on the server
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadInputError(f"cannot decode image ({what}): {exc}") from None
    return image


def is_url(item: object) -> bool:
    return isinstance(item, str) and item.startswith(("http://", "https://", "data:"))


def encode_image(item: ImageInput, *, image_format: str = DEFAULT_IMAGE_FORMAT,
                 quality: int = DEFAULT_JPEG_QUALITY, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> str:
    """A data URL for one image (URLs pass through), resized to the server's target size."""
    if is_url(item):
        return item  # type: ignore[return-value]
    image = load_image(item)
    if image.mode != "RGB":
        image = image.convert("RGB")
    height, width = smart_resize(image.height, image.width, IMAGE_FACTOR, min_pixels, max_pixels)
    if (width, height) != image.size:
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    fmt = image_format.upper()
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=quality)
    elif fmt == "PNG":
        image.save(buffer, format="PNG", compress_level=1)
    else:
        raise BadInputError(f"image_format must be JPEG or PNG, not {image_format!r}")
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
