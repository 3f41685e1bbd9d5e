"""Whether a checkpoint may be resumed by this run, and which file each run resumes from.

A checkpoint of a different run (another recipe, data set, seed or device) is refused,
naming every difference once; fields that do not change the trajectory may differ.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from train.checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    load_checkpoint,
    run_checkpoint_path,
    runtime_record,
)
from train.config import TrainConfig, saved_config_with_defaults
from train.runtime import Runtime

#: Configuration fields that do not change the training trajectory, so a resume may
#: differ in them. The device, backend and precision are compared as resolved (``auto``
#: may name the same thing as ``cpu``), in ``runtime``. ``distribute`` only matters under
#: torchrun with several processes, where checkpoints are refused.
RESUME_MAY_DIFFER = frozenset(
    {
        "data_dir",
        "download",
        "runs",
        "json",
        "warmup_steps",
        "cuda_graphs",
        "eval_every",
        "eval_batch_size",
        "device",
        "backend",
        "precision",
        "distribute",
    }
)


def _differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], ignore: frozenset[str] = frozenset()
) -> list[str]:
    keys = sorted((set(saved) | set(current)) - ignore)
    return [
        f"{key} {saved.get(key)!r} in the checkpoint vs {current.get(key)!r} now"
        for key in keys
        if saved.get(key) != current.get(key)
    ]


def check_compatible(
    checkpoint: Mapping[str, Any],
    *,
    config: TrainConfig,
    runtime: Runtime,
    data: Mapping[str, int],
    seed: int,
    path: str | os.PathLike = "the checkpoint",
) -> None:
    """Refuse to resume a checkpoint of a different run.

    Raises :class:`CheckpointMismatch` naming every field that differs: configuration fields
    that change the run (all but :data:`RESUME_MAY_DIFFER`), the resolved device type,
    backend and precision, the data set, and the seed.
    """
    saved_config = saved_config_with_defaults(checkpoint["config"])
    current_config = config.to_dict()
    problems = _differences(saved_config, current_config, RESUME_MAY_DIFFER)
    problems += _differences(checkpoint["runtime"], runtime_record(runtime))
    if dict(checkpoint["data"]) != dict(data):
        problems.append(
            f"the data set differs ({checkpoint['data']} in the checkpoint vs {dict(data)} now)"
        )
    saved_seed = int(checkpoint["seed"])
    if saved_seed != seed:
        # Run r of a CLI invocation has seed --seed + r, so a new --seed changes the run's
        # seed too: that is the one difference ("seed", above), not a second one. The run
        # seed is named on its own only when it differs for another reason.
        saved_base, current_base = saved_config.get("seed"), current_config.get("seed")
        follows_base = (
            saved_base != current_base
            and isinstance(saved_base, int)
            and isinstance(current_base, int)
            and saved_seed - saved_base == seed - current_base
        )
        if not follows_base:
            problems.append(f"run seed {saved_seed} in the checkpoint vs {seed} now")
    if problems:
        raise CheckpointMismatch(
            f"{path} was written by a different run: {'; '.join(problems)}. Resume with the "
            "flags of the interrupted run, or start afresh without --resume"
        )


def resume_paths(
    base: str | os.PathLike,
    seeds: Sequence[int],
    *,
    config: TrainConfig,
    runtime: Runtime,
    data: Mapping[str, int],
) -> list[Path | None]:
    """For each run's seed, the checkpoint to resume it from (``None``: start it afresh),
    each one read and checked, so that a bad one is reported before any warm-up.

    Raises :class:`CheckpointError` when there is no checkpoint for any of the runs.
    """
    found: list[Path | None] = []
    for seed in seeds:
        path = run_checkpoint_path(base, seed, len(seeds))
        if not path.exists():
            found.append(None)
            continue
        check_compatible(
            load_checkpoint(path), config=config, runtime=runtime, data=data, seed=seed, path=path
        )
        found.append(path)
    if not any(found):
        where = run_checkpoint_path(base, seeds[0], len(seeds))
        hint = (
            " (nor for the other seeds)"
            if len(seeds) > 1
            else " (checkpoints of several runs are named by seed, e.g. "
            f"{run_checkpoint_path(base, seeds[0], 2).name}: give the same --runs)"
        )
        raise CheckpointError(f"no checkpoint to resume at {where}{hint}")
    return found


def read_for_resume(
    path: str | os.PathLike,
    *,
    config: TrainConfig,
    runtime: Runtime,
    data: Mapping[str, int],
    seed: int,
) -> dict[str, Any]:
    """The checkpoint at ``path``, read and checked against this run (see
    :func:`check_compatible`). Raises :class:`CheckpointError` / :class:`CheckpointMismatch`."""
    saved = load_checkpoint(path)
    check_compatible(saved, config=config, runtime=runtime, data=data, seed=seed, path=path)
    return saved
