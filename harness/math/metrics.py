"""Continual-learning metrics from the stored accuracy matrix — pure functions.

R[t][j] is the accuracy on task j's test set after training task t (defined for j ≤ t), n[j] the number of test
samples of task j, T the number of tasks. Indices are 0-based; "after task t" means after training tasks 0..t.
"""

from __future__ import annotations

import math
from typing import Sequence

Matrix = Sequence[Sequence[float | None]]


def acc_sample_weighted(R: Matrix, n: Sequence[int]) -> list[float]:
    """A_t = Σ_{j≤t} R[t][j]·n_j / Σ_{j≤t} n_j: accuracy over all seen test samples after task t.

    The "Acc" curve of P&M, SplitLoRA and PILOT (sample-weighted over seen-class test images).
    """
    out = []
    for t in range(len(R)):
        num = sum(R[t][j] * n[j] for j in range(t + 1))
        out.append(num / sum(n[: t + 1]))
    return out


def acc_task_mean(R: Matrix) -> list[float]:
    """A_t = (1/(t+1)) Σ_{j≤t} R[t][j]: mean of per-task accuracies after task t (mammoth's class-IL accuracy)."""
    return [sum(R[t][j] for j in range(t + 1)) / (t + 1) for t in range(len(R))]


def a_last(curve: Sequence[float]) -> float:
    """A_last = A_{T-1}: accuracy after the final task (P&M "Acc", PILOT A_B, FAA)."""
    return float(curve[-1])


def a_avg(curve: Sequence[float]) -> float:
    """A_avg = (1/T) Σ_t A_t: mean of the accuracy curve over tasks (P&M/SD-LoRA "AAA", PILOT "Average Accuracy")."""
    return float(sum(curve) / len(curve))


def forgetting_chaudhry(R: Matrix) -> float:
    """F = (1/(T-1)) Σ_{j<T-1} [max_{j≤t≤T-2} R[t][j] − R[T-1][j]]: best accuracy *before* the final task minus the
    final one, over old tasks (Chaudhry et al., "Riemannian Walk for Incremental Learning", ECCV 2018, eq. for f_j^k).
    A task that improves at the end has negative forgetting. clmerge's `forgetting` (result.json, reports). NaN for
    a single task."""
    T = len(R)
    if T < 2:
        return math.nan
    vals = [max(R[t][j] for t in range(j, T - 1)) - R[T - 1][j] for j in range(T - 1)]
    return float(sum(vals) / len(vals))


def forgetting_mammoth(R: Matrix) -> float:
    """F = (1/(T-1)) Σ_{j<T-1} [max_{j≤t≤T-1} R[t][j] − R[T-1][j]]: as `forgetting_chaudhry` but the maximum includes
    the final row, so each task's term is ≥ 0 — mammoth's `forgetting` (utils/metrics.py: the column-wise maximum
    of the whole accuracy matrix minus its last row, over the first T−1 tasks) and LAMDA-PILOT's. `forgetting_mammoth`
    in result.json. NaN for a single task."""
    T = len(R)
    if T < 2:
        return math.nan
    vals = [max(R[t][j] for t in range(j, T)) - R[T - 1][j] for j in range(T - 1)]
    return float(sum(vals) / len(vals))


def bwt(R: Matrix) -> float:
    """BWT = (1/(T-1)) Σ_{j<T-1} (R[T-1][j] − R[j][j]) (Lopez-Paz & Ranzato 2017). NaN for a single task."""
    T = len(R)
    if T < 2:
        return math.nan
    return float(sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1))


def summarize(R: Matrix, n: Sequence[int], task_aware: Matrix | None = None) -> dict[str, float | list[float]]:
    """All metrics of one run. `a_last`/`a_avg` use the sample-weighted curve; `*_task_mean` the mammoth one;
    `forgetting` is Chaudhry et al.'s (best before the final task), `forgetting_mammoth` mammoth's/PILOT's."""
    sw, tm = acc_sample_weighted(R, n), acc_task_mean(R)
    out: dict[str, float | list[float]] = {
        "acc_curve": sw,
        "acc_curve_task_mean": tm,
        "a_last": a_last(sw),
        "a_avg": a_avg(sw),
        "a_last_task_mean": a_last(tm),
        "a_avg_task_mean": a_avg(tm),
        "forgetting": forgetting_chaudhry(R),
        "forgetting_mammoth": forgetting_mammoth(R),
        "bwt": bwt(R),
    }
    if task_aware is not None:
        ta = acc_sample_weighted(task_aware, n)
        out["task_aware_curve"] = ta
        out["task_aware_a_last"] = a_last(ta)
    return out


def mean_std(values) -> tuple[float, float]:
    """Mean and sample std (ddof = 1) over seeds; NaN mean with no value, NaN std with fewer than two."""
    import numpy as np

    vals = np.asarray(values, dtype=float)
    mean = float(vals.mean()) if len(vals) else math.nan
    std = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
    return mean, std
