"""Reading CIFAR-10 out of its archive or an unpacked folder: validation and decoding.

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
  every failure is a :class:`~train.cifar_format.DataError` whose message names the file,
  what is wrong and what to do, so the CLI can print it in one line without a traceback.
* The result is a plain :class:`Decoded` tuple, not the :class:`train.data.Cifar10` record:
  judging the copy (official md5 or not) and warning about it is :func:`train.data.load_cifar10`'s
  job, and keeping the record there keeps this module free of an import back into
  :mod:`train.data`.
"""

from __future__ import annotations

import errno
import hashlib
import io
import tarfile
import threading
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from train.cifar_format import (
    ARCHIVE_NAME,
    BATCH_FILES,
    DEFAULT_CLASSES,
    FILE_BYTES,
    FOLDER_NAME,
    IMAGE_BYTES,
    IMAGE_SHAPE,
    META_FILE,
    NUM_CLASSES,
    OFFICIAL_URL,
    RECORD_BYTES,
    RECORDS_PER_FILE,
    TEST_FILE,
    TRAIN_FILES,
    DataError,
    link_loop_message,
)

__all__ = ["REDOWNLOAD", "Decoded", "read_archive", "read_folder"]

# Guards against pointing the loader at some huge unrelated file (or a gzip bomb): the real
# archive is 170 MB and unpacks to 184 MB, so anything far beyond that is not CIFAR-10.
_MAX_ARCHIVE_BYTES = 512 * 2**20
_MAX_TAR_BYTES = 256 * 2**20
_GZIP_MAGIC = b"\x1f\x8b"
# What to do about a bad archive depends on whose it is: the trainer's own download (in its
# cache, or just fetched) may be deleted and fetched again; a file the user pointed at is
# theirs, so they are only told what the trainer needs (see train.data._archive_fix). This
# is the advice for the trainer's own copy, and the default of every reader below.
REDOWNLOAD = "delete it and download again"


class Decoded(NamedTuple):
    """The decoded data set, as :class:`train.data.Cifar10` will hold it.

    Images are uint8 (N, 3, 32, 32) contiguous, labels int64 (N,) in 0–9; ``source`` is the
    archive or folder read, ``md5`` the archive's md5 (hex), or None for a folder.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    source: Path
    md5: str | None


def read_archive(path: Path, fix: str = REDOWNLOAD) -> Decoded:
    """Decode the batch files straight out of the (gzipped) tar at ``path``; ``fix`` is the
    advice that ends the message of a bad archive (see ``train.data._archive_fix``)."""
    try:
        size = path.stat().st_size
        if size > _MAX_ARCHIVE_BYTES:
            raise DataError(
                f"{path} is {size:,} bytes, far more than the CIFAR-10 archive "
                f"(about 170 MB): it is not {ARCHIVE_NAME}"
            )
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from error

    # md5 on a second thread while this one inflates: both hashlib and zlib release the GIL
    # on large buffers, so checking provenance adds almost nothing to the load time.
    digest: list[str] = []

    def hash_archive(data: bytes) -> None:
        digest.append(hashlib.md5(data).hexdigest())

    hasher = threading.Thread(target=hash_archive, args=(raw,), name="cifar10-md5", daemon=True)
    hasher.start()
    try:
        tar_bytes = _gunzip(raw, path, fix)
    finally:
        hasher.join()
    del raw  # drop the compressed copy before building the decoded arrays
    md5 = digest[0]

    members = _tar_members(tar_bytes, path, fix)
    buffers: dict[str, memoryview] = {}
    for name in BATCH_FILES:
        info = members.get(name)
        if info is None:
            raise DataError(_missing_member_message(path, name, members, fix))
        if info.size != FILE_BYTES:
            raise DataError(
                _size_message(
                    name,
                    info.size,
                    f"in {path}",
                    f"the archive is truncated or not CIFAR-10 — {fix}",
                )
            )
        buffers[name] = memoryview(tar_bytes)[info.offset_data : info.offset_data + info.size]
    meta = members.get(META_FILE)
    meta_text = (
        bytes(memoryview(tar_bytes)[meta.offset_data : meta.offset_data + meta.size])
        if meta is not None
        else None
    )
    return _decode(buffers, meta_text, source=path, fix=fix, md5=md5)


def _gunzip(raw: bytes, path: Path, fix: str = REDOWNLOAD) -> bytes:
    """The tar inside ``raw`` (gzip, possibly multi-member; a plain tar is passed through)."""
    if len(raw) == 0:
        raise DataError(f"{path} is empty (0 bytes), not a CIFAR-10 archive: {fix}")
    if raw[:2] != _GZIP_MAGIC:
        if raw[257:262] == b"ustar":  # an uncompressed tar (someone gunzipped it): fine
            return raw
        hint = (
            "; it looks like a web page, e.g. an error page saved in place of the archive"
            if raw.lstrip()[:1] == b"<"
            else ""
        )
        raise DataError(f"{path} is not a CIFAR-10 archive (not a gzip file{hint}): {fix}")
    parts: list[bytes] = []
    total = 0
    rest = raw
    try:
        while True:
            inflater = zlib.decompressobj(wbits=31)  # 31: expect a gzip header and trailer
            part = inflater.decompress(rest, _MAX_TAR_BYTES - total + 1)
            total += len(part)
            if total > _MAX_TAR_BYTES or inflater.unconsumed_tail:
                raise DataError(
                    f"{path} unpacks to more than {_MAX_TAR_BYTES:,} bytes, far "
                    f"more than CIFAR-10 (184 MB): it is not {ARCHIVE_NAME}"
                )
            parts.append(part)
            if not inflater.eof:
                raise DataError(
                    f"{path} is truncated ({len(raw):,} bytes; the gzip stream "
                    f"ends early), an incomplete copy: {fix}"
                )
            rest = inflater.unused_data
            # Like gzip itself, accept further gzip members and trailing zero padding.
            if not rest.strip(b"\0"):
                break
            if rest[:2] != _GZIP_MAGIC:
                raise DataError(
                    f"{path} has {len(rest):,} bytes of garbage after the gzip "
                    f"data: the file is corrupt — {fix}"
                )
    except zlib.error as error:
        raise DataError(f"{path} is corrupt (gzip: {error}): {fix}") from error
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _tar_members(tar_bytes: bytes, path: Path, fix: str = REDOWNLOAD) -> dict[str, tarfile.TarInfo]:
    """Regular-file members of the tar, by base name (headers only; nothing is extracted)."""
    members: dict[str, tarfile.TarInfo] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
            for info in tar:
                name = info.name.rstrip("/").rsplit("/", 1)[-1]
                if info.isdir():
                    continue
                if name in members and name in (*BATCH_FILES, META_FILE):
                    raise DataError(
                        f"{path} holds more than one {name}: it is not the "
                        f"CIFAR-10 binary release — {fix}"
                    )
                members[name] = info
    except tarfile.TarError as error:
        raise DataError(
            f"{path} is not a readable tar archive ({error}): it is truncated or "
            f"not {ARCHIVE_NAME} — {fix}"
        ) from error
    for name in (*BATCH_FILES, META_FILE):
        info = members.get(name)
        if info is None:
            continue
        # Only plain file data can be read in place; a link or sparse entry is not CIFAR-10.
        if not info.isreg() or info.issparse():
            raise DataError(
                f"{name} in {path} is not a regular file: the archive is not the "
                f"CIFAR-10 binary release — {fix}"
            )
        if info.offset_data + info.size > len(tar_bytes):
            raise DataError(
                _size_message(
                    name,
                    max(0, len(tar_bytes) - info.offset_data),
                    f"in {path}",
                    f"the archive is truncated — {fix}",
                )
            )
    return members


def _missing_member_message(
    path: Path, name: str, members: dict[str, tarfile.TarInfo], fix: str = REDOWNLOAD
) -> str:
    names = {info.name for info in members.values()}
    if any("cifar-10-batches-py" in n for n in names):
        return (
            f"{path} is the Python (pickle) version of CIFAR-10; this project reads the "
            f"binary version, {ARCHIVE_NAME} ({OFFICIAL_URL}) — download that instead"
        )
    found = ", ".join(sorted(members)[:8]) or "nothing"
    return (
        f"{path} has no {name} (it holds: {found}): it is not the CIFAR-10 binary release — {fix}"
    )


def _size_message(name: str, size: int, where: str, fix: str) -> str:
    return (
        f"{name} {where} is {size:,} bytes; a CIFAR-10 batch file is {FILE_BYTES:,} bytes "
        f"({RECORDS_PER_FILE:,} records of {RECORD_BYTES:,}): {fix}"
    )


def read_folder(folder: Path, origin: str = "--data-dir") -> Decoded:
    """Decode the six batch files of an unpacked ``cifar-10-batches-bin`` folder (found
    through ``origin``, for the messages)."""
    # An unpacked folder is always the user's (the trainer only ever downloads the
    # archive): say what to point at, never to delete it.
    fix = (
        f"point {origin} at a freshly unpacked {FOLDER_NAME}/ or at {ARCHIVE_NAME} ({OFFICIAL_URL})"
    )
    buffers: dict[str, np.ndarray] = {}
    for name in BATCH_FILES:
        file = folder / name
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            raise DataError(
                f"{name} is missing from {folder} (it holds: "
                f"{', '.join(present[:8]) or 'nothing'}): all of "
                f"{', '.join(BATCH_FILES)} are needed — {fix}"
            ) from None
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise DataError(link_loop_message(file, origin)) from None
            raise DataError(f"cannot read {file}: {error.strerror or error}") from error
        # Check the size before reading, so a wrong file is refused without loading it.
        if size != FILE_BYTES:
            raise DataError(
                _size_message(
                    name, size, f"in {folder}", f"the file is truncated or not CIFAR-10 — {fix}"
                )
            )
        try:
            buffers[name] = np.fromfile(file, dtype=np.uint8)
        except OSError as error:
            raise DataError(f"cannot read {file}: {error.strerror or error}") from error
        if buffers[name].size != FILE_BYTES:  # changed under our feet
            raise DataError(
                _size_message(
                    name,
                    buffers[name].size,
                    f"in {folder}",
                    f"the file is truncated or not CIFAR-10 — {fix}",
                )
            )
    meta_path = folder / META_FILE
    meta_text = meta_path.read_bytes() if meta_path.is_file() else None
    return _decode(buffers, meta_text, source=folder, fix=fix, md5=None)


def _decode(
    buffers: dict[str, memoryview | np.ndarray],
    meta_text: bytes | None,
    *,
    source: Path,
    fix: str,
    md5: str | None,
) -> Decoded:
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
                RECORDS_PER_FILE, RECORD_BYTES
            )
            file_labels = records[:, 0]
            bad = np.flatnonzero(file_labels >= NUM_CLASSES)
            if bad.size:
                raise DataError(
                    f"{name} in {source} has label {int(file_labels[bad[0]])} in "
                    f"record {int(bad[0]):,} ({bad.size:,} of {RECORDS_PER_FILE:,} "
                    f"records have a label outside 0–9): it is not CIFAR-10 — "
                    f"{fix}"
                )
            rows = slice(index * RECORDS_PER_FILE, (index + 1) * RECORDS_PER_FILE)
            labels[rows] = file_labels
            images[rows] = records[:, 1:]
        return (torch.from_numpy(images.reshape(count, *IMAGE_SHAPE)), torch.from_numpy(labels))

    train_images, train_labels = split(TRAIN_FILES)
    test_images, test_labels = split((TEST_FILE,))
    return Decoded(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=_class_names(meta_text),
        source=source,
        md5=md5,
    )


def _class_names(meta_text: bytes | None) -> list[str]:
    """Names from batches.meta.txt (blank lines dropped); the standard ones if unusable."""
    if meta_text is not None:
        names = [line.strip() for line in meta_text.decode("utf-8", "replace").splitlines()]
        names = [name for name in names if name]
        if len(names) == NUM_CLASSES:
            return names
    return list(DEFAULT_CLASSES)
