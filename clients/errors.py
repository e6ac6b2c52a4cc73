"""The client's errors: catch `RewardError` for all of them, without knowing openai or httpx internals.

    RewardError
    ├── BadInputError              the item cannot be sent (unknown task, fields, unreadable media, count)
    ├── RequestFailedError         the server was unreachable or answered an error, after retries
    │   ├── AuthenticationError        401/403: no or a wrong API key (the `shared` profile requires one)
    │   ├── InputRejectedError         another 4xx: the server refused this item's request (message says why)
    │   └── DeadlineExceededError      the batch's overall deadline passed first
    ├── UnparseableVerdictError    the server answered, but the text holds no valid verdict (also a VerdictError)
    └── SoftScoreUnavailableError  logprobs="require", and the answer's logprobs gave no soft score

Errors raised after the server answered carry that answer (`completion`: text, usage, latency, endpoint),
so that a failed item still shows what the model said.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from unifiedreward.prompts import VerdictError

if TYPE_CHECKING:
    from ._types import Completion


class RewardError(Exception):
    """Base class of every error raised by `unifiedreward.clients`."""

    def __init__(self, message: str, *, completion: "Completion | None" = None) -> None:
        super().__init__(message)
        self.completion = completion  # the server's answer, when there was one


class BadInputError(RewardError, ValueError):
    """The item cannot be sent: unknown task, wrong fields, unreadable or wrong number of media."""


class RequestFailedError(RewardError):
    """The server could not be reached or answered with an error (after retries).

    `retryable`: another attempt may succeed (transport failures, 408/409/429, 5xx, errors inside a stream).
    `endpoint_down`: the failure says the endpoint itself is unwell; it is skipped for a cool-down.
    `retry_after`: seconds the server asked to wait (Retry-After), if it did.
    `attempts` and `backoff_s`: requests made and seconds waited between them, when the client gave up;
    `endpoints`: the base URLs tried, in order (the last one answered or failed last)."""

    def __init__(self, message: str, status_code: int | None = None, retryable: bool = False, *,
                 endpoint_down: bool = False, retry_after: float | None = None, attempts: int = 0,
                 backoff_s: float = 0.0, endpoints: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retryable = retryable
        self.endpoint_down = endpoint_down
        self.retry_after = retry_after
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.endpoints = tuple(endpoints)

    def after(self, attempts: int, backoff_s: float, endpoints: tuple[str, ...] = ()) -> "RequestFailedError":
        """This failure as the request's last: the same kind, with the attempts made, the backoff waited and the
        endpoints tried named in the message."""
        tried = list(dict.fromkeys(endpoints))
        where = f" at {', '.join(tried)}" if tried else ""
        message = (f"{self}{where} (after {attempts} attempts, {backoff_s:.1f} s of backoff)" if self.retryable
                   else f"{self}{where}")
        return type(self)(message, self.status_code, self.retryable, endpoint_down=self.endpoint_down,
                          retry_after=self.retry_after, attempts=attempts, backoff_s=backoff_s, endpoints=endpoints)


class AuthenticationError(RequestFailedError):
    """The server wants an API key (401) or refuses this one (403): pass api_key= or $UNIFIEDREWARD_API_KEY."""


class InputRejectedError(RequestFailedError):
    """The server refused the request as bad input (400, 404, 413, 422): the message names the problem."""


class DeadlineExceededError(RequestFailedError):
    """The overall deadline of a batch passed before this item was scored."""


class UnparseableVerdictError(RewardError, VerdictError):
    """The server answered, but its text holds no valid verdict. `text` is the raw answer."""

    def __init__(self, message: str, text: str, *, completion: "Completion | None" = None) -> None:
        super().__init__(message, completion=completion)
        self.text = text


class SoftScoreUnavailableError(RewardError):
    """logprobs="require": the verdict parsed, but no soft score could be read from its logprobs (the tokens
    did not line up with the text, or the score token's alternatives were missing). The hard verdict is in
    `verdict`; it is not used as the reward because the caller asked for probabilities only."""

    def __init__(self, message: str, verdict: object, *, completion: "Completion | None" = None) -> None:
        super().__init__(message, completion=completion)
        self.verdict = verdict
