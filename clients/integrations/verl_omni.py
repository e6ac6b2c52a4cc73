"""verl-omni: a drop-in for its UnifiedReward scorer (`compute_score_unified_reward`).

Point verl-omni's custom reward function at `unifiedreward.clients.integrations.verl_omni.compute_score`. It is called as
verl-omni calls its scorer:

    await compute_score(data_source, solution_image, ground_truth, extra_info,
                        reward_router_address="10.0.0.5:8000", model_name="CodeGoat24/UnifiedReward-2.0-qwen3vl-2b")

- the caption: `extra_info["prompt"]`, then `extra_info["raw_prompt"]` (a string or chat messages), then
  `ground_truth`, as verl-omni looks it up;
- the endpoint: `reward_router_address` (`host:port`, as verl passes it), else $UNIFIEDREWARD_BASE_URL;
  `model_name` is sent as the request's model (the server answers to the model path too);
- `solution_image`: a C x H x W tensor (uint8, or float in [0, 1]) scored with `image_gen.point_score_acs`
  (the alignment / coherence / style prompt verl-omni uses); a T x C x H x W video with the catalogue's
  video task (`video_gen.point_score_aps`, its frames evenly sampled to the task's frame layout) instead of
  verl-omni's frame-by-frame image prompt;
- returns {"score", "raw_score" (the mean axis score, 1 to 5), each axis, "response"}; `score` is verl-omni's
  own mapping (mean - 1) / 4.

A failed item raises its error (default, after the client's retries); on_error="nan" returns
{"score": nan, "error": ...} instead. Never verl-omni's 0.0. One pooled client per event loop.
"""
from __future__ import annotations

import math
from typing import Any

from unifiedreward.prompts import get_task

from .._constants import DEFAULT_MODEL
from ._common import (axis_scores, check_on_error, endpoints, failed_value, image_of, is_video, loop_client, text_of,
                      video_frames_of)

IMAGE_TASK = "image_gen.point_score_acs"
VIDEO_TASK = "video_gen.point_score_aps"


def caption_of(ground_truth: Any, extra_info: dict[str, Any] | None) -> str:
    """verl-omni's lookup: extra_info["prompt"], then extra_info["raw_prompt"], then ground_truth."""
    info = extra_info or {}
    for value in (info.get("prompt"), info.get("raw_prompt"), ground_truth):
        if value:
            return text_of(value, role="user") if not isinstance(value, str) else value
    raise ValueError("no caption: extra_info has neither 'prompt' nor 'raw_prompt', and ground_truth is empty")


async def compute_score(data_source: Any, solution_image: Any, ground_truth: Any, extra_info: dict | None = None,
                        reward_router_address: str | None = None, reward_model_tokenizer: Any = None,
                        model_name: str | None = None, *, base_url: str | None = None, image_task: str = IMAGE_TASK,
                        video_task: str = VIDEO_TASK, on_error: str = "raise", constraint: str = "auto",
                        **client_options: Any) -> dict[str, Any]:
    """One image (or video) scored against its caption; see the module docstring."""
    check_on_error(on_error, ("raise", "nan"))
    caption = caption_of(ground_truth, extra_info)
    video = is_video(solution_image)
    spec = get_task(video_task if video else image_task)
    media = video_frames_of(solution_image, spec.media.frames or 8) if video else image_of(solution_image)
    client = loop_client(endpoints(base_url, reward_router_address), model=model_name or DEFAULT_MODEL,
                         **client_options)
    result = await client.score(spec, [media], constraint=constraint, caption=caption)
    if not result.ok:
        failed_value(result, on_error, f"verl_omni {spec.name}")
        return {"score": math.nan, "error": result.error, "error_type": result.error_type, "response": result.text}
    scores = axis_scores(result)
    axes = [v for k, v in scores.items() if k != "final_score"]
    raw = scores["final_score"] if "final_score" in scores else sum(axes) / len(axes)
    return {"score": result.reward, "raw_score": raw, **scores, "response": result.text}
