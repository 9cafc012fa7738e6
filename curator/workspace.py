"""The workspace folder: one DuckDB file plus one folder per run for bulk results and checkpoints."""

import contextlib
import errno
import os
import re
import secrets
import time
from pathlib import Path

DEFAULT_WORKSPACE = "workspace"
DATABASE_NAME = "curator.duckdb"

_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

CHOOSE_FOLDER = "choose a folder with --workspace or $CURATOR_WORKSPACE"


class WorkspaceNotWritableError(RuntimeError):
    """The workspace folder, a folder in it or its database file is not writable by this user."""


def not_writable_message(root: Path, error: OSError) -> str:
    """Return the message for ``error`` (a permission error on a path in the workspace ``root``)."""
    return (f"workspace {root} is not writable by this user ({error.strerror}: {error.filename}); "
            f"choose a folder you can write to with --workspace or $CURATOR_WORKSPACE, or fix its "
            f"permissions (chmod or chown)")


def check_not_under_file(root: Path) -> None:
    """Raise ``ValueError`` when ``root`` or the nearest of its existing parents is a file."""
    for path in (root, *root.parents):
        if not path.exists():
            continue
        if path.is_dir():
            return
        if path == root:
            raise ValueError(f"workspace {root} is a file, not a folder; {CHOOSE_FOLDER}")
        raise ValueError(f"workspace {root} is inside {path}, which is a file, not a folder; {CHOOSE_FOLDER}")


class Workspace:
    """Paths inside a workspace folder. Every path a run writes to is resolved inside ``root``.

    With ``create=False`` (read-only commands) a folder without a database raises instead of
    being created, so a mistyped path does not leave an empty workspace behind.
    """

    def __init__(self, root=None, create: bool = True):
        root = root or os.environ.get("CURATOR_WORKSPACE") or DEFAULT_WORKSPACE
        self.root = Path(root).expanduser().resolve()
        check_not_under_file(self.root)
        if not create and not (self.root / DATABASE_NAME).exists():
            raise FileNotFoundError(f"workspace {self.root} has no {DATABASE_NAME}; check the --workspace path, "
                                    f"or start a run there with `curator run`")
        if create:
            self._make_folder(self.root)
            self._make_folder(self.root / "runs")
            self._check_writable()
        else:
            # Read-only commands can still read a workspace that this user cannot write to.
            with contextlib.suppress(PermissionError):
                (self.root / "runs").mkdir(exist_ok=True)

    def _make_folder(self, path: Path) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except PermissionError as error:
            raise WorkspaceNotWritableError(not_writable_message(self.root, error)) from error

    def _check_writable(self) -> None:
        """Raise before any work starts when a command that writes could not store its results.

        DuckDB writes the database file and a ``.wal`` file beside it, so both the file and the
        folder must be writable. NOTE: ``os.access`` reports root as able to write any mode bits.
        """
        for path in (self.root, self.root / "runs", self.database):
            if path.exists() and not os.access(path, os.W_OK):
                denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
                raise WorkspaceNotWritableError(not_writable_message(self.root, denied))

    @property
    def database(self) -> Path:
        return self.root / DATABASE_NAME

    def run_dir(self, run_id: str) -> Path:
        """Return (and create) the folder of ``run_id``; rejects ids that could escape the workspace."""
        check_run_id(run_id)
        path = self.root / "runs" / run_id
        self._make_folder(path)
        return path

    def scores_dir(self, run_id: str) -> Path:
        path = self.run_dir(run_id) / "scores"
        self._make_folder(path)
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
