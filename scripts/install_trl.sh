#!/usr/bin/env bash
# Build the peer venv that benchmarks/dpo_vs_trl.py runs TRL in. TRL is no dependency of the
# package: it lives in its own venv so it can never change what the package's venv resolves.
#   $1: the venv directory (default .venv-trl)
#   $2: the torch spec (default torch==2.13.0)
#   $3: the package's venv (default .venv): its transformers and peft versions are pinned here too,
#       so both sides of the benchmark run the same model code.
# torch goes in FIRST and pinned (scripts/install_torch.sh): otherwise TRL's requirements would let
# pip resolve torch on its own and pull a multi-GB CUDA build onto a CPU machine.
set -euo pipefail
venv="${1:-.venv-trl}"
spec="${2:-torch==2.13.0}"
ours="${3:-.venv}"
python="${PYTHON:-python3}"

pins=()
for pkg in transformers peft; do
  version=$("$ours/bin/python" -c "import importlib.metadata as m; print(m.version('$pkg'))" 2>/dev/null || true)
  pins+=("$pkg${version:+==$version}")
done

test -x "$venv/bin/python" || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
bash "$(dirname "$0")/install_torch.sh" "$venv/bin/pip" "$spec"
# The torch spec again, so resolving TRL's requirements cannot move it.
"$venv/bin/pip" install --quiet "$spec" "trl==1.16.*" "${pins[@]}" datasets
"$venv/bin/python" -c "import torch, trl, peft, transformers, datasets; print('TRL venv:', '$venv', 'torch', torch.__version__, 'trl', trl.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
