"""Metrics logs: one JSON object per line (``metrics.jsonl``) and the same rows as CSV (``metrics.csv``,
rewritten with the union of columns whenever a row brings a new one)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, List, Union


def flatten(row: Dict, prefix: str = "") -> Dict[str, object]:
    out = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


class MetricsLog:
    def __init__(self, folder: Union[str, Path]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.folder / "metrics.jsonl"
        self.csv = self.folder / "metrics.csv"
        self.rows: List[Dict] = []
        if self.jsonl.exists():
            self.rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]

    def truncate_after(self, epoch: int) -> None:
        """Drop rows logged after ``epoch`` (a resumed run rewrites what it redoes)."""
        self.rows = [r for r in self.rows if r.get("epoch", 0) <= epoch]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        self._write_csv()

    def append(self, row: Dict) -> None:
        self.rows.append(row)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv()

    def _write_csv(self) -> None:
        flat = [flatten(r) for r in self.rows]
        columns = list(dict.fromkeys(k for r in flat for k in r))
        with self.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(flat)
