"""The jobs behind the thin entry points: `build` (build_data.py), `train` (train.py), `evaluate`
(evaluate.py). Only this layer reads a Hydra DictConfig; the library below it takes plain arguments."""
