"""Job progress as a small JSON file in the run's folder, written by the job and polled by the app."""

import json
import os
import time
from pathlib import Path
from typing import Optional


class ProgressFile:
    """A ``progress(stage, step, total, message)`` callback that writes ``progress.json`` atomically.

    Writes at most every ``interval`` seconds, and always at a stage's last step. ``echo`` is an
    optional second callback, such as a command-line progress bar.
    """

    def __init__(self, path: Path, interval: float = 0.25, echo=None):
        self.path = Path(path)
        self.interval = interval
        self.echo = echo
        self._last = 0.0

    def __call__(self, stage: str, step: int, total: int, message: str = "") -> None:
        if self.echo is not None:
            self.echo(stage, step, total, message)
        now = time.monotonic()
        if now - self._last < self.interval and step < total:
            return
        self._last = now
        write_progress(self.path, {"stage": stage, "step": step, "total": total, "message": message,
                                   "pid": os.getpid(), "time": time.time()})


def write_progress(path: Path, payload: dict) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def read_progress(path: Path) -> Optional[dict]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
