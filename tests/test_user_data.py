"""kdsearch.user_data: a user's dataset (a dict of splits, or a function that returns one) checked
and turned into tensors, or refused in one line that says what came back."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from kdsearch.errors import ConfigError
from kdsearch.user_data import UserDataError, user_splits

WHERE = "dataset.name = 'my_data:load'"
RNG = np.random.default_rng(0)
X = RNG.random((6, 4))  # float64, 6 examples of 4 features
Y = np.array([0, 1, 2, 0, 1, 2], dtype=np.int32)


def _refusal(raw: Any) -> str:
    """The one-line message user_splits refuses `raw` with, which names where it came from."""
    with pytest.raises(UserDataError) as info:
        user_splits(raw, WHERE)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{WHERE}: "), message
    return message


def test_numpy_splits_become_float32_and_int64_tensors() -> None:
    splits, num_classes = user_splits({"train": (X, Y), "test": (X[:3], Y[:3])}, WHERE)
    assert set(splits) == {"train", "test"}  # no val: kdsearch carves it out of train later
    x, y = splits["train"]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous() and torch.allclose(x, torch.from_numpy(X).float())
    assert y.tolist() == Y.tolist()
    assert num_classes == 3  # the largest label + 1


def test_tensors_a_val_split_and_num_classes_are_taken_as_given() -> None:
    x = torch.randn(5, 1, 2, 2, requires_grad=True)  # any shape N x ...
    y = torch.tensor([0, 1, 0, 1, 1])
    splits, num_classes = user_splits({"train": (x, y), "val": [x[:2], y[:2]],
                                       "test": (x, y), "num_classes": np.int64(10)}, WHERE)
    assert set(splits) == {"train", "val", "test"} and num_classes == 10
    assert splits["val"][0].shape == (2, 1, 2, 2) and not splits["val"][0].requires_grad


def test_a_function_is_called_once_for_its_splits() -> None:
    calls = []

    def load() -> dict:
        calls.append(1)
        return {"train": (X, Y), "test": (X, Y)}

    _, num_classes = user_splits(load, WHERE)
    assert calls == [1] and num_classes == 3


def test_a_function_that_raises_is_named_with_its_error() -> None:
    def load() -> dict:
        raise FileNotFoundError("data.npz\nis missing")

    assert "calling it raised FileNotFoundError: data.npz is missing" in _refusal(load)

    def bad_config() -> dict:
        raise ConfigError("already one line for the user")

    with pytest.raises(ConfigError, match="^already one line for the user$"):
        user_splits(bad_config, WHERE)  # a kdsearch error passes through as it is


@pytest.mark.parametrize("raw, words", [
    ([X, Y], "returned list; expected a dict {'train': (x, y), 'test': (x, y)}"),
    ({"train": (X, Y)}, "returned a dict with keys ['train']; expected 'train' and 'test'"),
    ({"train": (X, Y), "test": (X, Y), "valid": (X, Y)}, "keys ['test', 'train', 'valid']"),
    ({"train": (X,), "test": (X, Y)}, "['train'] is tuple of length 1; expected a pair (x, y)"),
    ({"train": X, "test": (X, Y)}, "['train'] is ndarray of shape (6, 4) and dtype float64; "
                                   "expected a pair"),
    ({"train": (X.tolist(), Y), "test": (X, Y)},
     "['train'] x is list; expected a torch.Tensor or a NumPy array"),
    ({"train": (X, Y.astype(str)), "test": (X, Y)}, "['train'] y is ndarray of shape (6,) and "
                                                    "dtype <U"),
    ({"train": (X.astype(np.int64), Y), "test": (X, Y)},
     "['train'] x is ndarray of shape (6, 4) and dtype int64; expected floats of shape N x"),
    ({"train": (X[:, 0], Y), "test": (X, Y)}, "['train'] x is ndarray of shape (6,)"),
    ({"train": (X, Y.astype(np.float32)), "test": (X, Y)},
     "['train'] y is ndarray of shape (6,) and dtype float32; expected integer class indices"),
    ({"train": (X, Y.astype(bool)), "test": (X, Y)}, "['train'] y is ndarray of shape (6,) "
                                                     "and dtype bool"),
    ({"train": (X, Y[:, None]), "test": (X, Y)}, "['train'] y is ndarray of shape (6, 1)"),
    ({"train": (X, Y[:5]), "test": (X, Y)}, "['train'] has 6 inputs and 5 labels"),
    ({"train": (X, Y), "test": (X[:0], Y[:0])}, "['test'] is empty"),
    ({"train": (np.where(X > 0.5, np.nan, X), Y), "test": (X, Y)}, "['train'] x holds NaN"),
    ({"train": (X, Y), "test": (X[:, :3], Y)},
     "['test'] x has examples of shape (3,), ['train'] of (4,); expected the same"),
])
def test_a_bad_return_value_is_refused_in_one_line(raw: Any, words: str) -> None:
    assert words in _refusal(raw)


@pytest.mark.parametrize("test_y, num_classes, words", [
    ([0, 1, 5], 3, "['test'] y[2] = 5 is not a class index in [0, 3) (num_classes = 3)"),
    ([0, -1, 1], None, "['test'] y[1] = -1 is not a class index in [0, 3) (num_classes = 3, "
                       "from the largest label)"),
    ([0, 0, 0], 1, "num_classes = 1; expected an integer >= 2"),
    ([0, 0, 0], True, "num_classes = True; expected an integer >= 2"),
    ([0, 0, 0], "3", "num_classes = '3'; expected an integer >= 2"),
    ([0, 0, 0], 3.0, "num_classes = 3.0; expected an integer >= 2"),
])
def test_labels_outside_the_classes_and_a_bad_num_classes_are_refused(
        test_y: list[int], num_classes: Any, words: str) -> None:
    raw: dict[str, Any] = {"train": (X, Y), "test": (X[:3], np.array(test_y))}
    if num_classes is not None:
        raw["num_classes"] = num_classes
    assert words in _refusal(raw)


def test_labels_of_one_class_alone_are_refused() -> None:
    zeros = np.zeros(6, dtype=np.int64)
    assert "num_classes = 1; expected an integer >= 2" in _refusal(
        {"train": (X, zeros), "test": (X, zeros)})


def test_a_fractional_num_classes_tensor_is_refused() -> None:
    """A 0-d float tensor was cut down by int() (3.9 -> 3) where np.float64 is refused."""
    _refusal({"train": (X, Y), "test": (X, Y), "num_classes": torch.tensor(3.9)})
