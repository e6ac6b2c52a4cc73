"""Client-side media encoding: in memory, resized exactly as the server would, bad input named."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from unifiedreward.clients import BadInputError, encode_image, smart_resize


@pytest.mark.parametrize("h, w", [(512, 512), (1024, 1024), (768, 1360), (100, 3000), (33, 47), (4000, 3000),
                                  (256, 256), (300, 200), (1080, 1920), (21, 4096)])
def test_smart_resize_agrees_with_qwen_vl_utils(h, w):
    from qwen_vl_utils.vision_process import smart_resize as reference  # imports torch: full env only

    for lo, hi in [(65536, 262144), (1024, 16777216), (3136, 1003520)]:
        assert smart_resize(h, w, 32, lo, hi) == reference(h, w, 32, lo, hi)


def test_server_side_resize_of_a_client_resized_image_is_the_identity():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as server

    for h, w in [(1024, 1024), (768, 1360), (4000, 3000), (300, 200)]:
        h2, w2 = smart_resize(h, w)
        assert server(h2, w2, factor=32, min_pixels=65536, max_pixels=262144) == (h2, w2)


def decode(url: str) -> Image.Image:
    header, data = url.split(",", 1)
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_encode_resizes_to_the_pixel_budget():
    url = encode_image(Image.new("RGB", (1024, 1024), "red"))
    assert url.startswith("data:image/jpeg;base64,")
    assert decode(url).size == (512, 512)


def test_encode_png_and_numpy_and_bytes(tmp_path):
    array = np.zeros((300, 400, 3), np.uint8)
    png = encode_image(array, image_format="png")
    assert png.startswith("data:image/png;base64,")
    assert decode(png).size[0] % 32 == 0
    path = tmp_path / "x.png"
    Image.new("RGBA", (64, 64)).save(path)
    assert decode(encode_image(path)).mode == "RGB"
    assert decode(encode_image(path.read_bytes())).size == decode(encode_image(str(path))).size


def test_urls_pass_through():
    assert encode_image("https://example.com/a.png") == "https://example.com/a.png"


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        encode_image(tmp_path / "missing.png")
    with pytest.raises(BadInputError, match="cannot decode"):
        encode_image(b"not an image at all")
    good = io.BytesIO()
    Image.effect_noise((256, 256), 50).convert("RGB").save(good, "PNG")
    with pytest.raises(BadInputError, match="cannot decode"):
        encode_image(good.getvalue()[: len(good.getvalue()) // 2])  # truncated PNG
    with pytest.raises(BadInputError, match="uint8"):
        encode_image(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(BadInputError, match="JPEG or PNG"):
        encode_image(Image.new("RGB", (64, 64)), image_format="gif")
    with pytest.raises(BadInputError, match="aspect ratio"):
        encode_image(Image.new("RGB", (5000, 10)))
