"""The progress callback contract shared by every long-running engine function."""

from typing import Callable, Optional

#: ``progress(stage, step, total, message)``: ``stage`` names the phase ("round1", "solve",
#: "score", ...), ``step`` counts finished units out of ``total`` (``total`` may be 0 when unknown).
ProgressFn = Callable[[str, int, int, str], None]


def report(progress: Optional[ProgressFn], stage: str, step: int, total: int, message: str = "") -> None:
    """Call ``progress`` if one was given."""
    if progress is not None:
        progress(stage, step, total, message)
