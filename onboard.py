"""A new model joins a trained router from a few labelled items: python onboard.py router_dir=<run>/router model=<id>

    python onboard.py router_dir=logs/train/runs/<time>/router model=NewVLM n_labelled=100
    python onboard.py router_dir=... model=NewVLM data=mathv data.dir=/path/to/MATH-V pricing=mathv

No refit: the router's models stay as they were, the newcomer gets a head on the router's own predictions
(vlrb/routers/onboard.py). Writes <run dir>/router (serve it with serve.py) and onboard.json.
"""
from vlrb.jobs.entry import launch

if __name__ == "__main__":
    launch("onboard", __file__)
