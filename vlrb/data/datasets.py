"""The 14 VL-RouterBench datasets: VLMEvalKit key, task type, task group and correctness family.

One table, used by the reader, the demo generator, the reports and the per-group metrics.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    key: str  # exact VLMEvalKit spelling, also the sample-id prefix
    task_type: str  # BENCHMARKS/<task_type>/ folder (upstream config/datasets.yaml)
    group: str  # task group of the paper: General, STEM, Charts & OCR
    family: str  # correctness rule family: a key of vlrb.data.families.FAMILIES


DATASETS: dict[str, DatasetSpec] = {
    s.key: s
    for s in [
        DatasetSpec("MMBench_DEV_EN_V11", "vqa_mc", "General", "mcq"),
        DatasetSpec("MMStar", "vqa_mc", "General", "mcq"),
        DatasetSpec("MMMU_DEV_VAL", "vqa_mc", "General", "mcq"),
        DatasetSpec("RealWorldQA", "vqa_oe", "General", "mcq"),
        DatasetSpec("InfoVQA_VAL", "ocr_qa", "General", "anls"),
        DatasetSpec("HallusionBench", "vqa_mc", "General", "yorn"),
        DatasetSpec("MathVista_MINI", "math", "STEM", "mathvista"),
        DatasetSpec("MathVision_MINI", "math", "STEM", "mathvision"),
        DatasetSpec("MathVerse_MINI", "math", "STEM", "mathverse"),
        DatasetSpec("AI2D_TEST", "vqa_mc", "STEM", "mcq"),
        DatasetSpec("ChartQA_TEST", "ocr_qa", "Charts & OCR", "vqa"),
        DatasetSpec("DocVQA_VAL", "ocr_qa", "Charts & OCR", "anls"),
        DatasetSpec("TextVQA_VAL", "vqa_oe", "Charts & OCR", "vqa"),
        DatasetSpec("OCRBench", "ocr_qa", "Charts & OCR", "ocrbench"),
    ]
}

# output-token estimates by task type where a prediction is missing (upstream; docs/method.md#tokens)
OUTPUT_TOKEN_ESTIMATES = {"vqa_mc": 10, "classification": 10, "vqa_oe": 50, "ocr_qa": 50,
                          "doc_qa": 150, "math_logic": 150, "math": 150}
DEFAULT_OUTPUT_TOKEN_ESTIMATE = 100

IMAGE_TOKENS = 256  # flat input-token charge per image (upstream; docs/method.md#tokens)

def spec(key: str) -> DatasetSpec:
    try:
        return DATASETS[key]
    except KeyError:
        raise KeyError(f"unknown dataset key {key!r}; known: {', '.join(DATASETS)}") from None
