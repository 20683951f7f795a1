"""vlrb: routing among vision-language models (a VL-RouterBench re-implementation and more)."""
from vlrb.data.benchmark import Benchmark, Split

__all__ = ["Benchmark", "Split"]
__version__ = "0.1.0"
