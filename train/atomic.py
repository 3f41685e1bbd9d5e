"""Writing a file so that a reader only ever sees the old contents or the complete new ones.

:func:`write_atomic` is the one way the trainer writes its outputs (checkpoints, the JSON
record): the bytes go to a temporary file ``.NAME.<8 random chars>.tmp`` beside the target,
are flushed to the disk, and the temporary file is then renamed over the target with
``os.replace`` (atomic on POSIX and Windows when both are on one file system, which a
sibling file always is).

* Any failure, ``KeyboardInterrupt`` included, removes the temporary file; only a killed
  process (SIGKILL, power loss) can leave one, and the next write of the same target
  removes those leftovers first (only names of exactly this pattern, for that target).
* The file is created with mode 0o666 less the process umask, as ``open`` would create it,
  not 0o600 as :mod:`tempfile` does, so a checkpoint or JSON is as readable as any other
  output.
* SIGINT and SIGTERM are held back while the write runs (:func:`deferred_signals`) and
  delivered, in order, to the handlers that were in place once the target is complete: a
  Ctrl-C in the middle of a save cannot tear a library's writer apart (torch's zip writer
  turns an exception raised in its write callback into a long ``RuntimeError``), and it
  still has its usual effect a moment later.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import string
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "DEFERRED_SIGNALS",
    "deferred_signals",
    "remove_stale_temporaries",
    "temporary_name",
    "write_atomic",
]

#: The signals a write holds back (SIGTERM exists on Windows too, as far as Python goes).
DEFERRED_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)

# The random part of a temporary name: the alphabet and length tempfile uses, so that files
# left by earlier versions of the trainer (which used tempfile) are recognised as ours too.
_ALPHABET = string.ascii_lowercase + string.digits + "_"
_RANDOM_LENGTH = 8


def temporary_name(target_name: str) -> str:
    """A fresh temporary file name for ``target_name``: ``.NAME.<8 random chars>.tmp``."""
    token = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LENGTH))
    return f".{target_name}.{token}.tmp"


def _is_temporary_of(entry: str, target_name: str) -> bool:
    """Whether ``entry`` is a name :func:`temporary_name` gives for ``target_name``."""
    pattern = rf"\.{re.escape(target_name)}\.[{re.escape(_ALPHABET)}]{{{_RANDOM_LENGTH}}}\.tmp"
    return re.fullmatch(pattern, entry) is not None


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files an interrupted write of ``path`` left beside it.

    Only names of our own pattern for this target (``.NAME.<8 chars>.tmp``) are touched,
    and never folders. Best effort: a file that cannot be removed is left where it is.
    Returns the files removed.

    Two processes writing the *same* target at the same moment would remove each other's
    temporary file (the later rename then fails); the trainer never does that (one
    checkpoint per run, the JSON written by rank 0 alone).
    """
    path = Path(path)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        if not _is_temporary_of(entry.name, path.name):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                continue
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def deferred_signals(signals: Sequence[int] = DEFERRED_SIGNALS) -> Iterator[list[int]]:
    """Hold back ``signals`` while inside; on leaving, put the previous handlers back and
    deliver the signals that arrived, in order, to them.

    Delivering means raising the signal again (``signal.raise_signal``), so the effect is
    exactly the one it would have had a moment earlier: a Python handler runs (e.g. the
    trainer's stop request, or ``KeyboardInterrupt`` from the default SIGINT handler), a
    default SIGTERM ends the process, an ignored signal stays ignored.

    Works at the Python level (a handler that records) rather than with
    ``pthread_sigmask``: a mask covers the calling thread only, and the kernel then hands a
    process-directed signal to any other thread (OpenMP workers, ...), whose C-level
    handler would still schedule the Python one in the main thread mid-write.

    Outside the main thread, where Python cannot install handlers, nothing is deferred.
    Yields the list of signals received so far (for tests and callers that want to know).
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def record(signum: int, frame: object) -> None:
        received.append(signum)

    previous: dict[int, object] = {}
    try:
        for number in signals:
            previous[number] = signal.signal(number, record)
        yield received
    finally:
        for number, old in previous.items():
            # None: a handler installed outside Python, which cannot be put back; the
            # default action is the closest.
            signal.signal(number, signal.SIG_DFL if old is None else old)
        for number in received:
            # Runs the restored handler now; an exception it raises (KeyboardInterrupt)
            # propagates from here, after the write is complete or cleaned up.
            signal.raise_signal(number)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` atomically: ``write(handle)`` fills a temporary file beside it, which
    is flushed, fsynced and renamed over ``path``. Returns ``path``.

    ``path`` holds the previous contents or the complete new ones, never a half-written
    file, whatever interrupts the write (an exception, Ctrl-C, a full disk). The temporary
    file is removed on any failure; stale ones of earlier killed writes are removed first.
    SIGINT / SIGTERM arriving meanwhile take effect once the write is over (see
    :func:`deferred_signals`). The parent folder is created when missing. Errors of
    ``write`` and of the file system propagate unchanged.
    """
    path = Path(path)
    with deferred_signals():
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        temporary, descriptor = _create_temporary(path)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())  # the data reaches the disk before the rename
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _sync_folder(path.parent)
    return path


def _create_temporary(path: Path) -> tuple[Path, int]:
    """Create a new temporary file for ``path`` (exclusively; a few tries on a name clash)
    with mode 0o666 less the umask; return its path and an open write descriptor."""
    flags = (
        os.O_WRONLY
        | os.O_CREAT
        | os.O_EXCL
        | getattr(os, "O_BINARY", 0)
        | getattr(os, "O_CLOEXEC", 0)
    )
    for _ in range(100):
        temporary = path.parent / temporary_name(path.name)
        try:
            return temporary, os.open(temporary, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name beside {path}")


def _sync_folder(folder: Path) -> None:
    """fsync the folder so that the rename itself survives a crash (POSIX; best effort:
    some systems and file systems cannot open or sync a folder)."""
    with contextlib.suppress(OSError, AttributeError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
