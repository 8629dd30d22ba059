#!/usr/bin/env bash
# A venv with LeRobot VERSION for writing the fixtures (make_fixtures.py), separate from the project's.
#   bash scripts/lerobot_fixtures/setup_venv.sh 0.4.4 /tmp/lr044   # v3.0 datasets
#   bash scripts/lerobot_fixtures/setup_venv.sh 0.3.2 /tmp/lr032   # v2.1 datasets
# LeRobot pins torch below the CPU torch 2.13.0 this machine has (a newer torch pulls GBs of CUDA),
# so LeRobot goes in with --no-deps and its other requirements from its own metadata, with torch
# held at 2.13.0; torchvision and torchcodec are left out (make_fixtures.py puts a shim on the path).
set -euo pipefail
VERSION=${1:?lerobot version}; VENV=${2:?venv dir}
PY=${PYTHON:-python3.11}
$PY -m venv "$VENV"
"$VENV/bin/pip" install -q "torch==2.13.0"
echo "torch==2.13.0" > "$VENV/constraints.txt"
"$VENV/bin/pip" install -q --no-deps "lerobot==$VERSION"
REQS=$("$VENV/bin/python" - <<'PY'
import importlib.metadata as md, re
out = []
for r in md.requires("lerobot") or []:
    if "extra ==" in r:
        continue
    name = re.split(r"[ <>=!~;\[]", r, maxsplit=1)[0].lower()
    if name in ("torch", "torchvision", "torchcodec", "rerun-sdk", "wandb", "pynput", "pyserial", "cmake", "diffusers"):
        continue
    out.append(r.split(";")[0].strip())
print("\n".join(out))
PY
)
echo "$REQS" | xargs -d '\n' "$VENV/bin/pip" install -q --constraint "$VENV/constraints.txt" pandas pyarrow
"$VENV/bin/python" -c "import sys; sys.path.insert(0, '$(cd "$(dirname "$0")" && pwd)/torchvision_shim'); import lerobot; print('lerobot', lerobot.__version__, 'in', '$VENV')"
