"""Files surgeon writes: temporary files beside their target (complete, synced and with the usual
permissions before they are renamed into place), stale temporary files of crashed runs, and
operating-system errors turned into one line naming the path."""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from surgeon.errors import SaveError, UsageError, short_error

log = logging.getLogger(__name__)

TMP_PREFIX = ".surgeon-tmp-"
"""Every temporary file surgeon writes is named ``.surgeon-tmp-<pid>-<random>.tmp``."""
STALE_SECONDS = 3600
_TMP_RE = re.compile(re.escape(TMP_PREFIX) + r"(\d+)-")


_STOP = threading.Event()


def stop_commits() -> None:
    """From now on, no save of this process commits: the next commit point raises
    KeyboardInterrupt instead (its new files removed). A many-models worker calls it when its
    parent stops the run (a signal) or dies, so nothing is committed after that."""
    _STOP.set()


def check_commit_allowed() -> None:
    """Raise KeyboardInterrupt when :func:`stop_commits` was called: the commit point of every save."""
    if _STOP.is_set():
        raise KeyboardInterrupt


def current_umask() -> int:
    """The process umask, read without changing it where the platform allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # no /proc: the only portable way, briefly set to a sane value
    os.umask(old)
    return old


def save_error(path: Path, exc: OSError) -> SaveError:
    """``<path>: <cause>`` for an OSError met while writing ``path``."""
    where = exc.filename if isinstance(exc.filename, str) and not _is_tmp(exc.filename) else str(path)
    err = SaveError(f"{where}: {exc.strerror or short_error(exc)}")
    err.errno, err.path = exc.errno, where  # (filename/strerror would change str(err))
    return err


def _is_tmp(name: str) -> bool:
    return os.path.basename(name).startswith(TMP_PREFIX)


@contextmanager
def atomic_file(path: Path) -> Iterator[tuple[BinaryIO, Path]]:
    """A temporary file beside ``path``. When the body returns it is complete, synced to disk and
    has the permissions ``open()`` would give (``0o666 & ~umask``); the caller renames it. When the
    body fails it is removed, and an OSError becomes a :class:`SaveError` naming ``path``."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise save_error(path.parent, exc) from None
    tmp_path = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp_path
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            os.fsync(f.fileno())
    except SaveError:
        tmp_path.unlink(missing_ok=True)
        raise
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise save_error(path, exc) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def replace(tmp: Path, final: Path) -> None:
    try:
        os.replace(tmp, final)
    except OSError as exc:
        raise save_error(final, exc) from None


def sync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` durable (where the platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a small file (a report) atomically; never over a device, FIFO, socket or folder."""
    check_target(path, str(path))
    remove_stale_temps(path.parent)
    with atomic_file(path) as (f, tmp):
        f.write(data)
    try:
        check_commit_allowed()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    replace(tmp, path)


def fresh_name(folder: Path, location: str) -> str:
    """``location`` with 8 random hex digits before its suffix, naming no file in ``folder``."""
    p = PurePosixPath(location)
    while True:
        name = f"{p.stem}.{secrets.token_hex(4)}{p.suffix}" if p.suffix else f"{p.name}.{secrets.token_hex(4)}"
        candidate = str(p.with_name(name))
        if not os.path.lexists(folder / candidate):
            return candidate


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's live process (or a pid we cannot check): leave it
    return True


def remove_stale_temps(folder: Path, now: float | None = None) -> list[Path]:
    """Remove surgeon's temporary files in ``folder`` left by runs that died: older than an hour
    and named after a process that no longer exists. Returns the files removed."""
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if not m or not entry.is_file(follow_symlinks=False):
            continue
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_SECONDS
            if old and not _pid_alive(int(m.group(1))):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError as exc:
            log.debug("cannot remove stale %s: %s", entry.path, exc)
    return removed


def check_writable_folder(path: Path, what: str) -> None:
    """The folder ``path`` will be written in exists and may be written (UsageError otherwise)."""
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"{what}: output folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{what}: output folder '{folder}' is not writable (permission denied)")
    if path.is_dir():
        raise UsageError(f"{what}: is a folder; give a file name")


FILE_KINDS = (
    # what an existing path is, when it is not a regular file (refused as a model and as an output)
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def check_target(path: Path, what: str) -> None:
    """One file surgeon will write: absent, a regular file, or a symlink (the write replaces the
    link, never what it points to); a folder, device, FIFO or socket is refused; its folder exists
    and is writable. ``what`` names it in messages (``--report r.json``, ``output m.onnx``)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise UsageError(f"{what}: cannot be written ({exc.strerror})") from None
    if st is not None and not stat.S_ISLNK(st.st_mode) and not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in FILE_KINDS if test(st.st_mode)), "not a regular file")
        raise UsageError(f"{what}: is {kind}; surgeon writes only regular files, refusing to replace it")
    check_writable_folder(path, what)
