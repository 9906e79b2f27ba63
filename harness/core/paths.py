"""Where the project's data files live and where results go.

The package is used from a checkout (`pip install -e .`), so benchmark specs and grids are found next to it.
`CLMERGE_ROOT` points elsewhere (e.g. a copy of `datasets/` on a cluster); `CLMERGE_RESULTS` moves results.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    env = os.environ.get("CLMERGE_ROOT")
    return Path(env) if env else Path(__file__).resolve().parents[2]


def datasets_dir() -> Path:
    env = os.environ.get("CLMERGE_DATASETS")
    return Path(env) if env else project_root() / "datasets"


def grids_dir() -> Path:
    return project_root() / "grids"


def results_dir() -> Path:
    env = os.environ.get("CLMERGE_RESULTS")
    return Path(env) if env else project_root() / "results"


def cache_dir() -> Path:
    """Prepared data and derived backbones (never committed)."""
    env = os.environ.get("CLMERGE_CACHE")
    return Path(env) if env else results_dir() / "cache"
