"""vlrb: routing among vision-language models (a VL-RouterBench re-implementation and more)."""
from vlrb.data.benchmark import Benchmark, Split

__all__ = ["Benchmark", "Split", "load_router"]


def load_router(path):
    """A trained router from a run's `router/` folder (see `vlrb.artifact`): `.models`, `.route_raw(...)`."""
    from vlrb.artifact import load_router as _load

    return _load(path)
__version__ = "0.1.0"
