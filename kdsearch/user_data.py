"""A user's dataset, checked and turned into tensors, and then used as given.

The dataset is what a function named `dataset.name: module:attribute` returns, or the dict
given to `run_search(dataset=...)`. The function takes no arguments and returns
`{"train": (x, y), "test": (x, y)}`. Two keys are optional:

- `"val": (x, y)`. Without it, kdsearch carves the validation split out of `train` with
  `dataset.split_seed`, as for its own datasets.
- `"num_classes"`. Without it, the number of classes is the largest label + 1.

`x` is float, of any shape N x .... `y` holds integer class indices. Both may be tensors or
NumPy arrays. The inputs are not normalised, because a pretrained teacher expects the
preprocessing it was trained with.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from kdsearch.errors import UserError, one_line, show

SPLITS = ("train", "val", "test")


class UserDataError(UserError, ValueError):
    """A user's dataset function returns something other than what is documented."""


def _describe(v: Any) -> str:
    """Return a short description of `v` for a message: its type, and shape and dtype if any."""
    if isinstance(v, (torch.Tensor, np.ndarray)):
        return f"{type(v).__name__} of shape {tuple(v.shape)} and dtype {v.dtype}"
    return type(v).__name__


def _array(v: Any, where: str, what: str) -> np.ndarray | torch.Tensor:
    if not isinstance(v, (torch.Tensor, np.ndarray)):
        raise UserDataError(f"{where}: {what} is {_describe(v)}; expected a torch.Tensor or a "
                            f"NumPy array")
    return v


def _split(raw: Any, where: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check one split (x, y) and return it as float32 inputs and int64 labels on the CPU."""
    key = f"[{split!r}]"
    if not isinstance(raw, (tuple, list)) or len(raw) != 2:
        raise UserDataError(f"{where}: {key} is {_describe(raw)}"
                            f"{f' of length {len(raw)}' if isinstance(raw, (tuple, list)) else ''}"
                            f"; expected a pair (x, y)")
    x = _array(raw[0], where, f"{key} x")
    y = _array(raw[1], where, f"{key} y")
    for v, what in ((x, "x"), (y, "y")):
        if isinstance(v, np.ndarray) and v.dtype.kind not in "biuf":
            raise UserDataError(f"{where}: {key} {what} is {_describe(v)}; expected numbers "
                                f"(x floats, y integer class indices)")
    xt = torch.as_tensor(np.asarray(x)) if isinstance(x, np.ndarray) else x.detach().cpu()
    yt = torch.as_tensor(np.asarray(y)) if isinstance(y, np.ndarray) else y.detach().cpu()
    if not (xt.is_floating_point()) or xt.ndim < 2:
        raise UserDataError(f"{where}: {key} x is {_describe(x)}; expected floats of shape "
                            f"N x ... (one row per example)")
    if yt.is_floating_point() or yt.is_complex() or yt.dtype == torch.bool or yt.ndim != 1:
        raise UserDataError(f"{where}: {key} y is {_describe(y)}; expected integer class "
                            f"indices of shape (N,)")
    if len(xt) != len(yt):
        raise UserDataError(f"{where}: {key} has {len(xt)} inputs and {len(yt)} labels; "
                            f"expected one label per input")
    if len(xt) == 0:
        raise UserDataError(f"{where}: {key} is empty")
    if not torch.isfinite(xt).all():
        raise UserDataError(f"{where}: {key} x holds NaN or inf")
    return xt.to(torch.float32).contiguous(), yt.to(torch.int64).contiguous()


def user_splits(source: Callable[[], Any] | dict[str, Any], where: str
                ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], int]:
    """Return the checked splits ("train", "test", maybe "val") and the number of classes."""
    if callable(source):
        try:
            raw = source()
        except UserError:
            raise
        except Exception as e:
            why = one_line(e) or type(e).__name__
            raise UserDataError(f"{where}: calling it raised {type(e).__name__}: {why}") from None
    else:
        raw = source
    if not isinstance(raw, dict):
        raise UserDataError(f"{where}: returned {_describe(raw)}; expected a dict "
                            f"{{'train': (x, y), 'test': (x, y)}} (optional 'val', "
                            f"'num_classes')")
    unknown = [k for k in raw if k not in (*SPLITS, "num_classes")]
    missing = [k for k in ("train", "test") if k not in raw]
    if unknown or missing:
        raise UserDataError(f"{where}: returned a dict with keys {sorted(map(str, raw))}; "
                            f"expected 'train' and 'test' (and optionally 'val', "
                            f"'num_classes')")
    splits = {s: _split(raw[s], where, s) for s in SPLITS if s in raw}
    shape = tuple(splits["train"][0].shape[1:])
    for s, (x, _) in splits.items():
        if tuple(x.shape[1:]) != shape:
            raise UserDataError(f"{where}: [{s!r}] x has examples of shape "
                                f"{tuple(x.shape[1:])}, ['train'] of {shape}; expected the same")
    top = max(int(y.max()) for _, y in splits.values())
    num_classes = raw.get("num_classes", top + 1)
    whole_tensor = isinstance(num_classes, torch.Tensor) and not num_classes.is_floating_point() \
        and num_classes.dtype != torch.bool
    if (isinstance(num_classes, np.integer) or whole_tensor) and np.ndim(num_classes) == 0:
        num_classes = int(num_classes)  # a float tensor is still refused below, as a float is
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise UserDataError(f"{where}: num_classes = {show(num_classes)}; expected an integer "
                            f">= 2")
    for s, (_, y) in splits.items():
        bad = (y < 0) | (y >= num_classes)
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            raise UserDataError(f"{where}: [{s!r}] y[{i}] = {int(y[i])} is not a class index "
                                f"in [0, {num_classes}) (num_classes = {num_classes}"
                                f"{'' if 'num_classes' in raw else ', from the largest label'})")
    return splits, num_classes
