"""Synthetic CIFAR-10 in the official binary format, built on the fly for tests.

The format (written here independently of ``train.data``, so the tests do not trust the code
they test): ``cifar-10-batches-bin/`` holds ``data_batch_1.bin`` … ``data_batch_5.bin`` and
``test_batch.bin``, each ``records_per_file`` records of 3,073 bytes (one label byte, then
the red, green and blue 32×32 planes, row-major), plus ``batches.meta.txt``.

The images are learnable and cheap: each class has a fixed blocky template (a random 4×4
grid per colour plane, upsampled to 32×32) and each image adds a per-channel brightness
jitter. Blocky content deflates fast at ``compresslevel=1``, so the full-size archive
(6 × 30.73 MB of records) is built in about a second, and any classifier separates the
classes easily.

Typical use::

    from cifar_archive import make_archive, write_batches, synthetic_cifar  # tests/ is on sys.path
    archive = make_archive(tmp_path)                  # tmp_path/cifar-10-binary.tar.gz
    folder = write_batches(tmp_path)                  # tmp_path/cifar-10-batches-bin/
    truth = synthetic_cifar()                          # the arrays written (cached)
    broken = make_archive(tmp_path / "b", corrupt=truncate("data_batch_3.bin", 1234))

Only plain functions live here; fixtures are defined by the test files that use them.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ARCHIVE_NAME = "cifar-10-binary.tar.gz"
FOLDER_NAME = "cifar-10-batches-bin"
META_FILE = "batches.meta.txt"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
BATCH_FILES = (*TRAIN_FILES, TEST_FILE)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
RECORDS_PER_FILE = 10_000
IMAGE_BYTES = 3 * 32 * 32
RECORD_BYTES = 1 + IMAGE_BYTES
FILE_BYTES = RECORDS_PER_FILE * RECORD_BYTES

#: ``label_fn(split, count) -> labels``: split is "train" (count = 5 files' records) or
#: "test"; the result is any integer array of length ``count`` (values may be out of range
#: on purpose, they are written modulo 256).
LabelFn = Callable[[str, int], np.ndarray]
#: ``corrupt(files) -> files``: receives ``{name: bytes}`` for the six batch files and the
#: meta file, in archive order, and returns what is actually written (drop, truncate, ...).
CorruptFn = Callable[[dict[str, bytes]], Mapping[str, bytes]]


@dataclass(frozen=True)
class SyntheticCifar:
    """The arrays that the writers below encode (read-only numpy arrays).

    train_images: uint8 (5 × records_per_file, 3, 32, 32); train_labels: uint8 (same N,).
    test_images: uint8 (records_per_file, 3, 32, 32); test_labels: uint8 (records_per_file,).
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    records_per_file: int

    def files(self, classes: tuple[str, ...] | None = CLASSES) -> dict[str, bytes]:
        """``{file name: contents}`` in the official layout and archive order.

        ``classes=None`` leaves out batches.meta.txt (it is optional for loaders).
        """
        files: dict[str, bytes] = {}
        if classes is not None:
            # The official file ends with blank lines; loaders must cope.
            files[META_FILE] = ("\n".join(classes) + "\n\n").encode()
        n = self.records_per_file
        for index, name in enumerate(TRAIN_FILES):
            rows = slice(index * n, (index + 1) * n)
            files[name] = encode_records(self.train_labels[rows], self.train_images[rows])
        files[TEST_FILE] = encode_records(self.test_labels, self.test_images)
        return files


def balanced_labels(split: str, count: int) -> np.ndarray:
    """Every class equally often (count a multiple of 10), shuffled with a fixed seed.

    Each file of the training split is balanced too, as in the official release, so the
    first N records of either split hold all classes in about equal numbers.
    """
    rng = np.random.default_rng(1 if split == "train" else 2)
    chunk = min(count, RECORDS_PER_FILE)
    parts = []
    for start in range(0, count, chunk):
        part = np.resize(np.arange(10, dtype=np.uint8), min(chunk, count - start))
        rng.shuffle(part)
        parts.append(part)
    return np.concatenate(parts)


@functools.lru_cache(maxsize=4)
def synthetic_cifar(
    records_per_file: int = RECORDS_PER_FILE, *, seed: int = 0, label_fn: LabelFn = balanced_labels
) -> SyntheticCifar:
    """Deterministic synthetic CIFAR-10 (cached: the same call returns the same object)."""
    rng = np.random.default_rng(seed)
    # One template per class: a random 4×4 grid of levels per colour plane, upsampled by 8.
    # The three planes differ, so a loader that swaps planes fails the comparisons.
    grid = rng.integers(16, 200, size=(10, 3, 4, 4), dtype=np.uint8)
    templates = grid.repeat(8, axis=2).repeat(8, axis=3)

    def split(name: str, count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = (np.asarray(label_fn(name, count)).astype(np.int64) % 256).astype(np.uint8)
        assert labels.shape == (count,), f"label_fn gave shape {labels.shape}, want ({count},)"
        jitter = rng.integers(0, 32, size=(count, 3, 1, 1), dtype=np.uint8)  # 199 + 31 < 256
        images = templates[labels % 10]
        images += jitter  # in place: one 184 MB array, not two
        labels.flags.writeable = images.flags.writeable = False
        return labels, images

    train_labels, train_images = split("train", 5 * records_per_file)
    test_labels, test_images = split("test", records_per_file)
    return SyntheticCifar(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        records_per_file=records_per_file,
    )


def encode_records(labels: np.ndarray, images: np.ndarray) -> bytes:
    """Records in the official layout: label byte, then R, G, B planes (uint8 (N,3,32,32))."""
    count = labels.shape[0]
    records = np.empty((count, RECORD_BYTES), dtype=np.uint8)
    records[:, 0] = labels
    records[:, 1:] = images.reshape(count, IMAGE_BYTES)
    return records.tobytes()


def _files(
    records_per_file: int,
    seed: int,
    label_fn: LabelFn,
    corrupt: CorruptFn | None,
    classes: tuple[str, ...] | None,
) -> Mapping[str, bytes]:
    files = synthetic_cifar(records_per_file, seed=seed, label_fn=label_fn).files(classes)
    return corrupt(files) if corrupt is not None else files


def write_batches(
    directory: str | Path,
    records_per_file: int = RECORDS_PER_FILE,
    *,
    seed: int = 0,
    label_fn: LabelFn = balanced_labels,
    corrupt: CorruptFn | None = None,
    classes: tuple[str, ...] | None = CLASSES,
) -> Path:
    """Write ``directory/cifar-10-batches-bin/`` (unpacked layout); returns that folder."""
    folder = Path(directory) / FOLDER_NAME
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in _files(records_per_file, seed, label_fn, corrupt, classes).items():
        (folder / name).write_bytes(content)
    return folder


def make_archive(
    directory: str | Path,
    records_per_file: int = RECORDS_PER_FILE,
    *,
    seed: int = 0,
    label_fn: LabelFn = balanced_labels,
    corrupt: CorruptFn | None = None,
    classes: tuple[str, ...] | None = CLASSES,
    name: str = ARCHIVE_NAME,
    compresslevel: int = 1,
) -> Path:
    """Write ``directory/name``: a .tar.gz laid out like the official one; returns its path.

    The bytes are deterministic for given arguments (fixed mtimes, owners, gzip header), so
    the archive's md5 is stable. The defaults give a valid full-size data set (50,000 train
    and 10,000 test images; about 7 MB compressed, built in about a second).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    files = _files(records_per_file, seed, label_fn, corrupt, classes)
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, compresslevel=compresslevel, mtime=0
        ) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        folder = tarfile.TarInfo(FOLDER_NAME)
        folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o755, 0
        tar.addfile(folder)
        for member, content in files.items():
            info = tarfile.TarInfo(f"{FOLDER_NAME}/{member}")
            info.size, info.mode, info.mtime = len(content), 0o644, 0
            tar.addfile(info, io.BytesIO(content))
    return path


def file_md5(path: str | Path) -> str:
    """md5 (hex) of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


# --- ready-made corruptions (values for ``corrupt=``) ---------------------------------------


def truncate(name: str, size: int) -> CorruptFn:
    """Cut file ``name`` to its first ``size`` bytes."""

    def apply(files: dict[str, bytes]) -> dict[str, bytes]:
        return {**files, name: files[name][:size]}

    return apply


def drop(name: str) -> CorruptFn:
    """Leave file ``name`` out."""

    def apply(files: dict[str, bytes]) -> dict[str, bytes]:
        return {key: value for key, value in files.items() if key != name}

    return apply


def set_label(name: str, record: int, value: int) -> CorruptFn:
    """Overwrite the label byte of ``record`` in file ``name`` with ``value`` (0–255)."""

    def apply(files: dict[str, bytes]) -> dict[str, bytes]:
        content = bytearray(files[name])
        content[record * RECORD_BYTES] = value
        return {**files, name: bytes(content)}

    return apply
