"""The docs: README short, the site built strictly, and no snippet hidden from the snippet runner
(tests/e2e/test_docs_snippets.py runs the ```python and ```bash blocks; any other language is shown, not run)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"python", "bash"}
SHOWN = {"text", "toml", "yaml", "json", "jsonl", "nginx", "jinja", "csv", "ini", "diff"}


def fences(text: str) -> list[str]:
    """The language of every opening fence (``` lines alternate open, close)."""
    marks = re.findall(r"^(?:\s*)```(.*)$", text, re.M)
    return [m.strip() for m in marks[::2]]


def test_readme_is_at_most_200_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, len(lines)


def test_every_code_block_is_run_or_plainly_shown():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        languages = fences(text)
        assert set(languages) <= RUN | SHOWN, (page.name, sorted(set(languages) - RUN - SHOWN))
        assert text.count("```") % 2 == 0, page.name


def test_the_site_builds_strictly(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    done = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("RewardClient", "AsyncRewardClient", "score_batch", "rank_group", "get_task", "win_rate_rewards"):
        assert name in api, name  # the reference really came from the docstrings
    built = {p.relative_to(tmp_path / "site").parts[0] for p in (tmp_path / "site").rglob("index.html")}
    for page in PAGES[1:]:
        assert page.stem == "index" or page.stem in built, page.name
