"""Downloading the CIFAR-10 archive: streamed, md5-checked, and never left half-done.

A missing data set is downloaded (unless ``download=False``) into the resolved location:
streamed into a temporary file in the same folder, md5-checked, then renamed into place with
``os.replace``, so an interrupted or corrupt download never leaves a file that looks like the
archive, nor the folders it created for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from train.cifar_format import ARCHIVE_NAME, ENV_VAR, OFFICIAL_MD5, OFFICIAL_URL, DataError

__all__ = ["DOWNLOAD_TIMEOUT_S", "download_archive", "log_stderr"]

DOWNLOAD_TIMEOUT_S = 60.0


def log_stderr(message: str) -> None:
    """The default ``log`` of the loaders: one progress line on stderr, flushed at once."""
    print(message, file=sys.stderr, flush=True)


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the ones created here, outermost
    first (a folder that appears meanwhile, made by someone else, is not counted). On an
    error, what was created is removed again before it propagates."""
    missing: list[Path] = []
    current = folder
    while not os.path.lexists(current) and current.parent != current:
        missing.append(current)
        current = current.parent
    created: list[Path] = []
    try:
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                continue
            created.append(path)
    except BaseException:
        _remove_folders(created)
        raise
    return created


def _remove_folders(created: list[Path]) -> None:
    """Remove the folders :func:`_make_folders` created, innermost first, as long as they
    are empty (``os.rmdir`` never removes anything else); stop at the first that is not."""
    for path in reversed(created):
        try:
            os.rmdir(path)
        except OSError:
            return


def download_archive(
    dest: str | os.PathLike[str],
    *,
    url: str = OFFICIAL_URL,
    expected_md5: str | None = OFFICIAL_MD5,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    log: Callable[[str], None] | None = log_stderr,
    missing_at: str | None = None,
) -> Path:
    """Download ``url`` to ``dest`` safely; returns ``dest``.

    The bytes go to a hidden temporary file in ``dest``'s folder (same file system, so the
    final ``os.replace`` is atomic), are hashed on the way, and are renamed into place only
    when complete and (if ``expected_md5`` is given) matching. On any failure, including
    Ctrl-C, the temporary file is removed, so nothing that looks like the archive is left,
    and so are the folders this call created for it (never one that was there before).

    Raises:
        DataError: no network / unreachable URL, folder not writable, incomplete transfer,
            or wrong md5; the message gives the exact path to put the archive at.
    """
    dest = Path(dest).expanduser().absolute()
    place = (
        f"download {ARCHIVE_NAME} yourself (from {url}) and put it at {dest}, or point "
        f"--data-dir or the {ENV_VAR} environment variable at a folder that holds it"
    )
    missing = f"CIFAR-10 is not at {missing_at}; " if missing_at else ""
    created: list[Path] = []
    try:
        created = _make_folders(dest.parent)
        fd, temp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as error:
        _remove_folders(created)
        raise DataError(
            f"{missing}cannot download it into {dest.parent} "
            f"({error.strerror or error}): {place} (a writable folder)"
        ) from error
    except BaseException:  # Ctrl-C between the two
        _remove_folders(created)
        raise
    temp = Path(temp_name)
    saved = False
    try:
        if log:
            log(f"downloading CIFAR-10 from {url} to {dest} ...")
        started = time.perf_counter()
        hasher = hashlib.md5()
        received = 0
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    expected_length = int(length) if length and length.isdigit() else None
                    while chunk := response.read(1 << 20):
                        hasher.update(chunk)
                        out.write(chunk)
                        received += len(chunk)
            except (
                urllib.error.URLError,
                http.client.HTTPException,
                TimeoutError,
                ConnectionError,
                ValueError,
            ) as error:
                reason = getattr(error, "reason", None) or error
                raise DataError(
                    f"{missing}downloading it from {url} failed ({reason}): {place}"
                ) from error
            if expected_length is not None and received != expected_length:
                raise DataError(
                    f"the download from {url} stopped after {received:,} of "
                    f"{expected_length:,} bytes; nothing was saved: try again, or "
                    f"{place}"
                )
            out.flush()
            os.fsync(out.fileno())  # the rename must not outlive the data after a crash
        digest = hasher.hexdigest()
        if expected_md5 and digest != expected_md5.lower():
            raise DataError(
                f"the download from {url} has md5 {digest}, not the expected "
                f"{expected_md5.lower()}: it is corrupt or not {ARCHIVE_NAME}; "
                f"nothing was saved: try again, or {place}"
            )
        os.replace(temp, dest)
        saved = True
    except OSError as error:  # disk full, folder removed, ... while writing
        raise DataError(
            f"{missing}saving the download to {dest} failed ({error.strerror or error}): {place}"
        ) from error
    finally:
        if not saved:  # whatever stopped it, DataError, Ctrl-C or anything else
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            _remove_folders(created)
    if log:
        log(
            f"downloaded {received / 2**20:.0f} MiB in {time.perf_counter() - started:.1f} s "
            f"(md5 {digest})"
        )
    return dest
