"""The errors of the prompt layer: all are ValueErrors, so callers may catch broadly or precisely."""
from __future__ import annotations


class PromptsError(ValueError):
    """Base class of every error raised by `unifiedreward.prompts`."""


class UnknownTaskError(PromptsError):
    """A task name that is not in the registry."""


class FieldError(PromptsError):
    """Missing, unexpected or non-string template fields."""


class MediaError(PromptsError):
    """Media that do not fit the task's layout (wrong count, wrong kind)."""


class VerdictError(PromptsError):
    """The model's text does not hold a valid verdict; the message says why. Never replaced by a default."""
