#!/usr/bin/env bash
# One prepared GPU check (run on a lent GPU machine, see the README's benchmark notes):
#  1. feature extraction throughput of the default pair (MiniLM + EfficientNet-Lite0) on cuda, bf16;
#  2. end-to-end routers at real LXMERT-on-ViT shapes (random weights) and on the offline backbone (224 px):
#     training and routing samples/s;
#  3. the user's own command, `python train.py router=routerdc lambda=0.5`, on the demo (trainer=auto: the GPU, bf16).
# The feature pipeline there decodes JPEGs on the GPU (decode: auto -> torchvision.io.decode_jpeg on cuda).
# Packages the GPU image lacks (the two weight packages) travel in data/gpu_carry/site.
#
#   bash benchmarks/gpu_check.sh [all|features|e2e|train]     # all: about 9 minutes at most (one device call)
#
# The parts' time limits add up to 570 s, inside one 600 s call; run the parts apart where a call allows less.
set -u
part=${1:-all}
case $part in all|features|e2e|train) ;; *) echo "usage: $0 [all|features|e2e|train]"; exit 2;; esac
want() { [ "$part" = all ] || [ "$part" = "$1" ]; }
export PYTHONPATH=$PWD/data/gpu_carry/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, timm, lightning; print('torch', torch.__version__, 'transformers', transformers.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__)"
[ -d data/gpu_carry/site ] || { echo "run python benchmarks/make_gpu_carry.py here first"; exit 2; }
if want features; then
echo "=== features"
timeout 120 python3 benchmarks/gpu_features.py --n 4096 --json "$OUT/gpu_features.json" 2>&1 | grep -v Warning | tail -25
fi
if want e2e; then
echo "=== end-to-end routers (LXMERT-on-ViT, random weights, real shapes)"
timeout 180 python3 benchmarks/bench_e2e.py --device cuda --backbone lxmert_vit_random --steps 30 --samples 1024 --json "$OUT/gpu_e2e.json" 2>&1 | grep -v Warning | tail -20
echo "=== end-to-end routers (offline backbone at 224 px, packed layers; RouterDC)"
timeout 90 python3 benchmarks/bench_e2e.py --device cuda --backbone offline --image-size 224 --routers routerdc --steps 30 --samples 1024 --json "$OUT/gpu_e2e_offline.json" 2>&1 | grep -v Warning | tail -8
fi
if want train; then
echo "=== the user's command on the GPU (trainer=auto)"
timeout 30 python3 build_data.py progress=false 2>&1 | tail -2
timeout 150 python3 train.py router=routerdc lambda=0.5 logger=csv num_workers=8 "hydra.run.dir=$OUT/routerdc" 2>&1 \
  | grep -E "GPU available|precision|val/rank_score|error" | head -8
fi
