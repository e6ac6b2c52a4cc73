"""The reward endpoint the examples use: $UNIFIEDREWARD_BASE_URL when set (a real server), else the tiny
random-weight checkpoint served for the example's run (its verdicts are well-formed, not meaningful)."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python examples/X.py


@contextlib.contextmanager
def reward_endpoint() -> Iterator[str]:
    if os.environ.get("UNIFIEDREWARD_BASE_URL"):
        yield os.environ["UNIFIEDREWARD_BASE_URL"].split(",")[0]
        return
    from unifiedreward.serving.process import ServerProcess

    cache = Path(os.environ.get("UNIFIEDREWARD_CACHE", ".cache"))
    print("starting the tiny server (about a minute; set UNIFIEDREWARD_BASE_URL to use a real one)...", flush=True)
    with ServerProcess(["--model", "tiny"], log_path=cache / "example-server.log") as server:
        yield server.base_url
