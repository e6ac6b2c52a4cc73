"""The one version source is pyproject.toml's `version`, read from the installed distribution's metadata."""
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "unifiedreward-serve"

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # run from a checkout that was never installed: say so rather than guess
    __version__ = "0+not-installed"
