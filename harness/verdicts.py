"""The verdict rule: is a mean over seeds the same number as a reference mean, within its uncertainty?

Δ = ours − published (in pp); reproduced iff |Δ| ≤ max(tolerance, 2·√(σ_ours²/n_ours + σ_pub²/n_pub)): the means are
compared with their standard errors. Where the paper's seed count is not stated, σ_pub is taken as a standard error
(n_pub = 1). A missing std counts as 0.
"""

from __future__ import annotations

import math

DEFAULT_TOLERANCE = 1.0  # percentage points

REPRODUCED = "reproduced"
DIFFERS = "differs"
NOT_RUN = "not run"
NO_IMPLEMENTATION = "no implementation"
PROTOCOL_DIFFERS = "protocol differs"
NO_REFERENCE = "no reference"


def _finite(x: float | None) -> bool:
    return x is not None and not math.isnan(x)


def bound_of(ours_std: float | None, n: int, published_std: float | None, tolerance: float = DEFAULT_TOLERANCE,
             *, n_published: int | None = None) -> float:
    """max(tolerance, 2·√(σ_ours²/n + σ_pub²/n_pub)); a std that is missing/NaN (or from one seed) counts as 0."""
    se_ours = (ours_std / math.sqrt(n)) if (n > 1 and _finite(ours_std)) else 0.0
    se_pub = (published_std / math.sqrt(n_published or 1)) if _finite(published_std) else 0.0
    return max(tolerance, 2.0 * math.sqrt(se_ours**2 + se_pub**2))


def verdict(ours_mean: float | None, ours_std: float | None, n: int, published: float | None,
            published_std: float | None = None, *, n_published: int | None = None, implemented: bool = True,
            same_protocol: bool = True, tolerance: float = DEFAULT_TOLERANCE) -> str:
    """The verdict of one comparison (all values in percentage points)."""
    if not implemented:
        return NO_IMPLEMENTATION
    if n <= 0 or not _finite(ours_mean):
        return NOT_RUN
    if not _finite(published):
        return NO_REFERENCE
    if not same_protocol:
        return PROTOCOL_DIFFERS
    bound = bound_of(ours_std, n, published_std, tolerance, n_published=n_published)
    return REPRODUCED if abs(ours_mean - published) <= bound else DIFFERS
