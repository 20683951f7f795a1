"""Build a routing benchmark from VLMEvalKit logs (data=vlrb), a records table (data=records) or the
generated demo (data=demo, the default), and extract features (stage=features).

    python build_data.py                              # generate + build the demo benchmark
    python build_data.py data=demo_full               # the demo at the paper's scale (30,540 x 17)
    python build_data.py data=vlrb data.raw_dir=W data.tsv_dir=LMUData
    python build_data.py stage=features encoder=default
"""
import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(config_path="conf", config_name="build", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from vlrb.jobs import build

    build.main(cfg)


if __name__ == "__main__":
    main()
