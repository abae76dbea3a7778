#!/usr/bin/env bash
# The GPU throughput table in one command (from the repository root):
#
#     bash benchmarks/gpu_table.sh [extra throughput.py arguments]
#
# Installs the wheels of a `.whl` folder (packages the machine lacks) when there is one, prints the GPU and
# library versions, runs `benchmarks/throughput.py --device cuda` and `benchmarks/train_step.py --device cuda`
# (step times and one profiled step, under a minute) with their logs in "$OUT" when OUT is set, and copies
# the result tables there.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
nvidia-smi || true
df -h /dev/shm || true
python3 - <<'PY'
import importlib.metadata as md, os, torch
for name in ("numpy", "pandas", "xarray", "scipy", "lightning", "timm", "spatialdata", "anndata", "zarr", "dask"):
    try:
        print(name, md.version(name), end="; ")
    except md.PackageNotFoundError:
        print(name, "MISSING", end="; ")
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "cores", os.cpu_count())
PY
mkdir -p "${OUT:-/tmp/gpu_table}"
log="${OUT:-/tmp/gpu_table}/throughput_cuda.log"
PYTHONUNBUFFERED=1 python3 benchmarks/throughput.py --device cuda "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
PYTHONUNBUFFERED=1 python3 benchmarks/train_step.py --device cuda 2>&1 | tee "${OUT:-/tmp/gpu_table}/train_step_cuda.log"
rc=$(( rc || PIPESTATUS[0] ))
if [ -n "${OUT:-}" ]; then
    cp benchmarks/results/throughput_cuda*.md benchmarks/results/train_step_cuda.md "$OUT"/ 2>/dev/null || true
fi
exit "$rc"
