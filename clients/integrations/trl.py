"""TRL: a reward function for `GRPOTrainer(reward_funcs=[...])`, training a VLM with UnifiedReward as judge.

    from unifiedreward.clients.integrations.trl import reward_func
    judge = reward_func("http://reward:8000/v1", task="image_und.point_score")
    trainer = GRPOTrainer(model=..., reward_funcs=[judge], train_dataset=dataset, args=config)

TRL calls it (an `async def`: TRL awaits it on its own event loop, concurrently with other async reward
functions) with `prompts`, `completions` and every dataset column. For each completion the server judges
the policy's answer: question = the prompt's user text, response = the completion's text (plain strings or
conversational messages), image = the dataset column `image_key` ("image" / "images"; a list: its first).
Image-generation tasks (`caption` field) take the prompt text as the caption instead.

A failed item is None, TRL's "no reward here" (on_error="none", the default): TRL leaves it out of the
reward sum and warns when every reward function returned None for a row. The failures are logged and
counted in TRL's metrics (`unifiedreward/failed`). on_error="raise" stops the training step instead.
With a text-only policy, give the images another column name than "image"/"images" (those switch TRL to
multimodal training) and pass it as image_key.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Sequence

from unifiedreward.prompts import get_task

from .._types import Item, Result
from ..errors import BadInputError
from ._common import check_on_error, endpoints, failed_value, image_of, loop_client, text_of

RewardFunc = Callable[..., Awaitable[list[float | None]]]


def reward_func(base_url: str | Sequence[str] | None = None, *, task: str = "image_und.point_score",
                image_key: str = "image", on_error: str = "none", constraint: str = "auto", logprobs: bool = False,
                concurrency: int = 64, **client_options: Any) -> RewardFunc:
    """An async TRL reward function judging each completion with `task`; see the module docstring."""
    check_on_error(on_error, ("none", "raise"))
    spec = get_task(task)
    if spec.media.kind != "image" or spec.media.count != 1:
        raise ValueError(f"{task}: the TRL reward judges one image per row: use an image task with one image")
    if not {"question", "response"} <= set(spec.fields) and "caption" not in spec.fields:
        raise ValueError(f"{task}: needs question and response fields (a completion to judge) or a caption")
    urls = endpoints(base_url)

    def fields_of(prompt: Any, completion: Any) -> dict[str, str]:
        if "caption" in spec.fields:
            return {"caption": text_of(prompt, role="user")}
        return {"question": text_of(prompt, role="user"), "response": text_of(completion, role="assistant")}

    async def unifiedreward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        images = columns.get(image_key)
        if images is None and image_key == "image":
            images = columns.get("images")
        if images is None:
            raise BadInputError(f"no {image_key!r} column in the batch (columns: {sorted(columns)}): "
                                f"pass image_key= the column holding the images")
        items: list[Item | Result] = []
        for i, (prompt, completion, image) in enumerate(zip(prompts, completions, images, strict=True)):
            if isinstance(image, (list, tuple)):
                image = image[0] if image else None
            try:
                if image is None:
                    raise BadInputError(f"row {i} has no image in column {image_key!r}")
                items.append(Item(spec, [image_of(image)], fields_of(prompt, completion), id=i))
            except BadInputError as exc:  # this row's failure alone
                items.append(Result.failure(exc, task=spec.name, id=i))
        client = loop_client(urls, **client_options)
        results = await client.score_batch(items, concurrency=concurrency, constraint=constraint, logprobs=logprobs)
        rewards = [r.reward if r.ok else failed_value(r, on_error, f"trl {unifiedreward.__name__}") for r in results]
        log_metric = columns.get("log_metric")
        if callable(log_metric):
            log_metric("unifiedreward/failed", float(sum(not r.ok for r in results)))
        return rewards

    unifiedreward.__name__ = f"unifiedreward_{task.replace('.', '_')}"
    unifiedreward.__qualname__ = unifiedreward.__name__
    return unifiedreward
