"""One writer per run directory: an OS-level lock on RUN/.lock.

Every command that writes into RUN holds `run_lock(RUN)` while it does; a second writer fails at once with
`RUN is in use by process PID since TIME` before it changes any file. The lock is `fcntl.flock` on RUN/.lock,
so the OS releases it when the holder dies, however it dies (SIGKILL included); the file holds the holder's
PID and start time for that message. Taking the lock is re-entrant within a process (the CLI takes it around
building the config and the pipeline takes it again). The first acquisition removes the temporary files a
killed writer may have left (recon.atomic's `.name.XXXXXXXX.tmp*` files and dirs, `.name.old` dirs).
Readers take no lock.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from recon.errors import ReconError

LOCK_NAME = ".lock"
# recon.atomic: mkstemp(prefix=".stem.", suffix=".tmp" + suffix) files, mkdtemp(prefix=".name.", suffix=".tmp")
# dirs and atomic_dir's ".name.old" dirs; tempfile's random part is 8 characters of [a-z0-9_].
_TMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")
_TMP_DIR = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
_OLD_DIR = re.compile(r"^\..+\.old$")

_held: dict[str, list[int]] = {}  # resolved RUN -> [lock file descriptor, depth]


def _holder(lock: Path) -> tuple[int, str] | None:
    """(pid, start time) written in RUN/.lock by a live process, or None when it names none (yet)."""
    try:
        pid_text, since = lock.read_text().split(maxsplit=1)
        pid = int(pid_text)
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by another user
    except (OSError, ValueError):
        return None
    return pid, since.strip()


def _refuse(root: Path, lock: Path) -> ReconError:
    """The one-line error for a run directory held by another process."""
    who = None
    for _ in range(50):  # the holder writes its PID just after taking the lock
        who = _holder(lock)
        if who is not None:
            break
        time.sleep(0.01)
    if who is None:
        return ReconError(f"{root} is in use by another process")
    return ReconError(f"{root} is in use by process {who[0]} since {who[1]}")


def clean_temporaries(root: Path) -> list[Path]:
    """Remove the temporary files and dirs of recon.atomic left inside `root` by a killed writer.

    Only those name patterns, only real files/dirs (symlinks are left alone). Returns what was removed.
    """
    removed: list[Path] = []
    for folder, dirs, files in os.walk(root):
        base = Path(folder)
        for name in list(dirs):
            p = base / name
            if (_TMP_DIR.match(name) or _OLD_DIR.match(name)) and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                dirs.remove(name)
                removed.append(p)
        for name in files:
            p = base / name
            if _TMP_FILE.match(name) and not p.is_symlink():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _acquire(root: Path, name: str = LOCK_NAME) -> tuple[int, bool]:
    """Open and flock RUN/`name` (creating RUN); returns (descriptor, whether RUN was created)."""
    if root.exists() and not root.is_dir():
        raise _os_error(errno.ENOTDIR, root, "cannot use run directory")
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        e.action = "cannot create run directory"  # type: ignore[attr-defined]
        raise
    lock = root / name
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        e.action = "cannot open lock file"  # type: ignore[attr-defined]
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _refuse(root, lock) from None
    except OSError as e:
        os.close(fd)
        e.action = "cannot lock"  # type: ignore[attr-defined]
        e.filename = str(lock)
        raise
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {_dt.datetime.now().isoformat(timespec='seconds')}\n".encode())
    except OSError as e:
        _release(root, fd, created)
        e.action, e.filename = "cannot write", str(lock)  # type: ignore[attr-defined]
        raise
    return fd, created


def _os_error(code: int, path: Path, action: str) -> OSError:
    e = OSError(code, os.strerror(code), str(path))
    e.action = action  # type: ignore[attr-defined]
    return e


def _release(root: Path, fd: int, created: bool, name: str = LOCK_NAME) -> None:
    """Unlock; a RUN this lock created and nothing else wrote into is removed again (while still locked)."""
    try:
        if created and [p.name for p in root.iterdir()] == [name]:
            (root / name).unlink()
            root.rmdir()
    except OSError:
        pass
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


@contextlib.contextmanager
def run_lock(root: str | os.PathLike) -> Iterator[Path]:
    """Hold the writer lock of run directory `root` (created if missing) for the duration of the block.

    Raises ReconError `ROOT is in use by process PID since TIME` at once when another process holds it,
    OSError (with `.action`, `.filename`) when ROOT cannot be created or locked.
    """
    root = Path(root)
    key = str(root.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield root
        finally:
            _held[key][1] -= 1
        return
    fd, created = _acquire(root)
    _held[key] = [fd, 1]
    try:
        clean_temporaries(root)
        yield root
    finally:
        del _held[key]
        _release(root, fd, created)


BATCH_LOCK_NAME = ".batch.lock"


@contextlib.contextmanager
def batch_lock(root: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of batch folder `root` (DIR/.batch.lock; created if missing): one `recon batch` per DIR, so
    batch.json has one writer. A second batch fails at once with `ROOT is in use by process PID since TIME`.
    Unlike run_lock it removes no temporaries: the scene runs inside DIR have their own locks and writers."""
    root = Path(root)
    fd, created = _acquire(root, BATCH_LOCK_NAME)
    try:
        yield root
    finally:
        _release(root, fd, created, BATCH_LOCK_NAME)


def is_held(root: str | os.PathLike) -> bool:
    """Whether this process holds the lock of `root`."""
    return str(Path(root).resolve()) in _held
