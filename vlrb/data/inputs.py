"""What every reader hands to the build: the `Inputs` contract (two tables plus what was worth reporting), and
`BuildError`, the one error type of a build's input checks.

The readers (vlrb.data.vlmevalkit_inputs, vlrb.data.records, vlrb.data.results) each produce
  records: sample_id, dataset, model_id, score, failed, output_tokens, has_prediction [, cost, input_tokens]
  samples: sample_id, dataset, prompt, image_kind, image_ref, tsv_file, tsv_row, num_images [, group]
and vlrb.data.assemble turns them into the benchmark's matrices.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from vlrb.errors import VlrbError


class BuildError(VlrbError, ValueError):
    """A build input that cannot become a benchmark; the message names the file or config key and the fix."""


@dataclass
class Inputs:
    """What a reader hands to `assemble`, plus what it found worth reporting."""

    records: pd.DataFrame
    samples: pd.DataFrame
    files: list[str] = field(default_factory=list)  # input files, for the manifest
    report: dict = field(default_factory=dict)
