"""The client's errors: catch `RewardError` for all of them, without knowing openai or httpx internals."""
from __future__ import annotations

from prompts import VerdictError


class RewardError(Exception):
    """Base class of every error raised by `clients`."""


class BadInputError(RewardError, ValueError):
    """The item cannot be sent: unknown task, wrong fields, unreadable or wrong number of media."""


class RequestFailedError(RewardError):
    """The server could not be reached or answered with an error (after retries)."""

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class UnparseableVerdictError(RewardError, VerdictError):
    """The server answered, but its text holds no valid verdict. `text` is the raw answer."""

    def __init__(self, message: str, text: str):
        super().__init__(message)
        self.text = text
