"""Train a router: python train.py router=<name> lambda=<x>   (sweeps: python train.py -m router=a,b lambda=0,inf)"""
import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from vlrb.jobs import train

    return train.main(cfg)


if __name__ == "__main__":
    main()
