"""The task stream: a pure function of (benchmark spec, class-order seed, labels).

Class order and split are explicit lists recorded in every run, because the same "seed" gives different orders in
different code bases (mammoth natural, PILOT `np.random.seed(1993)` permutation, Avalanche `torch.randperm`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from harness.data.spec import BenchmarkSpec


def class_order(spec: BenchmarkSpec, order_seed: int | None) -> list[int]:
    """Class ids in the order they are learnt (ids = sorted class names, harness/data/image_sources.py).

    * `natural`: 0..C-1 (CODA-Prompt seed 0, L2P/DualPrompt, InfLoRA).
    * `permutation`: NumPy legacy `RandomState(seed).permutation(C)` — identical to PILOT/iCaRL's
      `np.random.seed(seed); np.random.permutation(C)` without touching the global RNG (seed 1993 over 100 classes
      begins 68, 56, 78, 8, 23, …; research/benchmarks.md §1.1).
    * `pcg64-shuffle`: `np.random.Generator(PCG64(seed)).shuffle(sorted ids)` — the P&M code base's
      (SplitLoRA `continual_manager.py`, research/pm-spec.md §6.1).
    * `python-shuffle`: `random.Random(seed).shuffle(ids)` — CODA-Prompt's `random.seed(seed); random.shuffle`
      for seeds > 0 (seed 1 over 100 classes begins 53, 37, 65, 51, 4; research/benchmarks.md §1.2).
    An explicit list is used as given.
    """
    if isinstance(spec.class_order, list):
        return list(spec.class_order)
    n = spec.num_classes
    if spec.class_order == "natural":
        return list(range(n))
    seed = spec.order_seed if order_seed is None else order_seed
    if spec.class_order == "permutation":
        return [int(c) for c in np.random.RandomState(seed).permutation(n)]
    if spec.class_order == "pcg64-shuffle":
        ids = np.arange(n)
        np.random.Generator(np.random.PCG64(seed)).shuffle(ids)
        return [int(c) for c in ids]
    if spec.class_order == "python-shuffle":
        ids = list(range(n))
        random.Random(seed).shuffle(ids)
        return ids
    raise ValueError(f"unknown class order {spec.class_order!r}")


@dataclass(frozen=True)
class Task:
    """One task: its classes (source ids, in order), the global label offset, and sample indices.

    Global labels are positions in the class order: task t's classes map to offset..offset+len(classes)-1.
    """

    index: int
    classes: tuple[int, ...]
    offset: int
    train_indices: np.ndarray
    test_indices: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class TaskStream:
    order: tuple[int, ...]
    tasks: tuple[Task, ...]
    position: np.ndarray  # source class id → global label (position in order)

    def remap(self, source_labels: np.ndarray) -> np.ndarray:
        return self.position[source_labels]

    def seen_classes(self, t: int) -> int:
        task = self.tasks[t]
        return task.offset + task.num_classes

    def record(self) -> dict:
        """What every run stores about its stream."""
        return {
            "class_order": list(self.order),
            "tasks": [
                {
                    "classes": list(t.classes),
                    "num_train": int(len(t.train_indices)),
                    "num_test": int(len(t.test_indices)),
                }
                for t in self.tasks
            ],
        }


def build_stream(
    spec: BenchmarkSpec, order_seed: int | None, train_labels: np.ndarray, test_labels: np.ndarray
) -> TaskStream:
    order = class_order(spec, order_seed)
    position = np.empty(spec.num_classes, dtype=np.int64)
    position[np.asarray(order)] = np.arange(spec.num_classes)
    tasks, offset = [], 0
    for i, n in enumerate(spec.increments()):
        classes = tuple(order[offset : offset + n])
        tasks.append(
            Task(
                index=i,
                classes=classes,
                offset=offset,
                train_indices=np.flatnonzero(np.isin(train_labels, classes)),
                test_indices=np.flatnonzero(np.isin(test_labels, classes)),
            )
        )
        offset += n
    return TaskStream(order=tuple(order), tasks=tuple(tasks), position=position)
