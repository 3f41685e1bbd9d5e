"""CIFAR-10 from the official binary release: the public entry points.

:func:`load_cifar10` finds the data set, downloads it when it is missing, reads it and
returns a :class:`Cifar10`. The work is split by job:

* :mod:`train.cifar_format`: what the release is (file names, record layout, the official
  URL and md5) and the :class:`DataError` / :class:`DataNotice` raised about it;
* :mod:`train.cifar_reader`: reading and validating the archive or an unpacked folder, and
  decoding the records;
* :mod:`train.download`: downloading the archive safely (:func:`download_archive`);
* this module: the :class:`Cifar10` record, locating the data, and :func:`load_cifar10`.

The public names (``__all__``) are importable from here, which is where the rest of the
project imports them from.

Where the data is looked for (:func:`resolve_data_dir`): an explicit ``data_dir`` (the CLI's
``--data-dir``), else the ``CIFAR10_DIR`` environment variable, else a per-user cache,
``$XDG_CACHE_HOME/resnet9-speedrun/cifar10`` (``~/.cache/...`` without XDG_CACHE_HOME). That
location may be the archive itself, a folder holding the archive, a folder holding
``cifar-10-batches-bin/``, or that ``cifar-10-batches-bin`` folder itself. When a folder holds
both the archive and the unpacked folder, the archive wins: only it can be checked against
the official md5.

Design choices:

* A copy whose md5 is not the official one still loads, but :func:`load_cifar10` emits one
  :class:`DataNotice` warning (``warnings.warn``; one line; the CLI records and prints it)
  saying its accuracy is not comparable with published figures. An unpacked folder has no
  archive md5, so it loads with ``md5=None, official=None`` and no notice. The comparison
  with :data:`OFFICIAL_MD5` is made here, next to the notice it decides.
* Advice on a bad archive depends on whose file it is: one in the trainer's own cache (or
  just downloaded) may be deleted and downloaded again; one the user pointed at
  (``--data-dir``, ``CIFAR10_DIR``) is theirs, so the message only says what to point at.
* A symbolic link loop on the way to the data is named as such (``Path.exists`` would call
  it missing, and a download would replace the link).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from train.cifar_format import (
    ARCHIVE_NAME,
    BATCH_FILES,
    DEFAULT_CLASSES,
    ENV_VAR,
    FOLDER_NAME,
    OFFICIAL_MD5,
    OFFICIAL_URL,
    DataError,
    DataNotice,
    link_loop_message,
)
from train.cifar_reader import REDOWNLOAD, Decoded, read_archive, read_folder
from train.download import DOWNLOAD_TIMEOUT_S, download_archive, log_stderr

__all__ = [
    "ARCHIVE_NAME",
    "BATCH_FILES",
    "DEFAULT_CLASSES",
    "ENV_VAR",
    "FOLDER_NAME",
    "OFFICIAL_MD5",
    "OFFICIAL_URL",
    "Cifar10",
    "DataError",
    "DataNotice",
    "default_cache_dir",
    "download_archive",
    "load_cifar10",
    "resolve_data_dir",
]

# The origin named in messages about the default location; a bad archive there is the
# trainer's own download, so it may be deleted and fetched again (see _archive_fix).
_CACHE_ORIGIN = "the default cache folder"


# --- the data set ---------------------------------------------------------------------------


@dataclass
class Cifar10:
    """CIFAR-10 in memory, as loaded by :func:`load_cifar10`.

    Attributes:
        train_images: uint8 tensor (50000, 3, 32, 32), contiguous, channels R, G, B, values
            0–255, in the order of data_batch_1 … data_batch_5.
        train_labels: int64 tensor (50000,), values 0–9, indices into ``classes``.
        test_images: uint8 tensor (10000, 3, 32, 32), contiguous, the order of test_batch.
        test_labels: int64 tensor (10000,), values 0–9.
        classes: the 10 class names (from batches.meta.txt, else the standard names).
        source: the archive or folder the data was read from.
        md5: the archive's md5 (hex), or None when read from an unpacked folder.
        official: whether ``md5`` is the official release's; None when unknown (a folder).
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    source: str
    md5: str | None = None
    official: bool | None = None

    def to(self, device: torch.device | str) -> Cifar10:
        """A copy with the four tensors on ``device`` (the rest shared).

        The copies to an accelerator are issued with ``non_blocking=True``: asynchronous when
        the tensors are in pinned memory, an ordinary copy otherwise. Copies back to the CPU
        are blocking, because a non-blocking device-to-host copy may be read before it lands.
        """
        device = torch.device(device)
        non_blocking = device.type != "cpu"

        def move(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(device, non_blocking=non_blocking)

        return dataclasses.replace(
            self,
            train_images=move(self.train_images),
            train_labels=move(self.train_labels),
            test_images=move(self.test_images),
            test_labels=move(self.test_labels),
            classes=list(self.classes),
        )

    def subset(self, train_n: int | None = None, test_n: int | None = None) -> Cifar10:
        """The first ``train_n`` training and first ``test_n`` test images (None: all).

        The tensors of the result are views of this object's (slicing the first dimension
        keeps them contiguous). Raises DataError unless 1 ≤ N ≤ the number available.
        """
        train_count = _subset_count("train", train_n, self.train_images.shape[0])
        test_count = _subset_count("test", test_n, self.test_images.shape[0])
        return dataclasses.replace(
            self,
            train_images=self.train_images[:train_count],
            train_labels=self.train_labels[:train_count],
            test_images=self.test_images[:test_count],
            test_labels=self.test_labels[:test_count],
            classes=list(self.classes),
        )


def _subset_count(split: str, n: int | None, available: int) -> int:
    if n is None:
        return available
    # bool is an int subclass; True as "1 image" would be a silent mistake.
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise DataError(f"--{split}-subset must be a whole number of images, got {n!r}")
    if not 1 <= n <= available:
        raise DataError(
            f"--{split}-subset {n:,} is out of range: the {split} set has "
            f"{available:,} images; use 1 to {available:,} (or leave it out for all)"
        )
    return int(n)


# --- where the data lives -------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/resnet9-speedrun/cifar10``, else ``~/.cache/resnet9-speedrun/cifar10``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "resnet9-speedrun" / "cifar10"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where to look for CIFAR-10: ``data_dir``, else ``$CIFAR10_DIR``, else the user cache.

    The result may name a folder or the archive itself; it need not exist yet. An empty
    string counts as not given (``CIFAR10_DIR=`` should not mean the current folder).
    """
    return _resolve(data_dir)[0]


def _resolve(data_dir: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """The location and where it came from, in the user's terms (for error messages)."""
    if data_dir is not None and os.fspath(data_dir) != "":
        return Path(data_dir).expanduser().absolute(), "--data-dir"
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env).expanduser().absolute(), f"the {ENV_VAR} environment variable"
    return default_cache_dir().absolute(), _CACHE_ORIGIN


def _looks_like_archive_name(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz"))


def _probe(path: Path, origin: str) -> os.stat_result | None:
    """``os.stat(path)`` (links followed), or None when nothing is there.

    Unlike ``Path.exists`` / ``is_file``, which answer False for a symbolic link loop (so a
    loop would look like a missing data set, and a download would replace the link), a loop
    or an unreadable path is a :class:`DataError` naming it.
    """
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise DataError(link_loop_message(path, origin)) from None
        raise DataError(f"cannot read {path} (from {origin}): {error.strerror or error}") from None


def _locate(root: Path, origin: str) -> tuple[str, Path] | None:
    """``("archive", file)`` or ``("folder", batches folder)`` for what is at ``root``, or None.

    Raises DataError for a symbolic link loop (or an unreadable path) on the way.
    """
    found = _probe(root, origin)
    if found is None:
        return None
    if stat.S_ISREG(found.st_mode):
        return "archive", root
    if not stat.S_ISDIR(found.st_mode):
        return None
    archive = _probe(root / ARCHIVE_NAME, origin)
    if archive is not None and stat.S_ISREG(archive.st_mode):
        return "archive", root / ARCHIVE_NAME
    folder = _probe(root / FOLDER_NAME, origin)
    if folder is not None and stat.S_ISDIR(folder.st_mode):
        return "folder", root / FOLDER_NAME
    # The batches folder itself (also under another name, as long as it holds batch files;
    # a partial one is then reported file by file rather than downloaded over).
    if root.name == FOLDER_NAME or any(
        _probe(root / name, origin) is not None for name in BATCH_FILES
    ):
        return "folder", root
    return None


def _download_target(root: Path) -> Path:
    """Where a download for ``root`` goes: ``root`` itself if it names an archive file."""
    if not root.is_dir() and _looks_like_archive_name(root):
        return root
    return root / ARCHIVE_NAME


# --- loading --------------------------------------------------------------------------------


def load_cifar10(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    url: str = OFFICIAL_URL,
    expected_md5: str = OFFICIAL_MD5,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    log: Callable[[str], None] | None = log_stderr,
) -> Cifar10:
    """Load CIFAR-10 (downloading it first if it is missing and ``download`` is true).

    Args:
        data_dir: the archive, a folder holding it, a folder holding cifar-10-batches-bin/,
            or that folder itself; None: ``$CIFAR10_DIR``, else the per-user cache.
        download: whether a missing data set may be downloaded (into the resolved location).
        url: where to download from (a ``file://`` URL works too).
        expected_md5: the md5 a download must have (the official one by default).
        timeout: seconds a download may stall before it is abandoned.
        log: receives the download's progress lines (stderr by default; None: silent).

    Returns:
        The data set on the CPU (see :class:`Cifar10` for shapes and dtypes).

    Raises:
        DataError: missing and not downloadable, unreadable, or not CIFAR-10.

    Warns:
        DataNotice: once, when the archive's md5 is not the official release's.
    """
    root, origin = _resolve(data_dir)
    found = _locate(root, origin)
    downloaded = False
    if found is None:
        target = _download_target(root)
        where = (
            f"Put {ARCHIVE_NAME} (from {url}) at {target}, or point --data-dir or the "
            f"{ENV_VAR} environment variable at a folder that holds it or holds "
            f"{FOLDER_NAME}/."
        )
        if not download:
            raise DataError(
                f"CIFAR-10 is not at {root} (from {origin}) and downloading is "
                f"off (--no-download). {where}"
            )
        download_archive(
            target,
            url=url,
            expected_md5=expected_md5,
            timeout=timeout,
            log=log,
            missing_at=f"{root} (from {origin})",
        )
        found, downloaded = ("archive", target), True
    kind, path = found
    if kind == "archive":
        data = _record(read_archive(path, _archive_fix(origin, own=downloaded)))
    else:
        data = _record(read_folder(path, origin))
    if data.official is False:
        warnings.warn(
            DataNotice(
                f"{path} has md5 {data.md5}, not the official release's {OFFICIAL_MD5}: this "
                "copy is not byte-identical to the official CIFAR-10, so accuracy measured on it "
                "is not comparable with published figures"
            ),
            stacklevel=2,
        )
    return data


def _archive_fix(origin: str, *, own: bool) -> str:
    """What to do about a bad archive found through ``origin``: fetch it again when it is
    the trainer's own download (``own``, or anything in its cache folder); otherwise the
    file is the user's, so only say what to point at, never to delete or replace it."""
    if own or origin == _CACHE_ORIGIN:
        return REDOWNLOAD
    return (
        f"point {origin} at a complete copy of {ARCHIVE_NAME} ({OFFICIAL_URL}) or a "
        "folder that holds it"
    )


def _record(decoded: Decoded) -> Cifar10:
    """The :class:`Cifar10` for what a reader decoded, with its provenance judged: an
    archive's md5 is official or not; a folder has no md5, so that stays unknown."""
    official = None if decoded.md5 is None else decoded.md5 == OFFICIAL_MD5
    return Cifar10(
        train_images=decoded.train_images,
        train_labels=decoded.train_labels,
        test_images=decoded.test_images,
        test_labels=decoded.test_labels,
        classes=decoded.classes,
        source=str(decoded.source),
        md5=decoded.md5,
        official=official,
    )
