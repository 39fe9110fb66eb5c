"""The metric names, defined once: what `distill.fit` reports each epoch, what a trial reports
to Ray Tune, and the columns of trials.csv and progress.csv that hold them."""

from __future__ import annotations

EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
VAL_ACC = "val_acc"
EPOCH_SECONDS = "epoch_seconds"
