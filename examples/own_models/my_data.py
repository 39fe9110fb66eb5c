"""The data: scikit-learn's bundled 8x8 digits, preprocessed the way this project's teacher was
trained (pixels scaled to 0..1, then standardised), with a fixed test split of its own."""

import numpy as np
from sklearn.datasets import load_digits

MEAN, STD = 0.3, 0.4  # this project's own normalisation: the teacher expects it


def load() -> dict:
    digits = load_digits()
    x = ((digits.images.astype(np.float32) / 16.0 - MEAN) / STD)[:, None, :, :]  # N x 1 x 8 x 8
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(7).permutation(len(y))
    test, train = order[:360], order[360:]
    return {"train": (x[train], y[train]), "test": (x[test], y[test]), "num_classes": 10}
