"""The output folder of a run (``config.out_dir``): ``config.json``, the metrics log (``metrics.jsonl`` and
``metrics.csv``), checkpoints and the files the schedules write.

* A new run refuses a folder that already holds files, unless ``overwrite``: it would otherwise mix its
  checkpoints and log rows with another run's. A resumed run writes into its checkpoint's own folder (or an
  empty one).
* The folder is created at the run's first write, with ``config.json`` (the run's configuration; rewritten
  with every checkpoint, so it describes the latest one). A run that fails before it writes anything leaves no
  folder behind, and an overwriting or resumed run that fails that early leaves the folder as it was.
* ``overwrite``: the first write removes the previous run's ``config.json``, metrics log, ``last.pt``,
  ``best.pt`` and ``curves.png``; other files of the previous run stay.
* A resumed run's log keeps the rows up to the resumed epoch (the run writes the later ones again).
* Only the main process writes (``enabled=False`` in the others, and without an ``out_dir``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

from ..utils.files import atomic_write_text
from .best import BEST_FILE
from .checkpoint import save_checkpoint
from .curves import CURVES_FILE
from .log import MetricsLog

CONFIG_FILE = "config.json"
#: what ``overwrite`` removes at the first write: the files every run writes
REPLACED_FILES = (CONFIG_FILE, "metrics.jsonl", "metrics.csv", "last.pt", BEST_FILE, CURVES_FILE)


class RunDirectory:
    """The folder ``path`` for one run; ``describe()`` gives the run's configuration for ``config.json``.
    The constructor checks that the folder may take the run (ValueError naming the folder otherwise)."""

    def __init__(self, path: Optional[Union[str, Path]], describe: Callable[[], Dict[str, Any]], *,
                 enabled: bool = True, overwrite: bool = False, resume_from: Optional[Union[str, Path]] = None):
        self.path = Path(path) if path is not None else None
        self.enabled = enabled and self.path is not None
        self.overwrite = overwrite
        self._describe = describe
        self._own_run = resume_from is not None and self.path is not None and \
            Path(resume_from).resolve().parent == self.path.resolve()
        self._keep_rows_until: Optional[int] = None
        self._log: Optional[MetricsLog] = None
        self._created = False
        if self.enabled:
            self._check(resume_from)

    def _check(self, resume_from) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"out_dir: {self.path} exists and is not a folder")
        held = sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
        if not held or self.overwrite or self._own_run:
            return
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        if resume_from is None:
            raise ValueError(f"out_dir: {self.path} already holds files ({shown}); a new run needs an empty or new "
                             f"folder. Pass --overwrite (overwrite=True) to replace the run there, or --resume with "
                             f"its checkpoint to continue it")
        raise ValueError(f"out_dir: {self.path} already holds files ({shown}) and is not the folder of the resumed "
                         f"checkpoint {resume_from}; resume into that folder or an empty one, or pass --overwrite "
                         f"(overwrite=True)")

    def resumed(self, epoch: int) -> None:
        """The run continues after ``epoch``: the log keeps the rows up to it."""
        self._keep_rows_until = epoch

    def _open(self) -> Path:
        if self._log is None:
            self._created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
            if self.overwrite and not self._own_run:
                for name in REPLACED_FILES:
                    (self.path / name).unlink(missing_ok=True)
            self._write_config()
            self._log = MetricsLog(self.path)
            if self._keep_rows_until is not None:
                self._log.truncate_after(self._keep_rows_until)
        return self.path

    def _write_config(self) -> None:
        atomic_write_text(self.path / CONFIG_FILE, json.dumps(self._describe(), indent=2) + "\n")

    def file(self, name: str) -> Optional[Path]:
        """The path of output file ``name`` (the folder created if needed); None when this process writes nothing."""
        return self._open() / name if self.enabled else None

    def write_text(self, name: str, text: str) -> Optional[Path]:
        path = self.file(name)
        return atomic_write_text(path, text) if path is not None else None

    def log(self, row: Dict) -> None:
        if self.enabled:
            self._open()
            self._log.append(row)

    def save(self, name: str, state: Dict[str, Any]) -> Optional[Path]:
        """Write checkpoint ``name`` and bring ``config.json`` up to date with it."""
        path = self.file(name)
        if path is None:
            return None
        save_checkpoint(path, state)
        self._write_config()
        return path

    def discard_if_empty(self) -> None:
        """After a failure: remove the folder if this run created it and it holds nothing but ``config.json``
        (and a log without rows)."""
        if not self._created or not self.path.is_dir():
            return
        if {p.name for p in self.path.iterdir()} <= {CONFIG_FILE, "metrics.jsonl", "metrics.csv"} and \
                (self._log is None or not self._log.rows):
            for p in self.path.iterdir():
                p.unlink()
            self.path.rmdir()
