"""Output paths: checked before any work starts, locked while a run writes them, and a
place to put the results when a final write fails anyway.

A run that trains for an hour and then dies on ``--json some/folder`` has lost the hour. So
every path a run will write (``--json``, ``--checkpoint`` or ``--resume``, ``--plot``) is
checked before the data loads: it is not a folder (or, for ``--plot``, not a file), no part
of its parent is a regular file, and a temporary file can be created beside it (or in the
nearest folder that exists, which the run would create the rest under). That last probe is
what catches a read-only folder, ``/proc`` or a full disk; permission bits alone do not
(root may write anywhere the file system lets it).

Two runs writing the same path would overwrite each other's results, so each path is
locked for the whole run: an OS lock (``fcntl.flock``) on ``.NAME.lock`` beside it. The OS
drops the lock when the process ends however it ends (a crash, ``kill -9``), so a stale lock
never blocks the next run. A second run asking for a locked path is refused, naming it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from train.config import ConfigError


class OutputError(ConfigError):
    """An output path that cannot be written, or one another run is writing."""


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (as a file or a folder)."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or ".")


def _probe_folder(folder: Path, flag: str, shown: Path) -> None:
    """Raise :class:`OutputError` unless a file can be created in ``folder`` (or, when it
    does not exist yet, in the nearest folder above it, where the run would create it)."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputError(
            f"{flag} {shown}: {existing} is a file, not a folder; name a path in a folder"
        )
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".probe."):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise OutputError(
            f"{flag} {shown}: cannot write in {existing} ({reason}); name a "
            "path in a folder you can write to"
        ) from None


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """The output file ``path`` as a :class:`Path`, once it is known to be writable.

    Raises :class:`OutputError` (one line, naming ``flag``) when it is a folder, lies under
    a regular file, or its folder cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(
            f"{flag} {path} is a folder; name a file (e.g. {path / 'out'}"
            f"{'.json' if 'json' in flag else '.pt'})"
        )
    if str(path).endswith(os.sep) or not path.name:
        raise OutputError(f"{flag} {path} names no file; add a file name")
    _probe_folder(path.parent, flag, path)
    return path


def check_output_folder(path: str | os.PathLike, flag: str) -> Path:
    """The output folder ``path``, once it is known to be a folder (or creatable) that can
    be written. Raises :class:`OutputError` otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file; name a folder (it is created if missing)")
    _probe_folder(path, flag, path)
    return path


def lock_path(path: Path) -> Path:
    """The lock file that guards ``path``: ``.NAME.lock`` in the same folder."""
    return path.with_name(f".{path.name}.lock")


class OutputLocks:
    """Exclusive locks on the paths a run writes, held until :meth:`release` (or the
    process ends). Use as a context manager."""

    def __init__(self) -> None:
        self._held: list[tuple[Path, int]] = []

    def acquire(self, path: str | os.PathLike, flag: str) -> None:
        """Lock ``path`` for this process; raise :class:`OutputError` when another process
        holds it. Creates the path's folder (the check before said it can)."""
        path = Path(path)
        if any(held == path for held, _ in self._held):
            return
        lock = lock_path(path)
        lock.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputError(
                        f"{flag} {path}: cannot lock {lock} ({error.strerror})"
                    ) from None
                owner = _read_owner(lock)
                raise OutputError(
                    f"{flag} {path} is being written by another run"
                    f"{owner}; wait for it, or name another path"
                ) from None
            # The holder before us may have removed the file between our open and our lock:
            # then we hold a lock on a name no one else sees. Retry on the current file.
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._held.append((path, fd))

    def release(self) -> None:
        """Remove the lock files and unlock (in that order: a waiting run that opened the
        old file notices it was removed and retries on a new one)."""
        while self._held:
            path, fd = self._held.pop()
            with contextlib.suppress(OSError):
                os.unlink(lock_path(path))
            os.close(fd)

    def __enter__(self) -> OutputLocks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_owner(lock: Path) -> str:
    """`` (process N)`` from the lock file, when it says."""
    try:
        pid = lock.read_text().strip()
    except OSError:
        return ""
    return f" (process {pid})" if pid.isdigit() else ""


def claim_outputs(
    locks: OutputLocks,
    json_path: str | None,
    plot_dir: str | None,
    checkpoints: Sequence[Path | None],
    checkpoint_flag: str,
) -> None:
    """Check every output path a run writes, then lock each one (checking all before
    locking any, so that a bad path is reported as such). Raises :class:`OutputError`."""
    files = [(Path(json_path), "--json")] if json_path else []
    files += [(path, checkpoint_flag) for path in checkpoints if path is not None]
    for path, flag in files:
        check_output_file(path, flag)
    if plot_dir:
        check_output_folder(plot_dir, "--plot")
        files.append((Path(plot_dir), "--plot"))
    for path, flag in files:
        locks.acquire(path, flag)


def fallback_path(kind: str = "results") -> Path:
    """A file in the system's temporary folder (``$TMPDIR``, else ``/tmp``) that nothing
    else writes: where results go when the path the user gave fails at the end."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / f"resnet9-{kind}-{stamp}-{os.getpid()}.json"


def write_fallback(record: dict[str, Any], kind: str = "results") -> Path:
    """Write ``record`` as JSON to :func:`fallback_path` and return where it went."""
    path = fallback_path(kind)
    with open(path, "w") as handle:  # a fresh name: nothing to write atomically over
        json.dump(record, handle, indent=2, default=str)
    return path
