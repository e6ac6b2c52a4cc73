"""A thin client for UnifiedReward served by vLLM: builds the authors' prompts with media, sends them
through the `openai` package with bounded concurrency across one or more endpoints, and returns typed
verdicts and rewards. `AsyncRewardClient` is the core; `RewardClient` its synchronous twin."""
from ._version import __version__
from ._async import AsyncRewardClient
from ._constants import MAX_PIXELS, MIN_PIXELS
from ._requests import EncodeOptions, build_request, encode_media
from ._types import Completion, Item, Result
from .client import RewardClient
from .errors import (AuthenticationError, BadInputError, DeadlineExceededError, InputRejectedError, RequestFailedError,
                     RewardError, SoftScoreUnavailableError, UnparseableVerdictError)
from .groups import GroupResult
from .media import encode_image, smart_resize, video_frames

__all__ = [
    "__version__", "RewardClient", "AsyncRewardClient", "Item", "Result", "GroupResult", "Completion",
    "build_request", "encode_media", "EncodeOptions", "MIN_PIXELS", "MAX_PIXELS",
    "RewardError", "BadInputError", "RequestFailedError", "AuthenticationError",
    "InputRejectedError", "DeadlineExceededError", "UnparseableVerdictError", "SoftScoreUnavailableError",
    "encode_image", "smart_resize", "video_frames",
]
