"""What the CIFAR-10 binary release is, and the errors about it (shared by the data modules).

The data set is the "CIFAR-10 binary version", ``cifar-10-binary.tar.gz``
(:data:`OFFICIAL_URL`, md5 :data:`OFFICIAL_MD5`). It unpacks to ``cifar-10-batches-bin/``:
``data_batch_1.bin`` … ``data_batch_5.bin`` (training) and ``test_batch.bin``, each exactly
10,000 records of 3,073 bytes (one label byte 0–9, then 3,072 pixel bytes: the red plane,
the green plane, the blue plane, each 32×32 row-major), plus ``batches.meta.txt`` (the class
names, one per line).

This module imports nothing from the project, so :mod:`train.data`, :mod:`train.cifar_reader`
and :mod:`train.download` can all depend on it without an import cycle. The public names are
re-exported by :mod:`train.data`, which is where the rest of the code imports them from.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = [
    "ARCHIVE_NAME",
    "BATCH_FILES",
    "DEFAULT_CLASSES",
    "ENV_VAR",
    "FILE_BYTES",
    "FOLDER_NAME",
    "IMAGE_BYTES",
    "IMAGE_SHAPE",
    "META_FILE",
    "NUM_CLASSES",
    "OFFICIAL_MD5",
    "OFFICIAL_URL",
    "RECORDS_PER_FILE",
    "RECORD_BYTES",
    "TEST_FILE",
    "TRAIN_FILES",
    "DataError",
    "DataNotice",
    "link_loop_message",
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
DEFAULT_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

RECORDS_PER_FILE = 10_000
IMAGE_SHAPE = (3, 32, 32)
IMAGE_BYTES = 3 * 32 * 32
RECORD_BYTES = 1 + IMAGE_BYTES  # 3,073: label byte, then R, G, B planes
FILE_BYTES = RECORDS_PER_FILE * RECORD_BYTES  # 30,730,000
NUM_CLASSES = 10


class DataError(RuntimeError):
    """The data set is missing, unreadable or not CIFAR-10. The message says what to do."""


class DataNotice(UserWarning):
    """A one-line note about the data that does not stop the run (e.g. a non-official copy)."""


def link_loop_message(path: Path, origin: str) -> str:
    """One line naming the link that loops on the way to ``path`` (``path`` itself, or the
    first of its parent folders that does).

    Shared by locating the data (:mod:`train.data`) and reading an unpacked folder
    (:mod:`train.cifar_reader`): either can be the first to run into the loop.
    """
    link = path
    for candidate in (*reversed(path.parents), path):
        try:
            os.stat(candidate)
        except OSError as error:
            if error.errno == errno.ELOOP:
                link = candidate
            break
    where = "" if link == path else f" (on the way to {path})"
    return (
        f"{link} is a symbolic link loop{where}: following it leads back to itself "
        f"(too many levels of symbolic links); fix the link, or point {origin} at "
        f"{ARCHIVE_NAME} or a folder that holds it"
    )
