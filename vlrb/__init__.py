"""vlrb: routing among vision-language models (a VL-RouterBench re-implementation and more)."""
from vlrb.data.benchmark import Benchmark, Split
from vlrb.version import __version__

__all__ = ["Benchmark", "Split", "__version__", "load_router"]


def load_router(path, *, trust_code: bool = False):
    """A trained router from a run's `router/` folder (see `vlrb.artifact`): `.models`, `.route_raw(...)`.

    The folder is data: only vlrb's own classes are built from it, unless `trust_code=True` (a router of your own)."""
    from vlrb.artifact import load_router as _load

    return _load(path, trust_code=trust_code)
