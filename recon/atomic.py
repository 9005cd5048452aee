"""Atomic file output: write to a temporary name in the same folder, then rename.

A killed process therefore never leaves a file under its final name that looks complete (the next writer
that takes recon.lock removes the temporary names it left). A failed write removes its temporary file and
raises OSError naming the final path (`.filename`) and what failed (`.action`, e.g. "cannot write");
`describe_os_error` turns any OSError into the one-line message the CLI prints.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import traceback
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from depth.errors import DepthError
from recon.errors import ReconError
from splat.errors import SplatError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it to `path`, on error delete it.

    `suffix` defaults to the final suffix of `path` so that libraries that pick a format from the
    extension (PNG writers, open3d, PyAV) still see it. Errors: see module docstring.
    """
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp" + suffix, dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; finished files get the usual permissions
    except OSError as e:
        raise _write_error(e, None, path) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as e:
        full = _disk_full(e, path)  # before removing the temporary file frees the space
        _close_writers(e)
        tmp_path.unlink(missing_ok=True)
        if isinstance(e, OSError):
            _write_error(e, tmp_path, path)
            raise
        if full is not None:
            raise full from e
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success replace `path` with it. Errors: see module doc."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_UMASK)
    except OSError as e:
        raise _write_error(e, None, path) from None
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        full = _disk_full(e, path)
        _close_writers(e)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            _write_error(e, tmp, path)
            raise
        if full is not None:
            raise full from e
        raise


def _close_writers(e: BaseException) -> None:
    """Drop the locals of the finished frames of a failed write (a library's open writer, e.g. torch.save's),
    so that its file is closed now and the space of the deleted temporary file is freed at once (a full disk
    must have room again for the manifest's "failed")."""
    if isinstance(e, Exception):
        traceback.clear_frames(e.__traceback__)
        if isinstance(e.__cause__ or e.__context__, BaseException):
            traceback.clear_frames((e.__cause__ or e.__context__).__traceback__)  # type: ignore[union-attr]


def _write_error(e: OSError, tmp: Path | None, path: Path) -> OSError:
    """`e` naming the final `path` (or the file under it) instead of the temporary name, action "cannot write".

    An error about another file (an input read inside the block) keeps its own name and action.
    """
    name = os.fsdecode(e.filename) if isinstance(e.filename, (str, bytes)) else None
    if name is None or tmp is None or name == str(path):
        e.filename = str(path)
    elif name == str(tmp) or name.startswith(str(tmp) + os.sep):
        e.filename = str(path) + name[len(str(tmp)) :]
    else:
        return e
    e.filename2 = None
    if not getattr(e, "action", None):
        e.action = "cannot write"  # type: ignore[attr-defined]
    return e


def _disk_full(e: BaseException, path: Path) -> OSError | None:
    """ENOSPC naming `path` when a writer library failed with a non-OSError (e.g. torch.save's RuntimeError) on a
    full disk; the project's own one-line errors (ReconError, DepthError, SplatError) stay what they are."""
    if isinstance(e, (OSError, ReconError, DepthError, SplatError)) or not isinstance(e, Exception):
        return None
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return None
    if st.f_bavail * st.f_frsize >= DISK_FULL_BYTES:
        return None
    err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    err.action = "cannot write"  # type: ignore[attr-defined]
    return err


DISK_FULL_BYTES = 1 << 20
"""A writer that fails with less free space than this in its folder is reported as out of space."""


def describe_os_error(e: OSError) -> str:
    """One line `<what> <path>: <cause>`, e.g. `cannot write RUN/depth/aligned.npz: No space left on device`."""
    action = getattr(e, "action", None) or "cannot access"
    cause = e.strerror or str(e) or type(e).__name__
    name = e.filename if e.filename is not None else e.filename2
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if name is None or isinstance(name, int):
        return f"{action}: {cause}" if getattr(e, "action", None) else cause
    return f"{action} {name}: {cause}"


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Write `obj` as JSON atomically (numpy scalars/arrays converted to Python)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=_json_default) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_npz(path: str | os.PathLike, compressed: bool = True, **arrays: Any) -> None:
    """np.savez(_compressed) atomically; `path` should end in .npz (no pickled object arrays)."""
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
        zf = zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED)
        try:
            for key, value in arrays.items():
                with zf.open(key + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
        except BaseException:
            # finish the doomed archive now, while its file is open: otherwise ZipFile.__del__ does it later
            # on the closed file and prints "Exception ignored ... seek of closed file" after our error line
            with contextlib.suppress(Exception):
                zf.close()
            raise
        zf.close()


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
