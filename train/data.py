"""CIFAR-10 from the official binary release, read straight out of its archive.

The data set is the "CIFAR-10 binary version", ``cifar-10-binary.tar.gz``
(:data:`OFFICIAL_URL`, md5 :data:`OFFICIAL_MD5`). It unpacks to ``cifar-10-batches-bin/``:
``data_batch_1.bin`` … ``data_batch_5.bin`` (training) and ``test_batch.bin``, each exactly
10,000 records of 3,073 bytes (one label byte 0–9, then 3,072 pixel bytes: the red plane,
the green plane, the blue plane, each 32×32 row-major), plus ``batches.meta.txt`` (the class
names, one per line).

Where the data is looked for (:func:`resolve_data_dir`): an explicit ``data_dir`` (the CLI's
``--data-dir``), else the ``CIFAR10_DIR`` environment variable, else a per-user cache,
``$XDG_CACHE_HOME/resnet9-speedrun/cifar10`` (``~/.cache/...`` without XDG_CACHE_HOME). That
location may be the archive itself, a folder holding the archive, a folder holding
``cifar-10-batches-bin/``, or that ``cifar-10-batches-bin`` folder itself. When a folder holds
both the archive and the unpacked folder, the archive wins: only it can be checked against
the official md5.

Design choices:

* The archive is decompressed in memory and the batch files are decoded in place from the
  decompressed tar with ``numpy.frombuffer``: nothing is ever extracted (the data folder may
  be read-only, e.g. a shared copy), and there is no per-record Python loop. The archive's
  md5 is computed on a second thread while the main thread inflates it (both release the
  GIL), so provenance costs almost nothing. Reading the 170 MB archive takes 1.2–2 s (zlib
  inflate dominates; a plain tarfile + extractfile reader takes as long or longer).
* Nothing is ever unpickled (the binary release needs no pickle; the Python release, which
  does, is refused with a pointer to the binary one).
* Every file is validated before use (all six batch files, exact sizes, labels 0–9), and
  every failure is a :class:`DataError` whose message names the file, what is wrong and
  what to do, so the CLI can print it in one line without a traceback.
* A copy whose md5 is not the official one still loads, but :func:`load_cifar10` emits one
  :class:`DataNotice` warning (``warnings.warn``; one line; the CLI records and prints it)
  saying its accuracy is not comparable with published figures. An unpacked folder has no
  archive md5, so it loads with ``md5=None, official=None`` and no notice.
* A missing data set is downloaded (unless ``download=False``) into the resolved location:
  streamed into a temporary file in the same folder, md5-checked, then renamed into place
  with ``os.replace``, so an interrupted or corrupt download never leaves a file that looks
  like the archive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import io
import os
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "ARCHIVE_NAME", "BATCH_FILES", "DEFAULT_CLASSES", "ENV_VAR", "FOLDER_NAME", "OFFICIAL_MD5",
    "OFFICIAL_URL", "Cifar10", "DataError", "DataNotice", "default_cache_dir",
    "download_archive", "load_cifar10", "resolve_data_dir",
]

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
OFFICIAL_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
ARCHIVE_NAME = "cifar-10-binary.tar.gz"
FOLDER_NAME = "cifar-10-batches-bin"
META_FILE = "batches.meta.txt"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
BATCH_FILES = (*TRAIN_FILES, TEST_FILE)
ENV_VAR = "CIFAR10_DIR"
DEFAULT_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

RECORDS_PER_FILE = 10_000
IMAGE_SHAPE = (3, 32, 32)
IMAGE_BYTES = 3 * 32 * 32
RECORD_BYTES = 1 + IMAGE_BYTES                     # 3,073: label byte, then R, G, B planes
FILE_BYTES = RECORDS_PER_FILE * RECORD_BYTES       # 30,730,000
NUM_CLASSES = 10

DOWNLOAD_TIMEOUT_S = 60.0
# Guards against pointing the loader at some huge unrelated file (or a gzip bomb): the real
# archive is 170 MB and unpacks to 184 MB, so anything far beyond that is not CIFAR-10.
_MAX_ARCHIVE_BYTES = 512 * 2**20
_MAX_TAR_BYTES = 256 * 2**20
_GZIP_MAGIC = b"\x1f\x8b"
_REDOWNLOAD = "delete it and download again"


class DataError(RuntimeError):
    """The data set is missing, unreadable or not CIFAR-10. The message says what to do."""


class DataNotice(UserWarning):
    """A one-line note about the data that does not stop the run (e.g. a non-official copy)."""


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
            self, train_images=move(self.train_images), train_labels=move(self.train_labels),
            test_images=move(self.test_images), test_labels=move(self.test_labels),
            classes=list(self.classes))

    def subset(self, train_n: int | None = None, test_n: int | None = None) -> Cifar10:
        """The first ``train_n`` training and first ``test_n`` test images (None: all).

        The tensors of the result are views of this object's (slicing the first dimension
        keeps them contiguous). Raises DataError unless 1 ≤ N ≤ the number available.
        """
        train_count = _subset_count("train", train_n, self.train_images.shape[0])
        test_count = _subset_count("test", test_n, self.test_images.shape[0])
        return dataclasses.replace(
            self, train_images=self.train_images[:train_count],
            train_labels=self.train_labels[:train_count],
            test_images=self.test_images[:test_count], test_labels=self.test_labels[:test_count],
            classes=list(self.classes))


def _subset_count(split: str, n: int | None, available: int) -> int:
    if n is None:
        return available
    # bool is an int subclass; True as "1 image" would be a silent mistake.
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise DataError(f"--{split}-subset must be a whole number of images, got {n!r}")
    if not 1 <= n <= available:
        raise DataError(f"--{split}-subset {n:,} is out of range: the {split} set has "
                        f"{available:,} images; use 1 to {available:,} (or leave it out for all)")
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
    return default_cache_dir().absolute(), "the default cache folder"


def _looks_like_archive_name(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz"))


def _locate(root: Path) -> tuple[str, Path] | None:
    """``("archive", file)`` or ``("folder", batches folder)`` for what is at ``root``, or None."""
    if root.is_file():
        return "archive", root
    if not root.is_dir():
        return None
    if (root / ARCHIVE_NAME).is_file():
        return "archive", root / ARCHIVE_NAME
    if (root / FOLDER_NAME).is_dir():
        return "folder", root / FOLDER_NAME
    # The batches folder itself (also under another name, as long as it holds batch files;
    # a partial one is then reported file by file rather than downloaded over).
    if root.name == FOLDER_NAME or any((root / name).exists() for name in BATCH_FILES):
        return "folder", root
    return None


def _download_target(root: Path) -> Path:
    """Where a download for ``root`` goes: ``root`` itself if it names an archive file."""
    if not root.is_dir() and _looks_like_archive_name(root):
        return root
    return root / ARCHIVE_NAME


# --- loading --------------------------------------------------------------------------------

def load_cifar10(data_dir: str | os.PathLike[str] | None = None, *, download: bool = True,
                 url: str = OFFICIAL_URL, expected_md5: str = OFFICIAL_MD5,
                 timeout: float = DOWNLOAD_TIMEOUT_S,
                 log: Callable[[str], None] | None = _log_stderr) -> Cifar10:
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
    found = _locate(root)
    if found is None:
        target = _download_target(root)
        where = (f"Put {ARCHIVE_NAME} (from {url}) at {target}, or point --data-dir or the "
                 f"{ENV_VAR} environment variable at a folder that holds it or holds "
                 f"{FOLDER_NAME}/.")
        if not download:
            raise DataError(f"CIFAR-10 is not at {root} (from {origin}) and downloading is "
                            f"off (--no-download). {where}")
        download_archive(target, url=url, expected_md5=expected_md5, timeout=timeout,
                         log=log, missing_at=f"{root} (from {origin})")
        found = ("archive", target)
    kind, path = found
    data = _load_archive(path) if kind == "archive" else _load_folder(path)
    if data.official is False:
        warnings.warn(DataNotice(
            f"{path} has md5 {data.md5}, not the official release's {OFFICIAL_MD5}: this "
            "copy is not byte-identical to the official CIFAR-10, so accuracy measured on it is "
            "not comparable with published figures"), stacklevel=2)
    return data


def _load_archive(path: Path) -> Cifar10:
    """Decode the batch files straight out of the (gzipped) tar at ``path``."""
    try:
        size = path.stat().st_size
        if size > _MAX_ARCHIVE_BYTES:
            raise DataError(f"{path} is {size:,} bytes, far more than the CIFAR-10 archive "
                            f"(about 170 MB): it is not {ARCHIVE_NAME}")
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from error

    # md5 on a second thread while this one inflates: both hashlib and zlib release the GIL
    # on large buffers, so checking provenance adds almost nothing to the load time.
    digest: list[str] = []
    hasher = threading.Thread(target=lambda: digest.append(hashlib.md5(raw).hexdigest()),
                              name="cifar10-md5", daemon=True)
    hasher.start()
    try:
        tar_bytes = _gunzip(raw, path)
    finally:
        hasher.join()
    del raw   # drop the compressed copy before building the decoded arrays
    md5 = digest[0]

    members = _tar_members(tar_bytes, path)
    buffers: dict[str, memoryview] = {}
    for name in BATCH_FILES:
        info = members.get(name)
        if info is None:
            raise DataError(_missing_member_message(path, name, members))
        if info.size != FILE_BYTES:
            raise DataError(_size_message(name, info.size, f"in {path}",
                                          f"the archive is truncated or not CIFAR-10 — "
                                          f"{_REDOWNLOAD}"))
        buffers[name] = memoryview(tar_bytes)[info.offset_data:info.offset_data + info.size]
    meta = members.get(META_FILE)
    meta_text = (bytes(memoryview(tar_bytes)[meta.offset_data:meta.offset_data + meta.size])
                 if meta is not None else None)
    data = _decode(buffers, meta_text, source=path, fix=_REDOWNLOAD)
    data.md5, data.official = md5, md5 == OFFICIAL_MD5
    return data


def _gunzip(raw: bytes, path: Path) -> bytes:
    """The tar inside ``raw`` (gzip, possibly multi-member; a plain tar is passed through)."""
    if len(raw) == 0:
        raise DataError(f"{path} is empty (0 bytes): the download failed — {_REDOWNLOAD}")
    if raw[:2] != _GZIP_MAGIC:
        if raw[257:262] == b"ustar":   # an uncompressed tar (someone gunzipped it): fine
            return raw
        hint = (" (it looks like a web page, e.g. an error page saved in place of the archive)"
                if raw.lstrip()[:1] == b"<" else "")
        raise DataError(f"{path} is not a gzip file{hint}: it is not {ARCHIVE_NAME} or the "
                        f"download is corrupt — {_REDOWNLOAD}")
    parts: list[bytes] = []
    total = 0
    rest = raw
    try:
        while True:
            inflater = zlib.decompressobj(wbits=31)   # 31: expect a gzip header and trailer
            part = inflater.decompress(rest, _MAX_TAR_BYTES - total + 1)
            total += len(part)
            if total > _MAX_TAR_BYTES or inflater.unconsumed_tail:
                raise DataError(f"{path} unpacks to more than {_MAX_TAR_BYTES:,} bytes, far "
                                f"more than CIFAR-10 (184 MB): it is not {ARCHIVE_NAME}")
            parts.append(part)
            if not inflater.eof:
                raise DataError(f"{path} is truncated ({len(raw):,} bytes; the gzip stream "
                                f"ends early): the download was interrupted — {_REDOWNLOAD}")
            rest = inflater.unused_data
            # Like gzip itself, accept further gzip members and trailing zero padding.
            if not rest.strip(b"\0"):
                break
            if rest[:2] != _GZIP_MAGIC:
                raise DataError(f"{path} has {len(rest):,} bytes of garbage after the gzip "
                                f"data: the file is corrupt — {_REDOWNLOAD}")
    except zlib.error as error:
        raise DataError(f"{path} is corrupt (gzip: {error}): {_REDOWNLOAD}") from error
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _tar_members(tar_bytes: bytes, path: Path) -> dict[str, tarfile.TarInfo]:
    """Regular-file members of the tar, by base name (headers only; nothing is extracted)."""
    members: dict[str, tarfile.TarInfo] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
            for info in tar:
                name = info.name.rstrip("/").rsplit("/", 1)[-1]
                if info.isdir():
                    continue
                if name in members and name in (*BATCH_FILES, META_FILE):
                    raise DataError(f"{path} holds more than one {name}: it is not the "
                                    f"CIFAR-10 binary release — {_REDOWNLOAD}")
                members[name] = info
    except tarfile.TarError as error:
        raise DataError(f"{path} is not a readable tar archive ({error}): it is truncated or "
                        f"not {ARCHIVE_NAME} — {_REDOWNLOAD}") from error
    for name in (*BATCH_FILES, META_FILE):
        info = members.get(name)
        if info is None:
            continue
        # Only plain file data can be read in place; a link or sparse entry is not CIFAR-10.
        if not info.isreg() or info.issparse():
            raise DataError(f"{name} in {path} is not a regular file: the archive is not the "
                            f"CIFAR-10 binary release — {_REDOWNLOAD}")
        if info.offset_data + info.size > len(tar_bytes):
            raise DataError(_size_message(
                name, max(0, len(tar_bytes) - info.offset_data), f"in {path}",
                f"the archive is truncated — {_REDOWNLOAD}"))
    return members


def _missing_member_message(path: Path, name: str, members: dict[str, tarfile.TarInfo]) -> str:
    names = {info.name for info in members.values()}
    if any("cifar-10-batches-py" in n for n in names):
        return (f"{path} is the Python (pickle) version of CIFAR-10; this project reads the "
                f"binary version, {ARCHIVE_NAME} ({OFFICIAL_URL}) — download that instead")
    found = ", ".join(sorted(members)[:8]) or "nothing"
    return (f"{path} has no {name} (it holds: {found}): it is not the CIFAR-10 binary "
            f"release — {_REDOWNLOAD}")


def _size_message(name: str, size: int, where: str, fix: str) -> str:
    return (f"{name} {where} is {size:,} bytes; a CIFAR-10 batch file is {FILE_BYTES:,} bytes "
            f"({RECORDS_PER_FILE:,} records of {RECORD_BYTES:,}): {fix}")


def _load_folder(folder: Path) -> Cifar10:
    """Decode the six batch files of an unpacked ``cifar-10-batches-bin`` folder."""
    fix = (f"replace the folder with a fresh copy (unpack {ARCHIVE_NAME} again, or delete "
           "it and let the loader download the archive)")
    buffers: dict[str, np.ndarray] = {}
    for name in BATCH_FILES:
        file = folder / name
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            raise DataError(f"{name} is missing from {folder} (it holds: "
                            f"{', '.join(present[:8]) or 'nothing'}): all of "
                            f"{', '.join(BATCH_FILES)} are needed — {fix}") from None
        except OSError as error:
            raise DataError(f"cannot read {file}: {error.strerror or error}") from error
        # Check the size before reading, so a wrong file is refused without loading it.
        if size != FILE_BYTES:
            raise DataError(_size_message(name, size, f"in {folder}",
                                          f"the file is truncated or not CIFAR-10 — {fix}"))
        try:
            buffers[name] = np.fromfile(file, dtype=np.uint8)
        except OSError as error:
            raise DataError(f"cannot read {file}: {error.strerror or error}") from error
        if buffers[name].size != FILE_BYTES:   # changed under our feet
            raise DataError(_size_message(name, buffers[name].size, f"in {folder}",
                                          f"the file is truncated or not CIFAR-10 — {fix}"))
    meta_path = folder / META_FILE
    meta_text = meta_path.read_bytes() if meta_path.is_file() else None
    return _decode(buffers, meta_text, source=folder, fix=fix)


def _decode(buffers: dict[str, memoryview | np.ndarray], meta_text: bytes | None, *,
            source: Path, fix: str) -> Cifar10:
    """Split records into labels and images: one vectorised copy per batch file.

    Each record is 3,073 bytes, so a file viewed as a (10000, 3073) uint8 array has the
    label in column 0 and the image, already in (3, 32, 32) R/G/B-plane order, in columns
    1…3072. Copying those columns into a preallocated (N, 3072) array gives contiguous
    (N, 3, 32, 32) images without any per-record work.
    """
    def split(names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        count = len(names) * RECORDS_PER_FILE
        images = np.empty((count, IMAGE_BYTES), dtype=np.uint8)
        labels = np.empty(count, dtype=np.int64)
        for index, name in enumerate(names):
            records = np.frombuffer(buffers[name], dtype=np.uint8).reshape(
                RECORDS_PER_FILE, RECORD_BYTES)
            file_labels = records[:, 0]
            bad = np.flatnonzero(file_labels >= NUM_CLASSES)
            if bad.size:
                raise DataError(f"{name} in {source} has label {int(file_labels[bad[0]])} in "
                                f"record {int(bad[0]):,} ({bad.size:,} of {RECORDS_PER_FILE:,} "
                                f"records have a label outside 0–9): it is not CIFAR-10 — {fix}")
            rows = slice(index * RECORDS_PER_FILE, (index + 1) * RECORDS_PER_FILE)
            labels[rows] = file_labels
            images[rows] = records[:, 1:]
        return (torch.from_numpy(images.reshape(count, *IMAGE_SHAPE)),
                torch.from_numpy(labels))

    train_images, train_labels = split(TRAIN_FILES)
    test_images, test_labels = split((TEST_FILE,))
    return Cifar10(train_images=train_images, train_labels=train_labels,
                   test_images=test_images, test_labels=test_labels,
                   classes=_class_names(meta_text), source=str(source))


def _class_names(meta_text: bytes | None) -> list[str]:
    """Names from batches.meta.txt (blank lines dropped); the standard ones if unusable."""
    if meta_text is not None:
        names = [line.strip() for line in meta_text.decode("utf-8", "replace").splitlines()]
        names = [name for name in names if name]
        if len(names) == NUM_CLASSES:
            return names
    return list(DEFAULT_CLASSES)


# --- downloading ----------------------------------------------------------------------------

def download_archive(dest: str | os.PathLike[str], *, url: str = OFFICIAL_URL,
                     expected_md5: str | None = OFFICIAL_MD5,
                     timeout: float = DOWNLOAD_TIMEOUT_S,
                     log: Callable[[str], None] | None = _log_stderr,
                     missing_at: str | None = None) -> Path:
    """Download ``url`` to ``dest`` safely; returns ``dest``.

    The bytes go to a hidden temporary file in ``dest``'s folder (same file system, so the
    final ``os.replace`` is atomic), are hashed on the way, and are renamed into place only
    when complete and (if ``expected_md5`` is given) matching. On any failure, including
    Ctrl-C, the temporary file is removed, so nothing that looks like the archive is left.

    Raises:
        DataError: no network / unreachable URL, folder not writable, incomplete transfer,
            or wrong md5; the message gives the exact path to put the archive at.
    """
    dest = Path(dest).expanduser().absolute()
    place = (f"download {ARCHIVE_NAME} yourself (from {url}) and put it at {dest}, or point "
             f"--data-dir or the {ENV_VAR} environment variable at a folder that holds it")
    missing = f"CIFAR-10 is not at {missing_at}; " if missing_at else ""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.",
                                         suffix=".part")
    except OSError as error:
        raise DataError(f"{missing}cannot download it into {dest.parent} "
                        f"({error.strerror or error}): {place} (a writable folder)") from error
    temp = Path(temp_name)
    if log:
        log(f"downloading CIFAR-10 from {url} to {dest} ...")
    started = time.perf_counter()
    try:
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
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError,
                    ConnectionError, ValueError) as error:
                reason = getattr(error, "reason", None) or error
                raise DataError(f"{missing}downloading it from {url} failed ({reason}): "
                                f"{place}") from error
            if expected_length is not None and received != expected_length:
                raise DataError(f"the download from {url} stopped after {received:,} of "
                                f"{expected_length:,} bytes; nothing was saved: try again, or "
                                f"{place}")
            out.flush()
            os.fsync(out.fileno())   # the rename must not outlive the data after a crash
        digest = hasher.hexdigest()
        if expected_md5 and digest != expected_md5.lower():
            raise DataError(f"the download from {url} has md5 {digest}, not the expected "
                            f"{expected_md5.lower()}: it is corrupt or not {ARCHIVE_NAME}; "
                            f"nothing was saved: try again, or {place}")
        os.replace(temp, dest)
    except OSError as error:   # disk full, folder removed, ... while writing
        raise DataError(f"{missing}saving the download to {dest} failed "
                        f"({error.strerror or error}): {place}") from error
    finally:
        temp.unlink(missing_ok=True)   # a no-op after the successful os.replace
    if log:
        log(f"downloaded {received / 2**20:.0f} MiB in {time.perf_counter() - started:.1f} s "
            f"(md5 {digest})")
    return dest
