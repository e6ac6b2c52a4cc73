"""UnifiedReward-2.0-qwen3vl-2b, served by vLLM and called from trainers: one import namespace.

    unifiedreward.clients   the client (RewardClient, AsyncRewardClient), the CLI, the trainers' drop-ins
    unifiedreward.prompts   the authors' task catalogue: templates as data, a registry, one parser per format
    unifiedreward.serving   the vLLM side: tuned defaults and profiles, the launcher, the guard, the nginx front

The repository keeps these as its top-level folders clients/, prompts/ and serving/ (pyproject.toml's
package-dir maps them here). Importing this package imports none of them.
"""
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "unifiedreward-serve"

try:
    __version__ = version(DISTRIBUTION)  # the one version source: pyproject.toml, via the installed metadata
except PackageNotFoundError:  # run from a checkout that was never installed: say so rather than guess
    __version__ = "0+not-installed"

__all__ = ["__version__"]
