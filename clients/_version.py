"""The one version source is pyproject.toml's `version`, read once by the `unifiedreward` package."""
from unifiedreward import DISTRIBUTION, __version__

__all__ = ["DISTRIBUTION", "__version__"]
