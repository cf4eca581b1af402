"""What a resumed run may change. A resumed run continues the run in its checkpoint: its configuration is the
checkpoint's, and only the fields in :data:`RESUME_MAY_CHANGE` — how long the run goes on, where it reads and
writes, how it executes and whether it skips non-finite steps — may be set differently (``epochs`` not when the
learning-rate schedule, poly or cosine, runs over the run's length). Any other field that
differs is refused, with the list, because the resumed run would silently become a different run (or, for the
network's shape, fail to load the weights).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple, Union

from .checkpoint import load_checkpoint
from .config import TrainConfig

RESUME_MAY_CHANGE = ("epochs", "out_dir", "device", "num_workers", "num_threads", "quiet", "cache_dir", "data_root",
                     "eval_every", "skip_nonfinite")


def resume_conflicts(saved: Dict[str, Any], config: TrainConfig) -> Dict[str, Tuple[Any, Any]]:
    """``{field: (the run's value, the given value)}`` for each field outside :data:`RESUME_MAY_CHANGE` where
    ``config`` differs from the run's configuration ``saved`` (a checkpoint's ``config``)."""
    run = TrainConfig.from_dict(saved).to_dict()  # normalised, with defaults for fields added since
    given = config.to_dict()
    fixed = [k for k in given if k not in RESUME_MAY_CHANGE or k in length_bound_fields(run)]
    return {k: (run[k], given[k]) for k in fixed if given[k] != run[k]}


def length_bound_fields(run: Dict[str, Any]) -> Tuple[str, ...]:
    """Fields of :data:`RESUME_MAY_CHANGE` that the run ``run`` (a config dict) still may not change: ``epochs``
    when its learning-rate schedule runs over the run's length (poly, cosine)."""
    return ("epochs",) if run.get("lr_schedule") in ("poly", "cosine") else ()


def check_resumable(saved: Dict[str, Any], config: TrainConfig, checkpoint) -> None:
    """Raise ValueError listing the fields of ``config`` that a run resumed from ``checkpoint`` may not change."""
    conflicts = resume_conflicts(saved, config)
    if conflicts:
        listed = "; ".join(f"{k} = {given!r} (the run's: {run!r})" for k, (run, given) in conflicts.items())
        raise ValueError(f"resume: {checkpoint} continues its own run, and these options differ from it: {listed}. "
                         f"Leave them out to use the run's values, or start a new run in another folder; a resumed "
                         f"run may change only {', '.join(RESUME_MAY_CHANGE)}"
                         + (" (not epochs: the run's learning-rate schedule, poly or cosine, runs over its number "
                            "of epochs)" if "epochs" in conflicts else ""))


def resume_config(checkpoint: Union[str, Path], changes: Dict[str, Any]) -> TrainConfig:
    """The configuration of the run in ``checkpoint`` with ``changes`` (TrainConfig fields) applied; ``out_dir``
    defaults to the checkpoint's folder. Changes outside :data:`RESUME_MAY_CHANGE` that differ from the run's
    values are refused (ValueError listing them)."""
    saved = load_checkpoint(checkpoint)["config"]
    config = TrainConfig.from_dict({**saved, "out_dir": str(Path(checkpoint).parent), **changes})
    check_resumable(saved, config, checkpoint)
    return config
