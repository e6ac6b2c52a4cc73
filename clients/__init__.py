"""A thin client for UnifiedReward served by vLLM: builds the authors' prompts with media, sends them
through the `openai` package, and returns typed verdicts and rewards."""
from ._core import Result
from .client import RewardClient
from .errors import BadInputError, RequestFailedError, RewardError, UnparseableVerdictError
from .media import encode_image, smart_resize

__all__ = [
    "RewardClient", "Result",
    "RewardError", "BadInputError", "RequestFailedError", "UnparseableVerdictError",
    "encode_image", "smart_resize",
]
