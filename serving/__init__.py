"""The vLLM side: tuned defaults and profiles (data), the launcher, the shared profile's guard, the nginx front."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("unifiedreward-serve")  # the one version source: pyproject.toml, via the metadata
except PackageNotFoundError:  # run from a checkout that was never installed: say so rather than guess
    __version__ = "0+not-installed"
