"""The workspace folder: one DuckDB file plus one folder per run for bulk results and checkpoints."""

import os
import re
import secrets
import time
from pathlib import Path

DEFAULT_WORKSPACE = "workspace"
DATABASE_NAME = "curator.duckdb"

_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Workspace:
    """Paths inside a workspace folder. Every path a run writes to is resolved inside ``root``.

    With ``create=False`` (read-only commands) a folder without a database raises instead of
    being created, so a mistyped path does not leave an empty workspace behind.
    """

    def __init__(self, root=None, create: bool = True):
        root = root or os.environ.get("CURATOR_WORKSPACE") or DEFAULT_WORKSPACE
        self.root = Path(root).expanduser().resolve()
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"workspace {self.root} is a file, not a folder; choose a folder with --workspace "
                             f"or $CURATOR_WORKSPACE")
        if not create and not (self.root / DATABASE_NAME).exists():
            raise FileNotFoundError(f"workspace {self.root} has no {DATABASE_NAME}; check the --workspace path, "
                                    f"or start a run there with `curator run`")
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "runs").mkdir(exist_ok=True)

    @property
    def database(self) -> Path:
        return self.root / DATABASE_NAME

    def run_dir(self, run_id: str) -> Path:
        """Return (and create) the folder of ``run_id``; rejects ids that could escape the workspace."""
        check_run_id(run_id)
        path = self.root / "runs" / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def scores_dir(self, run_id: str) -> Path:
        path = self.run_dir(run_id) / "scores"
        path.mkdir(exist_ok=True)
        return path

    def scores_glob(self, run_id: str) -> str:
        return str(self.scores_dir(run_id) / "*.parquet")

    def has_scores(self, run_id: str) -> bool:
        return (self.run_dir(run_id) / "scores.done").exists()


def check_run_id(run_id: str) -> str:
    """Raise ``ValueError`` unless ``run_id`` is 1-64 letters, digits, '-' or '_'."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise ValueError(f"invalid run id {run_id!r}: use 1-64 letters, digits, '-' or '_'")
    return run_id


def new_run_id() -> str:
    """Return a sortable, unique run id such as ``20261204-213501-a1b2``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
