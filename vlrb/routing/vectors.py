"""Row-wise L2 normalisation of feature matrices: the fusion's `normalize_concat`, cosine k-NN and k-means."""
from __future__ import annotations

import numpy as np


def l2_normalize(X: np.ndarray) -> np.ndarray:
    """Each row divided by its Euclidean norm; an all-zero row (no image, no text) stays zero."""
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norm == 0, 1.0, norm)
