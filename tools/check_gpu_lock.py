"""Check that every pin of requirements/gpu.lock has a wheel for the platform the lock is made for, on the registry.

    python -m tools.check_gpu_lock [--lock requirements/gpu.lock] [--json]

The GPU lock is resolved, never installed, here (no GPU). `uv pip compile` accepts a source distribution where
no wheel fits, so a pin can resolve and still need a compiler on the GPU machine, or not build at all. This asks
pip itself, with this machine's pip configuration off (it points torch at a local +cpu wheel and at local
mirrors), to find a wheel for every pin as `make setup` installs them (--no-deps, one line each):

    pip install --dry-run --no-deps --only-binary=:all: --ignore-installed --target <tmp> --python-version 3.11
        --implementation cp --abi cp311 --abi abi3 --abi none --platform manylinux_<glibc..2_5>_x86_64 ... -r <pins>

with the manylinux tags from the glibc the lock header names (`--python-platform x86_64-manylinux_2_31`) down
to the oldest (pip does not widen a --platform by itself). pip stops at the first pin it cannot place: that pin
is set aside and pip is asked again, so one run lists every missing wheel. pip downloads what it finds (no
metadata-only index here): a few GB through a temporary folder, about a minute. Exit status 1 when a pin has no
wheel.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

LOCK = Path(__file__).resolve().parents[1] / "requirements" / "gpu.lock"
PYTHON_VERSION, ABI = "3.11", "cp311"
PLATFORM_LINE = re.compile(r"--python-platform\s+x86_64-manylinux_(\d+)_(\d+)")
MISSING = re.compile(r"No matching distribution found for ([A-Za-z0-9_.\-]+)==([^\s;]+)")
# This machine's pip settings: a find-links folder with a +cpu torch, local mirrors, constraints.
PIP_SETTINGS = ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_CONSTRAINT", "PIP_NO_INDEX")


def pins(lock: Path) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in lock.read_text().splitlines()
            if "==" in line.split("#", 1)[0]]


def glibc_floor(lock: Path) -> tuple[int, int]:
    """The manylinux glibc the lock was resolved for, from its header."""
    found = PLATFORM_LINE.search(lock.read_text())
    if not found:
        raise SystemExit(f"check_gpu_lock: no '--python-platform x86_64-manylinux_X_Y' line in {lock}'s header")
    return int(found.group(1)), int(found.group(2))


def platform_tags(major: int, minor: int) -> list[str]:
    """Every manylinux tag a glibc major.minor machine takes, newest first, with the legacy aliases."""
    tags = [f"manylinux_{major}_{m}_x86_64" for m in range(minor, 4, -1)]
    return tags + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def pip_command(requirements: Path, target: Path, tags: Sequence[str]) -> list[str]:
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-cache-dir",
               "--only-binary=:all:", "--ignore-installed", "--disable-pip-version-check", "--target", str(target),
               "--python-version", PYTHON_VERSION, "--implementation", "cp",
               "--abi", ABI, "--abi", "abi3", "--abi", "none", "-r", str(requirements)]
    for tag in tags:
        command += ["--platform", tag]
    return command


def check(lock: Path = LOCK) -> dict:
    """{"platform", "pins", "missing": [pin ...], "pip_runs"}: the pins pip finds no wheel for."""
    major, minor = glibc_floor(lock)
    tags = platform_tags(major, minor)
    todo, missing, runs = pins(lock), [], 0
    env = {k: v for k, v in os.environ.items() if k not in PIP_SETTINGS}
    env["PIP_CONFIG_FILE"] = os.devnull
    with tempfile.TemporaryDirectory(prefix="check-gpu-lock-") as folder:
        requirements = Path(folder) / "pins.txt"
        while todo:
            requirements.write_text("\n".join(todo) + "\n")
            runs += 1
            done = subprocess.run(pip_command(requirements, Path(folder) / "target", tags), env=env,
                                  capture_output=True, text=True)
            if done.returncode == 0:
                break
            found = MISSING.search(done.stdout + done.stderr)
            if not found:
                raise SystemExit(f"check_gpu_lock: pip failed without naming a pin:\n{(done.stdout + done.stderr)[-3000:]}")
            name, version = found.group(1), found.group(2)
            pin = next((p for p in todo if re.fullmatch(rf"{re.escape(name)}\s*==\s*{re.escape(version)}", p, re.I)
                        or p.lower().replace("_", "-") == f"{name}=={version}".lower().replace("_", "-")), None)
            if pin is None:
                raise SystemExit(f"check_gpu_lock: pip named {name}=={version}, which is not a line of {lock}")
            missing.append(pin)
            todo.remove(pin)
    return {"lock": str(lock), "platform": f"manylinux_{major}_{minor}_x86_64 (and older tags), CPython "
            f"{PYTHON_VERSION}", "pins": len(pins(lock)), "missing": missing, "pip_runs": runs}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.check_gpu_lock", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=LOCK)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = check(args.lock)
    if args.json:
        print(json.dumps(result, indent=2))
    elif result["missing"]:
        print(f"{len(result['missing'])} of {result['pins']} pins have no wheel for {result['platform']}: "
              f"{', '.join(result['missing'])}")
    else:
        print(f"all {result['pins']} pins of {result['lock']} have a wheel for {result['platform']}")
    return 1 if result["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
