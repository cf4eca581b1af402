"""A minimal progress bar on stderr (no tqdm): redrawn in place, shown only when stderr is a TTY and
not disabled."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, desc: str = "", enabled: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = (self.stream.isatty() if hasattr(self.stream, "isatty") else False) if enabled is None \
            else enabled
        self.total, self.desc, self.count, self.start = max(int(total), 1), desc, 0, time.perf_counter()
        self.postfix = ""

    def update(self, n: int = 1, **postfix) -> None:
        self.count += n
        if postfix:
            self.postfix = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in postfix.items())
        if self.enabled:
            frac = min(self.count / self.total, 1.0)
            bar = "#" * int(frac * 24)
            elapsed = time.perf_counter() - self.start
            self.stream.write(f"\r{self.desc} [{bar:<24}] {self.count}/{self.total} {elapsed:.0f}s {self.postfix}")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
