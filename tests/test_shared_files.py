"""Files for a shared cluster: atomic writes leave the mode a plain write would (the umask decides), and a
filesystem without working locks is refused with an error that names its mount."""

import errno
import fcntl
import os
import stat
from pathlib import Path

import pytest

from harness.core import io
from harness.core.io import (LockUnsupported, atomic_torch_save, atomic_write_json, atomic_write_text, current_umask,
                             file_lock, mount_of)


@pytest.fixture
def umask():
    """Set the process umask for one test, restore it after."""
    before = os.umask(0o022)
    os.umask(before)
    yield lambda m: os.umask(m)
    os.umask(before)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask_like_a_plain_write(tmp_path, umask, mask, expected):
    umask(mask)
    assert current_umask() == mask
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_json(tmp_path / "sub" / "r.json", {"a": 1})
    atomic_torch_save({"w": 1}, tmp_path / "c.pt")
    assert _mode(plain) == expected  # what a plain write gives: the reference
    assert [_mode(tmp_path / f) for f in ("a.txt", "sub/r.json", "c.pt")] == [expected] * 3
    assert not list(tmp_path.rglob("*.tmp"))


def test_rewriting_a_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    f = tmp_path / "table.md"
    atomic_write_text(f, "v1")
    os.chmod(f, 0o660)  # e.g. made group-writable by a collaborator
    atomic_write_text(f, "v2")
    assert _mode(f) == 0o660 and f.read_text() == "v2"


def test_figures_honour_the_umask(tmp_path, umask):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    umask(0o002)
    fig = plt.figure()
    io.atomic_savefig(fig, tmp_path / "p.png", dpi=20)
    plt.close(fig)
    assert _mode(tmp_path / "p.png") == 0o664


MOUNTINFO = """\
99 98 0:51 / /lustre/project\\040a rw,noatime shared:41 - lustre 10.0.0.1@tcp:/proj rw,noflock
98 22 0:50 / /lustre rw,relatime shared:40 - lustre 10.0.0.1@tcp:/scratch rw,lazystatfs
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
"""  # not in mount order: the longest matching mount point wins wherever it is listed


def test_mount_of_finds_the_longest_prefix():
    assert mount_of(Path("/lustre/project a/results"), MOUNTINFO) == ("/lustre/project a", "lustre", "rw,noatime,rw,noflock")
    assert mount_of(Path("/lustre/projects"), MOUNTINFO)[0] == "/lustre"  # a prefix of the name is not a parent
    assert mount_of(Path("/home/u"), MOUNTINFO) == ("/", "ext4", "rw,relatime,rw,errors=remount-ro")


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_filesystem_without_locks_is_refused_naming_the_mount(tmp_path, monkeypatch, code):
    def refuse(fd, flags):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", refuse)
    point, fstype, _ = mount_of(tmp_path)
    with pytest.raises(LockUnsupported) as err:
        with file_lock(tmp_path / ".lock"):
            pytest.fail("the body must not run without a lock")
    msg = str(err.value)
    assert f"cannot lock {tmp_path / '.lock'}: the filesystem refuses file locks ({os.strerror(code)})" in msg
    assert f"mount {point} (type {fstype}," in msg and "Lustre: -o flock" in msg and "--results DIR" in msg


def test_other_lock_errors_are_not_disguised(tmp_path, monkeypatch):
    def broken(fd, flags):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(OSError) as err:
        with file_lock(tmp_path / ".lock"):
            pass
    assert not isinstance(err.value, LockUnsupported)


def test_cli_reports_missing_locks_cleanly(tmp_path):
    """`clmerge status` on a results directory whose filesystem refuses locks: one message, exit 2, no traceback.
    flock is refused through a sitecustomize that the child Python loads (a real Lustre mount is not available)."""
    import subprocess
    import sys

    from harness.core.paths import project_root

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import errno, fcntl\n"
        "def refuse(fd, flags):\n    raise OSError(errno.ENOSYS, 'Function not implemented')\n"
        "fcntl.flock = refuse\n"
    )
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{project_root()}"}
    # a locked-looking run directory: status probes its .lock
    from harness.resolve import resolve
    from harness.store import run_dir
    from tests.conftest import FAST

    cfg = resolve("split-digits-2x5", "seq-lora", seed=0, overrides=FAST)
    (run_dir(cfg, results)).mkdir(parents=True)
    (run_dir(cfg, results) / ".lock").touch()
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nbenchmarks: [split-digits-2x5]\nmethods: [seq-lora]\nseeds: [0]\n"
                    "overrides: {" + ", ".join(f"{k}: {v}" for k, v in FAST.items()) + "}\n")
    p = subprocess.run([sys.executable, "-m", "harness.cli", "--results", str(results), "status", str(grid)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2 and "the filesystem refuses file locks" in p.stderr and "Traceback" not in p.stderr, p.stderr
