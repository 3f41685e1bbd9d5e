"""The checkpoint file: written atomically, read only by the weights-only loader, and
refused in one line of our own words when it is not one of ours.

What a checkpoint holds, and how a run saves and resumes, is :mod:`train.checkpoint`; this
module is only about the file on disk.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from train.atomic import write_atomic

FORMAT = "resnet9-cifar10-checkpoint"
VERSION = 1

_REQUIRED = (
    "config",
    "runtime",
    "data",
    "seed",
    "steps_per_epoch",
    "progress",
    "model",
    "step",
    "rng",
    "result",
)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read: missing, truncated, corrupt or not ours."""


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint of a different run (configuration, data, seed, device)."""


def save_atomic(payload: Any, path: str | os.PathLike) -> None:
    """``torch.save`` ``payload`` to ``path`` through :func:`train.atomic.write_atomic`.

    ``path`` always holds either the previous checkpoint or the new one, never a
    half-written file, whatever interrupts the write (an exception, a full disk, a killed
    process); the temporary file is removed when the write fails, and leftovers of a killed
    save are removed by the next one. A SIGINT / SIGTERM during the write (e.g. a second
    Ctrl-C under :func:`train.signals.stop_on_signals`) takes effect once the new checkpoint
    is complete.
    """
    write_atomic(path, lambda handle: torch.save(payload, handle))


#: What to do about a checkpoint that cannot be used (appended to the refusals below).
_USE_ANOTHER = (
    "give --resume a checkpoint this trainer wrote (--checkpoint), or start afresh without --resume"
)
_ZIP_MAGIC = b"PK\x03\x04"  # every torch.save since PyTorch 1.6 writes a zip archive


def _container_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a checkpoint of this trainer judging by its container alone
    (None when it is an intact PyTorch zip file). Reads the first bytes, the zip directory
    and the members' checksums; nothing is unpickled, so a file that fails here is never
    handed to an unpickler at all."""
    try:
        with open(path, "rb") as file:
            head = file.read(len(_ZIP_MAGIC))
    except OSError as error:
        return f"{error.strerror or type(error).__name__}"
    if not head:
        return "it is empty (0 bytes), not a checkpoint of this trainer"
    if head != _ZIP_MAGIC:
        # A checkpoint is a zip file; a bare pickle (0x80: a pickle's PROTO opcode) is
        # someone else's format, and possibly a hostile one: it is not even opened.
        if head[:1] == b"\x80":
            return "it is a bare Python pickle, not a checkpoint of this trainer (left unread)"
        return "it is not a checkpoint of this trainer (not a PyTorch file at all)"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            # torch.load does not check the members' CRCs, so a flipped bit in a tensor
            # would load silently; checking them costs one read of the file.
            damaged = archive.testzip()
    except OSError as error:
        return f"{error.strerror or type(error).__name__}"
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        ValueError,
        RuntimeError,
        NotImplementedError,
        zlib.error,
    ):
        # BadZipFile mostly: the zip's directory is written last, so a file cut short has
        # none. The others: odd compression methods, encrypted members, broken streams.
        return (
            "it is truncated or damaged (a zip file whose directory at the end is "
            "missing or unreadable, e.g. an interrupted copy)"
        )
    if not any(re.fullmatch(r"[^/]+/data\.pkl", name) for name in names):
        return "it is a zip file but not a PyTorch one, so not a checkpoint of this trainer"
    if damaged is not None:
        # The member's name comes from the file: shown only when it is plainly a path.
        shown = f" of {damaged}" if re.fullmatch(r"[\w./-]{1,200}", damaged, re.ASCII) else ""
        return (
            f"it is damaged (the checksum{shown} does not match its contents, e.g. a "
            "corrupted copy)"
        )
    return None


def _refused_contents(error: BaseException) -> str:
    """What the weights-only unpickler's refusal means, in our words (torch's own message
    suggests ``weights_only=False``, i.e. running whatever the file holds: never repeated)."""
    # The refused global's name ("GLOBAL posix.system ..."), when torch names it; only a
    # dotted identifier is kept, so nothing odd from the file reaches the terminal.
    found = re.search(r"GLOBAL ([A-Za-z_][\w.]{0,120})", str(error), flags=re.ASCII)
    if found:
        return (
            f"it holds objects this trainer never writes ({found.group(1)}), so it is not "
            "one of its checkpoints; the safe loader refused them and nothing in the file ran"
        )
    return (
        "it holds pickled data this trainer never writes, so it is damaged or not one of "
        "its checkpoints; the safe loader refused it and nothing in the file ran"
    )


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint (tensors on the CPU) and check that it is one of ours.

    Only ``torch.load(..., weights_only=True)`` ever reads it, after its container has been
    checked, so a hostile file is refused without anything in it running. Raises
    :class:`CheckpointError` with the path, what the file is not, and what to do, in one
    line of our own words (torch's messages and warnings are not passed on).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder, not a checkpoint: name the checkpoint file itself"
        )
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    problem = _container_problem(path)
    if problem is None:
        try:
            # torch warns about pickle protocols and the like on odd files: the refusal
            # below says all there is to say, in one line.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                payload = torch.load(path, map_location="cpu", weights_only=True)
        except OSError as error:
            problem = f"{error.strerror or type(error).__name__}"
        except pickle.UnpicklingError as error:
            problem = _refused_contents(error)
        except Exception:  # noqa: BLE001  (torch's zip reader and unpickler raise many kinds)
            problem = (
                "it is damaged (a PyTorch zip file whose contents cannot be read, "
                "e.g. a corrupted copy)"
            )
    if problem is not None:
        # `from None`: torch's exception carries the advice this message exists to replace.
        raise CheckpointError(f"cannot read checkpoint {path}: {problem}; {_USE_ANOTHER}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a checkpoint of this trainer (a PyTorch file "
            f"without its format mark); {_USE_ANOTHER}"
        )
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} is a version {payload.get('version')} checkpoint; this "
            f"trainer reads version {VERSION}"
        )
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: no {', '.join(missing)}")
    return payload
