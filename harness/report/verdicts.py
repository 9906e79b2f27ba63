"""The verdict rule: is our mean over seeds the published number, given both uncertainties? Pure functions, no I/O.

Rule (percentage points), comparing two means through their standard errors:

    reproduced  iff  |Δ| ≤ max(tolerance, 2·√(σ_ours²/n_ours + σ_pub²/n_pub)),   Δ = ours − published

σ_ours is our sample std over the n_ours finished seeds (ddof = 1; no spread is known from one seed, so it counts 0);
σ_pub is the std the paper prints and n_pub the number of seeds it states. Where the paper prints a std but no seed
count, σ_pub is treated as a standard error already (n_pub = 1), the conservative reading (a wider bound). A paper
without a std contributes 0. 2·SE is the usual ≈95 % band of a difference of two means (normal approximation; with 3
seeds a t quantile would be wider, so "differs" is a flag to look at, not a test at a stated level). The tolerance
floor (default 1 pp) absorbs what seeds do not capture: split files, library versions, hardware.

Δ is computed from the unrounded values, and `delta_text` prints it with as many decimals as it takes for the printed
Δ and bound to agree with the verdict.
"""

from __future__ import annotations

import math

DEFAULT_TOLERANCE = 1.0  # percentage points

REPRODUCED = "reproduced"
DIFFERS = "differs"
PARTIAL = "partial"  # fewer seeds finished than the table asks: shown, no verdict (the caller decides, with k/n)
FAILED = "failed"  # a cell of the row recorded an error
NOT_RUN = "not run"
NO_IMPLEMENTATION = "no implementation"
PROTOCOL_DIFFERS = "protocol differs"
NO_REFERENCE = "no reference"
CONFLICT = "published conflict"  # the source gives two numbers for one setting: ours shown, not judged (the caller marks)
VERDICTS = (REPRODUCED, DIFFERS, PARTIAL, FAILED, NOT_RUN, NO_IMPLEMENTATION, PROTOCOL_DIFFERS, CONFLICT, NO_REFERENCE)

_EPS = 1e-9  # float noise in Δ (80.9 − 80.0 = 0.9000000000000057) never flips a verdict

VERDICT_RULE = (
    "reproduced iff |Δ| ≤ max(tolerance, 2·√(σ_ours²/n_ours + σ_pub²/n_pub)), a bound on the difference of two means "
    "from their standard errors; Δ = ours − published from the unrounded values; σ_ours = our std over the n_ours "
    "finished seeds (ddof = 1; 0 with one seed); σ_pub = the published std (0 where none is printed) and n_pub = the "
    "paper's seed count where it states one — where it does not, σ_pub is treated as a standard error (n_pub = 1); "
    "differs otherwise. No verdict is drawn for: no implementation (no clmerge counterpart of the method or benchmark); "
    "failed (a cell recorded an error); not run (no finished seed); partial (k/n: fewer seeds finished than the table "
    "asks); no reference (nothing published); protocol differs (published under another backbone, split, class order "
    "or code base: ours and Δ are shown); published conflict (the source gives two numbers for one setting)."
)


def _finite(x: float | None) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def standard_error(std: float | None, n: int | None) -> float:
    """σ/√n; 0 when σ is unknown (None, NaN) or n < 1. With n = None, σ is taken to be a standard error already."""
    if not _finite(std):
        return 0.0
    if n is None:
        return float(std)
    return float(std) / math.sqrt(n) if n >= 1 else 0.0


def bound_of(ours_std: float | None, n: int, published_std: float | None = None, tolerance: float = DEFAULT_TOLERANCE,
             *, n_published: int | None = None) -> float:
    """max(tolerance, 2·√(SE_ours² + SE_pub²)): the largest |Δ| still called reproduced (percentage points).

    SE_ours = ours_std/√n (0 for n ≤ 1: one seed has no spread); SE_pub = published_std/√n_published, or published_std
    itself when the seed count is unknown (n_published None)."""
    se_ours = standard_error(ours_std, n) if n > 1 else 0.0
    se_pub = standard_error(published_std, n_published)
    return max(tolerance, 2.0 * math.sqrt(se_ours**2 + se_pub**2))


def verdict(
    ours_mean: float | None,
    ours_std: float | None,
    n: int,
    published: float | None,
    published_std: float | None = None,
    *,
    n_published: int | None = None,
    implemented: bool = True,
    same_protocol: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
) -> str:
    """The verdict of one comparison, all values in percentage points (rule: module docstring, `VERDICT_RULE`).

    Checked in order: "no implementation" (`implemented` False); "not run" (n ≤ 0 or no mean); "no reference"
    (`published` None); "protocol differs" (`same_protocol` False: shown, not judged); then "reproduced" iff
    |ours_mean − published| ≤ `bound_of(...)`, else "differs". Partial and failed rows are the caller's to mark: this
    function judges the seeds it is given.
    """
    if not implemented:
        return NO_IMPLEMENTATION
    if n <= 0 or not _finite(ours_mean):
        return NOT_RUN
    if not _finite(published):
        return NO_REFERENCE
    if not same_protocol:
        return PROTOCOL_DIFFERS
    bound = bound_of(ours_std, n, published_std, tolerance, n_published=n_published)
    return REPRODUCED if abs(ours_mean - published) <= bound + _EPS else DIFFERS  # type: ignore[operator]


def delta_text(delta: float, bound: float, decimals: int = 2) -> str:
    """Δ signed, with the fewest decimals (≥ `decimals`, ≤ 6) at which the printed |Δ| and the printed bound order
    the same way as the unrounded ones, so the printed numbers never contradict the verdict."""
    if not _finite(delta):
        return "–"
    inside = abs(delta) <= bound + _EPS
    for d in range(decimals, 7):
        shown_inside = round(abs(delta), d) <= round(bound, d)
        if shown_inside == inside:
            return f"{delta:+.{d}f}"
    return f"{delta:+.6f}"
