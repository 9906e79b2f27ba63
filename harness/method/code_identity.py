"""Code identity of a result: which source files can change a cell's numbers, and their content hashes.

A run id hashes the config only, so after a method's code changes the old result would be reused as if nothing had
happened. Each result.json therefore records `code` (see `code_identity`):

    files   {path relative to the checkout: SHA-256 of its bytes} for every file that can change the numbers —
            the method's module (and the modules of the classes it inherits from in methods/), the shared helpers
            methods/_*.py, and the harness sources of the training path (CODE_ROOMS; not the CLI, dispatch or
            reports, which never change a number)
    hash    SHA-256 of the sorted (path, file hash) pairs: the one value to compare
    dirty   the files of `files` that git does not hold unmodified at HEAD (modified, untracked or no git at all),
            so a result of an uncommitted method says so
    commit  git HEAD of the checkout (None without git)

A finished cell is `stale` when one of its recorded files now hashes differently or is gone (`stale_files`);
the content decides, not git, so a commit of the same bytes does not make results stale. The code hash never enters
the run id (harness/config.py): a stale cell keeps its directory and is rerun in place by `--rerun-stale`.
"""

from __future__ import annotations

import hashlib
import subprocess
from functools import lru_cache
from pathlib import Path

from harness.core.paths import project_root

# harness rooms (and top-level modules) on the training path of a cell; dispatch, report and cli never change numbers
CODE_ROOMS = ("core", "model", "math", "data", "method", "train")
CODE_MODULES = ("config.py", "resolve.py", "store.py")


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def method_files(method: str) -> list[Path]:
    """The files under methods/ that define `method`: its class's module and those of its bases in methods/, plus the
    shared helpers methods/_*.py."""
    import inspect

    from harness.method.registry import get_method

    root = project_root()
    files = {Path(inspect.getfile(cls)).resolve() for cls in get_method(method).__mro__
             if cls.__module__.startswith("methods.")}
    files |= {p.resolve() for p in (root / "methods").glob("_*.py") if p.name != "__init__.py"}
    return sorted(files)


def harness_files() -> list[Path]:
    """The harness sources on the training path (CODE_ROOMS, CODE_MODULES)."""
    root = project_root() / "harness"
    files = [p for r in CODE_ROOMS for p in (root / r).rglob("*.py")]
    files += [root / m for m in CODE_MODULES] + [root / "__init__.py"]
    return sorted(p.resolve() for p in files if p.exists())


def _relative(path: Path) -> str:
    try:
        return path.relative_to(project_root().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def files_hash(files: dict[str, str]) -> str:
    """SHA-256 of the sorted (path, file hash) pairs."""
    text = "\n".join(f"{k} {v}" for k, v in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dirty_files(paths: list[str]) -> list[str]:
    """The paths (relative to the checkout) git does not hold unmodified at HEAD; all of them without git."""
    root = str(project_root())
    try:
        out = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=all", "--", *paths],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return list(paths)
    if out.returncode != 0:
        return list(paths)
    changed = {line[3:].strip().split(" -> ")[-1] for line in out.stdout.splitlines() if len(line) > 3}
    return [p for p in paths if p in changed]


def git_head() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(project_root()), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_identity(method: str) -> dict:
    """What result.json stores as `code` for a run of `method` (module docstring)."""
    files = {_relative(p): _file_hash(p) for p in [*method_files(method), *harness_files()]}
    return {"hash": files_hash(files), "files": files, "dirty": dirty_files(sorted(files)), "commit": git_head()}


@lru_cache(maxsize=4096)
def _current_hash(path: str, mtime_ns: int, size: int) -> str:
    return _file_hash(Path(path))


def current_file_hash(relative: str) -> str | None:
    """The SHA-256 of a checkout file now (cached on path, mtime and size), None if it is gone."""
    p = project_root() / relative
    try:
        st = p.stat()
    except OSError:
        return None
    return _current_hash(str(p), st.st_mtime_ns, st.st_size)


NO_RECORD = "no code record (written before results recorded their code)"


def stale_reason(code: dict | None) -> str:
    """Why a result's code is not the current code ('' when it is): the recorded files whose content differs now or
    that are gone. A result without a `code` record cannot be shown current, so it counts as stale too."""
    if not code or "files" not in code:
        return NO_RECORD
    changed = sorted(f for f, h in code["files"].items() if current_file_hash(f) != h)
    if not changed:
        return ""
    shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    return f"code changed since it ran: {shown}"
