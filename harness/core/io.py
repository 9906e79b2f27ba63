"""Atomic file writes and file locks: a half-written file is never read as complete.

Files for a shared cluster: an atomic write ends with the mode a plain `open(path, "w")` would give — the existing
file's mode, or 0666 minus the umask for a new file — not mkstemp's private 0600, so collaborators in the group read
results, tables, plots and logs when the umask lets them. Locks are flock(2); a filesystem that refuses them
(Lustre mounted without `flock`, some NFS setups) gets a LockUnsupported error naming the mount.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.core.errors import ConfigError

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it (/proc/self/status, kernel >= 4.7);
    elsewhere set and restored under a lock (os.umask has no read-only form)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def plain_write_mode(path: Path) -> int:
    """The permission bits `open(path, "w")` would leave: an existing file keeps its own, a new one gets
    0o666 & ~umask (POSIX open(2) with O_CREAT and mode 0666)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = plain_write_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp makes 0600: give the file the mode a plain write would have
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=True) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    _atomic_write(path, lambda fh: torch.save(obj, fh))


def host_snapshot(obj: Any) -> tuple[Any, Callable[[], None]]:
    """A copy of `obj` (nested dicts, lists and tuples of tensors and plain values) that later in-place updates of
    its tensors cannot change, and a function that waits until the copy is complete. CPU tensors are cloned; device
    tensors are copied into pinned host memory asynchronously, on the current stream, so they read the values as of
    this call; the returned wait synchronises with those copies (a CUDA event: the caller's thread never waits)."""
    import copy

    import torch

    events: list = []
    copies: dict[int, Any] = {}  # id → copy: a tensor referenced twice stays one tensor, as torch.save keeps it

    def snap(o: Any) -> Any:
        if isinstance(o, torch.Tensor):
            if id(o) not in copies:
                copies[id(o)] = snap_tensor(o.detach())
            return copies[id(o)]
        if isinstance(o, dict):
            return type(o)((k, snap(v)) for k, v in o.items())
        if isinstance(o, (list, tuple)) and type(o) in (list, tuple):
            return type(o)(snap(v) for v in o)
        return copy.deepcopy(o)

    def snap_tensor(t: "torch.Tensor") -> "torch.Tensor":
        if t.device.type == "cpu":
            return t.clone()
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.device.type == "cuda")
        host.copy_(t, non_blocking=t.device.type == "cuda")  # other devices: a blocking copy
        if t.device.type == "cuda" and not events:
            events.append(t.device)
        return host

    out = snap(obj)
    if not events:
        return out, lambda: None
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(events[0]))
    return out, event.synchronize


class BackgroundWriter:
    """Runs one write at a time on a background thread: `submit` first waits for the previous write, `wait` joins
    the one in flight and re-raises its error. A process that dies mid-write leaves at most a temporary file
    (writes go through `_atomic_write`), never a truncated file under the final name.

    Used as a context manager, its exit joins the write in flight; when the block unwinds from an exception (e.g.
    submitit's requeue `SystemExit` raised by a USR2 handler), that exception propagates and a write error is attached
    to it as a note instead of replacing it."""

    # how long `wait` gives a thread whose start() a signal handler interrupted to report that it has begun
    START_GRACE_SECONDS = 1.0

    def __init__(self, background: bool = True):
        self.background = background
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.wait()
            return
        try:
            self.wait()
        except BaseException as write_error:  # keep the exception that is unwinding
            exc.add_note(f"also, a background checkpoint write failed: {write_error!r}")

    def submit(self, write: Callable[[], None]) -> None:
        """Start `write()` (on the calling thread when not background), after the previous write has finished."""
        self.wait()
        if not self.background:
            write()
            return

        def run() -> None:
            try:
                write()
            except BaseException as exc:  # re-raised on the caller's thread by wait()
                self._error = exc

        # published before start(), so that a signal handler raising inside start() cannot hide a running write
        self._thread = threading.Thread(target=run, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until no write is in flight; raise the last write's error, if any."""
        # cleared only once joined: a signal that interrupts the join leaves the thread to the next wait
        if self._thread is not None:
            _join_started(self._thread, self.START_GRACE_SECONDS)
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _join_started(thread: threading.Thread, grace: float) -> None:
    """Join `thread`. If its start() was interrupted (a signal handler raised in it), the thread either never ran or
    is about to report that it has begun: wait up to `grace` seconds for the latter, then join it."""
    deadline = time.monotonic() + grace
    while True:
        try:
            thread.join()
            return
        except RuntimeError:  # "cannot join thread before it is started"
            if time.monotonic() > deadline:
                return  # never started: no write is in flight
            time.sleep(0.005)


def atomic_savefig(fig: Any, path: Path, dpi: int) -> None:
    """Save a matplotlib figure as PNG atomically."""
    _atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


class LockUnsupported(ConfigError):
    """The filesystem refuses flock: cells could run twice, so nothing runs."""


# flock's answers on a filesystem without lock support: Lustre without -o flock (ENOSYS), NFS without a lock
# manager (ENOLCK), FUSE and others (EOPNOTSUPP / ENOTSUP)
_NO_LOCKS = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}


def mount_of(path: Path, mountinfo: str | None = None) -> tuple[str, str, str]:
    """(mount point, filesystem type, mount options) of the mount holding `path`, from /proc/self/mountinfo (the
    longest mount point that is a prefix of the resolved path); ("?", "?", "") where that is not readable."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return "?", "?", ""
    target = str(Path(path).resolve())
    best = ("?", "?", "")
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if not sep or len(fields) < 6 or not rest:
            continue
        point = fields[4].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best[0] == "?" or len(point) >= len(best[0])):
            best = (point, rest[0], fields[5] + ("," + rest[2] if len(rest) > 2 else ""))
    return best


def lock_unsupported(path: Path, exc: OSError) -> LockUnsupported:
    point, fstype, options = mount_of(path.parent)
    return LockUnsupported(
        f"cannot lock {path}: the filesystem refuses file locks ({os.strerror(exc.errno or 0)}); mount {point} "
        f"(type {fstype}, options {options or '?'}). clmerge needs flock so that no cell runs twice: remount it with "
        f"locks (Lustre: -o flock; NFS: with a lock manager, not -o nolock) or put the results on a filesystem that "
        f"has them (--results DIR or CLMERGE_RESULTS)"
    )


@contextlib.contextmanager
def file_lock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An flock on `path` (created if needed). Yields False at once if non-blocking and held elsewhere. Raises
    LockUnsupported, naming the mount, where the filesystem has no working locks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fh.fileno(), flags)
        except BlockingIOError:
            yield False
            return
        except OSError as exc:
            if exc.errno in _NO_LOCKS:
                raise lock_unsupported(path, exc) from exc
            raise
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
