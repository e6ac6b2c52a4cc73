"""The UnifiedReward task catalogue: templates as data, a registry, and one parser per output format.

Prompt texts are the authors' own (CodeGoat24/UnifiedReward, MIT); see prompts/tasks/NOTICE.
"""
from .errors import FieldError, MediaError, PromptsError, UnknownTaskError, VerdictError
from .registry import TASKS, MediaLayout, Task, get_task
from .verdicts import FinalScoreVerdict, PairScoreVerdict, RankVerdict, ScoreVerdict, Verdict

__all__ = [
    "TASKS", "Task", "MediaLayout", "get_task",
    "Verdict", "RankVerdict", "PairScoreVerdict", "ScoreVerdict", "FinalScoreVerdict",
    "PromptsError", "UnknownTaskError", "FieldError", "MediaError", "VerdictError",
]
