"""The client's errors: catch `RewardError` for all of them, without knowing openai or httpx internals.

    RewardError
    ├── BadInputError           the item cannot be sent (unknown task, fields, unreadable media, count)
    ├── RequestFailedError      the server was unreachable or answered an error, after retries
    │   ├── AuthenticationError     401/403: no or a wrong API key (the `shared` profile requires one)
    │   ├── InputRejectedError      another 4xx: the server refused this item's request (message says why)
    │   └── DeadlineExceededError   the batch's overall deadline passed first
    └── UnparseableVerdictError the server answered, but the text holds no valid verdict (also a VerdictError)
"""
from __future__ import annotations

from prompts import VerdictError


class RewardError(Exception):
    """Base class of every error raised by `clients`."""


class BadInputError(RewardError, ValueError):
    """The item cannot be sent: unknown task, wrong fields, unreadable or wrong number of media."""


class RequestFailedError(RewardError):
    """The server could not be reached or answered with an error (after retries)."""

    def __init__(self, message: str, status_code: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status_code = status_code
        self.retryable = retryable
        self.attempts = 0  # requests made, set by the client


class AuthenticationError(RequestFailedError):
    """The server wants an API key (401) or refuses this one (403): pass api_key= or $UNIFIEDREWARD_API_KEY."""


class InputRejectedError(RequestFailedError):
    """The server refused the request as bad input (400, 404, 413, 422): the message names the problem."""


class DeadlineExceededError(RequestFailedError):
    """The overall deadline of a batch passed before this item was scored."""


class UnparseableVerdictError(RewardError, VerdictError):
    """The server answered, but its text holds no valid verdict. `text` is the raw answer."""

    def __init__(self, message: str, text: str):
        super().__init__(message)
        self.text = text
        self.completion = None  # the server's full answer (usage, latency, endpoint), set by the client
