"""The demo benchmark's inputs: a generated VLMEvalKit work dir for the paper's 17 models and 14 datasets.

Modules: `world` (the models and the latent-skill model), `vocab` (words), `samples` (a dataset's plan),
`plan` (samples, one planner per correctness family), `images` (drawings), `answers` (a model's prediction
text), `mistakes` (what a wrong model answers: shared and malformed wrong answers), `vlmeval_rules` (the scoring
rules applied to rendered cells), `render` and `render_math` (answers and evaluation columns, one renderer per
family), `families` (the planner, renderer and skill group of each correctness family), `writers`
(xlsx/csv/json/TSV files) and `generate` (the public entry).

The demo sits above vlrb.data: it reads the dataset table (vlrb.data.datasets), and vlrb.data imports
nothing from here.
"""
from vlrb.demo.generate import TRUTH_FILE, generate_demo, is_current_demo, is_demo_dir, plan_dataset, plan_demo
from vlrb.demo.world import DEMO_MODELS, FULL_SCALE_COUNTS

__all__ = ["DEMO_MODELS", "FULL_SCALE_COUNTS", "TRUTH_FILE", "generate_demo", "is_current_demo", "is_demo_dir",
           "plan_dataset", "plan_demo"]
