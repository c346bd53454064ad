#!/usr/bin/env bash
# PufferLib peer for the speed comparison: PuffeRL (PyPI `pufferlib-core`, what `mettagrid[train]` pulls) with the
# real MettaGrid, in its own venv. Idempotent: reuses benchmarks/.venv-puffer.
#   bash benchmarks/pufferlib/install.sh
# Fixes it needs here (benchmarks/pufferlib/README.md says why):
#   1. pufferlib-core 3.0.23 pins torch==2.9.0: installed with --no-deps, its own dependencies listed below.
#   2. its prebuilt extension (_C) links CUDA and does not load on a CPU machine, and training then raises: the
#      wheel ships the C++ source of its advantage op, built here as a CPU extension against the local torch.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/../.venv-puffer"
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
py="$venv/bin/python"
pip=("$py" -m pip install --disable-pip-version-check -q)
# torch first, pinned: 2.13.0 is the CPU wheel here (on a GPU machine install the CUDA build you want first)
"$py" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null || "${pip[@]}" torch==2.13.0
torch_pin="torch==$("$py" -W ignore -c 'import torch; print(torch.__version__)' 2>/dev/null)"
# mettagrid for the env; tensordict because the repo's envs/ and policies/ (the task and the Fast layers) import it
"${pip[@]}" "mettagrid==0.26.22" "tensordict>=0.10,<0.16" "$torch_pin"
# fix 1: no deps from the wheel's metadata; these are what its trainer imports (pyro for its sweep module)
# (pip then reports the unmet torch==2.9.0 and nvidia-ml-py: expected, both are deliberately left out)
"${pip[@]}" --no-deps "pufferlib-core==3.0.23" "pyro-ppl==1.9.1"
"${pip[@]}" psutil rich rich-argparse setuptools opt-einsum pyro-api tqdm ninja "$torch_pin"
# fix 2: the advantage op as a CPU extension, unless the installed one already has it
"$py" - <<'PYEOF'
import os, shutil, sys, tempfile
import torch
import pufferlib
pkg = os.path.dirname(pufferlib.__file__)
try:
    from pufferlib import _C  # noqa: F401
    if torch._C._dispatch_has_kernel_for_dispatch_key("pufferlib::compute_puff_advantage", "CPU"):
        sys.exit(0)
except (ImportError, OSError):
    pass
from torch.utils.cpp_extension import load
print("building pufferlib's advantage op for the CPU (about a minute)", flush=True)
build = tempfile.mkdtemp()
load("_C", [os.path.join(pkg, "extensions", "pufferlib.cpp")], build_directory=build, is_python_module=False,
     extra_cflags=["-O3"], verbose=False)
target = [f for f in os.listdir(pkg) if f.startswith("_C") and f.endswith(".so")]
target = os.path.join(pkg, target[0] if target else "_C" + __import__("sysconfig").get_config_var("EXT_SUFFIX"))
shutil.copy(os.path.join(build, "_C.so"), target)
shutil.rmtree(build)
PYEOF
"$py" - <<'EOF'
import mettagrid, numpy, torch, pufferlib
from pufferlib import pufferl
assert torch._C._dispatch_has_kernel_for_dispatch_key("pufferlib::compute_puff_advantage", "CPU")
print(f"python {__import__('sys').version.split()[0]} | torch {torch.__version__} | pufferlib-core "
      f"{__import__('importlib.metadata').metadata.version('pufferlib-core')} | mettagrid "
      f"{__import__('importlib.metadata').metadata.version('mettagrid')} | numpy {numpy.__version__}")
EOF
