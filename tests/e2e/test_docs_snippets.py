"""Every Python and shell snippet of README.md and docs/ runs against the live tiny server, so the docs
cannot drift from the code.

Sybil reads each page: ```python blocks (and `<!-- invisible-code-block: python -->` set-up) run in one
namespace per page, in order; ```bash blocks run in bash -e. `localhost:8000` / `127.0.0.1:8000` in a block
becomes the live server's address; the working directory is a sandbox with the files the pages name
(a.jpg ... d.jpg, image.png, clip_a.mp4, clip_b.mp4, items.jsonl). A block that cannot run here (a GPU
server, an install, kubectl) is marked `<!-- skip: next -->` on the page itself, where a reader sees it.
tests/unit/test_docs.py checks that no other fence language hides a runnable snippet."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser, SkipParser

from testkit.media import synthetic_image

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ADDRESS = re.compile(r"(?:localhost|127\.0\.0\.1):8000")
SANDBOX_ITEMS = [
    {"id": "p1", "task": "image_gen.pair_rank", "images": ["a.jpg", "b.jpg"], "caption": "a red cat on a mat"},
    {"id": "p2", "task": "image_gen.pair_rank", "images": ["c.jpg", "d.jpg"], "caption": "a blue boat"},
    {"id": "s1", "task": "image_gen.point_score_acs", "images": ["image.png"], "caption": "a red cat on a mat"},
    {"id": "s2", "task": "image_gen.point_score_acs", "images": ["a.jpg"], "caption": "a red cat on a mat"},
]


def write_clip(path: Path, seed: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 320, 256, "yuv420p"
        for i in range(16):
            frame = np.full((256, 320, 3), 40 * seed % 255, np.uint8)
            frame[:, (i * 18) % 300:(i * 18) % 300 + 20] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def sandbox_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("docs-sandbox")
    for seed, name in enumerate(("a.jpg", "b.jpg", "c.jpg", "d.jpg")):
        synthetic_image(seed, 512).save(folder / name, quality=90)
    synthetic_image(7, 512).save(folder / "image.png")
    write_clip(folder / "clip_a.mp4", 1)
    write_clip(folder / "clip_b.mp4", 2)
    (folder / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in SANDBOX_ITEMS))
    return folder


@pytest.fixture
def sandbox(sandbox_files, tmp_path) -> Path:
    """A fresh copy per page: one page's outputs never meet another's."""
    folder = tmp_path / "sandbox"
    shutil.copytree(sandbox_files, folder)
    return folder


class Runner:
    """The evaluators: the page's block, pointed at the live server, run in the sandbox."""

    def __init__(self, address: str, sandbox: Path) -> None:
        self.address, self.sandbox = address, sandbox
        self.ran: list[str] = []

    def python(self, example) -> None:
        code = ADDRESS.sub(self.address, example.parsed)
        self.ran.append(f"python:{example.line}")
        # Line numbers in a traceback are the page's.
        exec(compile("\n" * (example.line - 1) + code, example.path, "exec"), example.namespace)

    def bash(self, example) -> None:
        code = ADDRESS.sub(self.address, example.parsed)
        self.ran.append(f"bash:{example.line}")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=self.sandbox, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (f"{example.path}:{example.line}: exit {done.returncode}\n"
                                      f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")


# Pages about the keyed, guarded endpoint run against the `shared` profile's server, the key in the environment.
SHARED_PAGES = [p for p in PAGES if p.name == "shared-endpoint.md"]
OPEN_PAGES = [p for p in PAGES if p not in SHARED_PAGES]


@pytest.mark.parametrize("page", OPEN_PAGES, ids=[str(p.relative_to(ROOT)) for p in OPEN_PAGES])
def test_the_pages_snippets_run_against_the_live_server(live_server, sandbox, page, monkeypatch):
    run_page(page, live_server, sandbox, monkeypatch)


@pytest.mark.parametrize("page", SHARED_PAGES, ids=[str(p.relative_to(ROOT)) for p in SHARED_PAGES])
def test_the_shared_endpoint_pages_snippets_run_against_the_shared_server(shared_server, api_key, sandbox, page,
                                                                          monkeypatch):
    monkeypatch.setenv("UNIFIEDREWARD_API_KEY", api_key)
    run_page(page, shared_server, sandbox, monkeypatch)


def run_page(page: Path, server, sandbox: Path, monkeypatch) -> None:
    runner = Runner(f"{server.host}:{server.port}", sandbox)
    reader = Sybil(parsers=[CodeBlockParser("python", runner.python), CodeBlockParser("bash", runner.bash),
                            SkipParser()], path=str(ROOT))
    monkeypatch.chdir(sandbox)
    document = reader.parse(page)
    for example in document:
        example.evaluate()
    blocks = len(re.findall(r"^```(?:python|bash)\s*$", page.read_text(encoding="utf-8"), re.M))
    skipped = len(re.findall(r"^<!-- skip: next -->\s*$", page.read_text(encoding="utf-8"), re.M))
    assert len(runner.ran) >= blocks - skipped, (runner.ran, blocks, skipped)  # nothing silently passed over
