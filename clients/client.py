"""The synchronous reward client on the `openai` package."""
from __future__ import annotations

import time
from typing import Any, Sequence

import openai

from prompts import Task

from ._constants import (DEFAULT_API_KEY, DEFAULT_BASE_URL, DEFAULT_IMAGE_FORMAT, DEFAULT_JPEG_QUALITY,
                         DEFAULT_MAX_RETRIES, DEFAULT_MODEL, DEFAULT_TIMEOUT_S, MAX_PIXELS, MIN_PIXELS)
from ._core import EncodeOptions, Result, build_request, encode_media, resolve_task, to_result, translate_openai_error


class RewardClient:
    """Score items with UnifiedReward served by vLLM.

    >>> client = RewardClient("http://127.0.0.1:8000/v1")
    >>> client.score("image_gen.pair_rank", [img1, img2], caption="a red cat").verdict.reward
    """

    def __init__(self, base_url: str = DEFAULT_BASE_URL, *, api_key: str = DEFAULT_API_KEY,
                 model: str = DEFAULT_MODEL, timeout: float = DEFAULT_TIMEOUT_S,
                 max_retries: int = DEFAULT_MAX_RETRIES, image_format: str = DEFAULT_IMAGE_FORMAT,
                 jpeg_quality: int = DEFAULT_JPEG_QUALITY, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> None:
        self.model = model
        self.encode_options = EncodeOptions(image_format, jpeg_quality, min_pixels, max_pixels)
        self._openai = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)

    def score(self, task: str | Task, media: Sequence[Any], *, constraint: str = "auto", logprobs: bool = False,
              max_tokens: int | None = None, **fields: str) -> Result:
        """Score one item. Raises BadInputError, RequestFailedError or UnparseableVerdictError.

        media: images (paths, bytes, PIL images, HWC uint8 arrays or URLs); for video tasks, per video a URL
        or a list of frames. constraint: "auto", "verdict" or "none" (see build_request). logprobs: soft
        scores (p_first, expected_score) that then drive the reward."""
        spec = resolve_task(task)
        urls = encode_media(spec, media, self.encode_options)
        request = build_request(spec, urls, fields, model=self.model, constraint=constraint,
                                logprobs=logprobs, max_tokens=max_tokens)
        started = time.perf_counter()
        try:
            completion = self._openai.chat.completions.create(**request)
        except openai.OpenAIError as exc:
            raise translate_openai_error(exc) from exc
        return to_result(spec, completion, started)

    def close(self) -> None:
        self._openai.close()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
