"""The training progress bar: tqdm on stderr, shown only when the stream is a TTY (unless told otherwise)."""
from __future__ import annotations

import sys

from ..common.optional import require


class Progress:
    """``total`` steps under ``desc``; ``enabled=None`` shows the bar only on a TTY, True and False force it."""

    def __init__(self, total: int, desc: str = "", enabled: bool | None = None, stream=None):
        tqdm = require("tqdm", "tqdm", "train", "the training progress bar").tqdm
        self.bar = tqdm(total=max(int(total), 1), desc=desc, file=stream or sys.stderr, dynamic_ncols=True,
                        disable=None if enabled is None else not enabled)  # tqdm's None: off when not a TTY
        self.enabled = not self.bar.disable  # (tqdm sets disable when the bar closes)

    def update(self, n: int = 1, **postfix) -> None:
        """Advance by ``n`` steps and show ``postfix`` (e.g. ``loss=0.42``) after the bar."""
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
