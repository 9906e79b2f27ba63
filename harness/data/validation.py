"""The validation split for tuning (`tune=true`): a seeded, stratified share of each task's *training* data is held
out, the run trains on the rest and records its accuracy on the held-out part beside the test accuracy. Sweep reports
select hyper-parameters on it (harness/dispatch/sweep.py), so test data never chooses a setting.

Per task t, over the task's training samples sorted by index: `harness.data.splits.stratified_split` of their labels with
share VALIDATION_FRACTION and seed derive_seed(run seed, "validation", t) mod 2³², i.e. per class a NumPy-legacy
`RandomState` permutation, round(fraction · n_class) samples to validation. It depends on the training seed, so
paired runs (same seed) hold out the same samples, and a mean over seeds also averages over held-out sets.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from harness.core.errors import ConfigError
from harness.core.seeding import derive_seed
from harness.data.splits import stratified_split
from harness.data.stream import TaskStream

VALIDATION_FRACTION = 0.1


def _min_per_class(fraction: float) -> int:
    """The fewest training samples of a class that hold out one (stratified_split rounds half to even)."""
    return next(n for n in range(1, 10**6) if int(round(fraction * n)) >= 1)


def validation_sha256(test_split_hash: str, val_indices: list[np.ndarray]) -> str:
    """SHA-256 over the test split's hash, then per task 'task t' and its sorted held-out train indices, one per
    line: names the held-out samples of the data the run read."""
    h = hashlib.sha256(f"{test_split_hash}\n".encode())
    for t, idx in enumerate(val_indices):
        h.update(f"task {t}\n".encode())
        for i in np.sort(idx):
            h.update(f"{int(i)}\n".encode())
    return h.hexdigest()


def hold_out(
    stream: TaskStream, train_labels: np.ndarray, seed: int, test_split_hash: str, fraction: float = VALIDATION_FRACTION
) -> tuple[TaskStream, TaskStream, dict]:
    """(training stream, validation stream, record). The training stream's tasks keep the non-held-out training
    indices; the validation stream is the same tasks with `test_indices` = the held-out *training-bank* indices, so
    the trainer's `evaluate` scores it on the training bank (evaluation view, no augmentation)."""
    train_tasks, val_tasks, held = [], [], []
    for task in stream.tasks:
        idx = np.sort(np.asarray(task.train_indices))
        keep, val = stratified_split(train_labels[idx], fraction, derive_seed(seed, "validation", task.index) % 2**32)
        if len(val) == 0:  # an empty validation set would score 0.0 and silently decide the selection
            raise ConfigError(
                f"tune: true holds out {fraction:.0%} of each class's training samples for validation, but task "
                f"{task.index} ({len(idx)} training samples over {len(np.unique(train_labels[idx]))} classes) keeps none "
                f"(each class rounds to 0 samples); tune on a benchmark with at least {_min_per_class(fraction)} "
                "training samples per class, or drop tune: true")
        train_tasks.append(dataclasses.replace(task, train_indices=idx[keep]))
        val_tasks.append(dataclasses.replace(task, train_indices=idx[keep], test_indices=idx[val]))
        held.append(idx[val])
    record = {
        "fraction": fraction,
        "seed": seed,
        "num_val": [int(len(v)) for v in held],
        "hash": validation_sha256(test_split_hash, held),
    }
    return (dataclasses.replace(stream, tasks=tuple(train_tasks)), dataclasses.replace(stream, tasks=tuple(val_tasks)),
            record)


def validation_result(record: dict, val_acc: list[list[float]]) -> dict:
    """result.json's `validation` section: the split's record, the accuracy matrix on it and its metrics (same
    definitions as the test metrics, harness/math/metrics.py, weighted by the held-out sample counts)."""
    from harness.math.metrics import summarize

    return {**record, "acc_matrix": val_acc, "metrics": summarize(val_acc, record["num_val"])}
