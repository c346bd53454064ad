#!/usr/bin/env bash
# TorchRL peer for the speed comparison: its own venv, because torchrl 0.14 moves tensordict to 0.14.x.
# Idempotent: reuses benchmarks/.venv-torchrl and skips what is already installed at the pinned versions.
#   bash benchmarks/torchrl/install.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/../.venv-torchrl"
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
# torch first, pinned: 2.13.0 is the CPU wheel here (on a GPU machine install the CUDA build you want instead,
# then run this script: the pin below is then already satisfied or must be edited to match)
"$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
  || "${pip[@]}" torch==2.13.0
# torchrl with torch held at the installed version (pip must never swap torch for another build)
"${pip[@]}" "torchrl==0.14.1" numpy "gymnasium>=1.0" "torch==$("$venv/bin/python" -c 'import torch; print(torch.__version__)')"
"$venv/bin/python" - <<'EOF'
import numpy, tensordict, torch, torchrl
print(f"python {__import__('sys').version.split()[0]} | torch {torch.__version__} | torchrl {torchrl.__version__} | "
      f"tensordict {tensordict.__version__} | numpy {numpy.__version__}")
EOF
