#!/bin/bash
# Build .devcarry/ (git-excluded) for a run of the benchmark on a lent GPU machine (see README.md here).
# The device has torch, timm, lightning, scikit-learn and sentence-transformers, Python 3.12, no internet
# and no spatialdata stack; everything else travels as wheels (wheels.txt) in a folder under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx "/.devcarry/" .git/info/exclude || echo "/.devcarry/" >> .git/info/exclude
mkdir -p .devcarry/whl .devcarry/data
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .devcarry/whl -r benchmarks/device/wheels.txt
# The data, with the MOB count tables gzipped to fit (the run script unpacks them).
cp -r ../shared/data/her2st ../shared/data/stutility_mob .devcarry/data/
chmod -R u+w .devcarry/data && gzip -f .devcarry/data/stutility_mob/inst/extdata/counts/*.tsv
cp benchmarks/device/sitecustomize.py benchmarks/device/run_benchmark.sh .devcarry/
python3 benchmarks/device/minilm_table.py .devcarry/minilm_table.npz
du -sh .devcarry
