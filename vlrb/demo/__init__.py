"""The demo benchmark's inputs: a generated VLMEvalKit work dir for the paper's 17 models and 14 datasets.

Modules: `world` (the models and the latent-skill model), `vocab` (words), `plan` (samples, one
planner per correctness family), `images` (drawings), `render` (answers and evaluation columns,
one renderer per family), `writers` (xlsx/csv/json/TSV files) and `generate` (the public entry).
"""
from vlrb.demo.generate import TRUTH_FILE, generate_demo, is_demo_dir, plan_dataset, plan_demo
from vlrb.demo.world import DEMO_MODELS, FULL_SCALE_COUNTS

__all__ = ["DEMO_MODELS", "FULL_SCALE_COUNTS", "TRUTH_FILE", "generate_demo", "is_demo_dir", "plan_dataset",
           "plan_demo"]
