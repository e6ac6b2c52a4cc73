"""Each framework's example file runs against the live server (UNIFIEDREWARD_BASE_URL points it there)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.mark.parametrize("name, expect", [
    ("flow_grpo_reward.py", "batch 7: scores"),
    ("verl_omni_reward.py", "video {'score'"),
    ("trl_grpo.py", "step 2: reward mean"),
    ("pref_grpo_groups.py", "win rates: ["),
])
def test_example_runs(live_server, name, expect, tmp_path):
    env = {**os.environ, "UNIFIEDREWARD_BASE_URL": live_server.base_url}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=600,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expect in proc.stdout, proc.stdout[-2000:]
    assert "nan" not in proc.stdout  # no item failed (a failed item would print as nan, never as a number)
