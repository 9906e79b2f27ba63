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

    Global labels are positions in the class order: task t's classes map to offset..offset+len(classes)-1. In a
    domain-il stream every task has all classes (offset 0) and its samples are those of its domain.
    """

    index: int
    classes: tuple[int, ...]
    offset: int
    train_indices: np.ndarray
    test_indices: np.ndarray
    domain: str | None = None  # domain-il: the task's domain (its classes are all classes, offset 0)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class TaskStream:
    order: tuple[int, ...]
    tasks: tuple[Task, ...]
    position: np.ndarray  # source class id → global label (position in order)
    scenario: str = "class-il"

    def remap(self, source_labels: np.ndarray) -> np.ndarray:
        return self.position[source_labels]

    def seen_classes(self, t: int) -> int:
        """Outputs of the evaluation model after task t: the classes seen so far (class-il), all classes (domain-il)."""
        task = self.tasks[t]
        return task.offset + task.num_classes

    def record(self) -> dict:
        """What every run stores about its stream (domain-il streams add the scenario and each task's domain)."""
        out: dict = {
            "class_order": list(self.order),
            "tasks": [
                {
                    "classes": list(t.classes),
                    "num_train": int(len(t.train_indices)),
                    "num_test": int(len(t.test_indices)),
                    **({"domain": t.domain} if t.domain is not None else {}),
                }
                for t in self.tasks
            ],
        }
        if self.scenario != "class-il":  # class-il records keep their exact content
            out["scenario"] = self.scenario
        return out


def build_stream(
    spec: BenchmarkSpec, order_seed: int | None, train_labels: np.ndarray, test_labels: np.ndarray,
    domains: tuple[list[str], np.ndarray, np.ndarray] | None = None,
) -> TaskStream:
    """The tasks of `spec`. class-il: the classes in order, split by `spec.increments()`. domain-il: one task per
    domain of `spec.domains.order`, each with all classes; `domains` = (domain names, each train sample's index into
    them, each test sample's); None lists the tasks without samples (`clmerge stream` before `prepare`)."""
    order = class_order(spec, order_seed)
    position = np.empty(spec.num_classes, dtype=np.int64)
    position[np.asarray(order)] = np.arange(spec.num_classes)
    if spec.scenario == "domain-il":
        return _domain_stream(spec, order, position, domains)
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


def _domain_stream(spec: BenchmarkSpec, order: list[int], position: np.ndarray,
                   domains: tuple[list[str], np.ndarray, np.ndarray] | None) -> TaskStream:
    from harness.core.errors import ConfigError

    empty = np.zeros(0, dtype=np.int64)
    tasks = []
    for i, name in enumerate(spec.domains.order):
        train_idx = test_idx = empty
        if domains is not None:
            names, train_dom, test_dom = domains
            if name not in names:
                raise ConfigError(f"{spec.file or spec.name}: domain {name!r} of domains.order is not in the data; "
                                  f"its domains are: {', '.join(names)}")
            d = names.index(name)
            train_idx, test_idx = np.flatnonzero(train_dom == d), np.flatnonzero(test_dom == d)
        tasks.append(Task(index=i, classes=tuple(order), offset=0, train_indices=train_idx, test_indices=test_idx,
                          domain=name))
    return TaskStream(order=tuple(order), tasks=tuple(tasks), position=position, scenario="domain-il")


def stream_of(spec: BenchmarkSpec, order_seed: int | None, data) -> TaskStream:
    """The task stream of loaded `SourceData` (its domains for a domain-il benchmark)."""
    from harness.core.errors import ConfigError

    domains = None
    if spec.scenario == "domain-il":
        if data.domain_names is None:
            raise ConfigError(f"{spec.file or spec.name}: a domain-il benchmark needs the domain of every sample, and "
                              f"its source gives none (source.rotations for digits, a source with domains for images)")
        domains = (data.domain_names, data.train_domains, data.test_domains)
    return build_stream(spec, order_seed, data.train_labels, data.test_labels, domains)
