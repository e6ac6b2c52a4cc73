"""The vLLM side: tuned defaults and profiles (data), the launcher, the shared profile's guard, the nginx front."""
from unifiedreward import __version__  # the one version source: pyproject.toml, via the metadata

__all__ = ["__version__"]
