"""The DuckDB store: small mutable state (runs, decisions, approvals, metrics) in one file.

DuckDB lets only one process open a database file for writing, and a second process fails with
"Could not set lock on file". So every caller opens the file briefly through ``connect`` and
closes it at once. A lock conflict is retried with backoff for up to ``timeout`` seconds, and then a
``StoreBusyError`` names the file and the fix. Bulk per-sample results are not stored here: jobs
write them as Parquet files in the run's folder, which queries read with ``read_parquet``.
"""

import contextlib
import logging
import os
import random
import re
import time

import duckdb

from curator.workspace import Workspace, WorkspaceNotWritableError

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS event_ids START 1;
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    dataset VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    fingerprint VARCHAR NOT NULL,
    config JSON NOT NULL,
    status VARCHAR NOT NULL,
    stage VARCHAR,
    error VARCHAR,
    diagnostics JSON,
    timings JSON
);
CREATE TABLE IF NOT EXISTS decisions (
    event_id BIGINT PRIMARY KEY DEFAULT nextval('event_ids'),
    run_id VARCHAR NOT NULL,
    sample_index INTEGER NOT NULL,
    decision VARCHAR,
    source VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS rules (
    event_id BIGINT PRIMARY KEY DEFAULT nextval('event_ids'),
    run_id VARCHAR NOT NULL,
    rule JSON NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS approvals (
    approval_id BIGINT PRIMARY KEY DEFAULT nextval('event_ids'),
    run_id VARCHAR NOT NULL,
    rule JSON NOT NULL,
    n_drop INTEGER NOT NULL,
    n_total INTEGER NOT NULL,
    path VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL
);
-- Leave-one-out checks of a run's scores; points is a JSON list of {index, sample_id, group,
-- influence, predicted, actual}, see curator/verify.py.
CREATE TABLE IF NOT EXISTS verifications (
    verification_id BIGINT PRIMARY KEY DEFAULT nextval('event_ids'),
    run_id VARCHAR NOT NULL,
    mode VARCHAR NOT NULL,
    k INTEGER NOT NULL,
    pearson DOUBLE,
    spearman DOUBLE,
    noise_floor DOUBLE NOT NULL,
    baseline_loss DOUBLE NOT NULL,
    settings JSON NOT NULL,
    points JSON NOT NULL,
    seconds DOUBLE NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR NOT NULL,
    round INTEGER NOT NULL,
    split VARCHAR NOT NULL,
    approval_id BIGINT,
    error DOUBLE NOT NULL,
    loss DOUBLE NOT NULL,
    count INTEGER NOT NULL,
    n_train INTEGER NOT NULL,
    per_class JSON NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    run_id VARCHAR NOT NULL,
    round INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    loss DOUBLE NOT NULL,
    accuracy DOUBLE NOT NULL,
    lr DOUBLE NOT NULL,
    seconds DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS psnr (
    run_id VARCHAR NOT NULL,
    round INTEGER NOT NULL,  -- 0 is the noisy input of the denoising task
    approval_id BIGINT,
    split VARCHAR NOT NULL,
    image VARCHAR NOT NULL,
    psnr DOUBLE NOT NULL,
    loss DOUBLE,
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS experiments (
    experiment_id VARCHAR PRIMARY KEY,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    config JSON NOT NULL,
    status VARCHAR NOT NULL,
    error VARCHAR
);
CREATE TABLE IF NOT EXISTS experiment_arms (
    experiment_id VARCHAR NOT NULL,
    seed INTEGER NOT NULL,
    run_id VARCHAR NOT NULL,
    arm VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    error DOUBLE NOT NULL,
    loss DOUBLE NOT NULL,
    count INTEGER NOT NULL,
    n_train INTEGER NOT NULL,
    n_dropped INTEGER NOT NULL,
    n_flipped_dropped INTEGER,
    per_class JSON NOT NULL,
    drop_path VARCHAR,
    reused_from VARCHAR,
    seconds DOUBLE,
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS experiment_rankings (
    experiment_id VARCHAR NOT NULL,
    seed INTEGER NOT NULL,
    run_id VARCHAR NOT NULL,
    ranking VARCHAR NOT NULL,
    auroc DOUBLE NOT NULL,
    "precision" DOUBLE,
    recall DOUBLE NOT NULL,
    precision_at_flipped DOUBLE NOT NULL,
    n_flagged INTEGER NOT NULL,
    n_flipped INTEGER NOT NULL,
    true_positives INTEGER NOT NULL,
    curve JSON NOT NULL,
    created_at TIMESTAMP NOT NULL
);
"""


class StoreBusyError(RuntimeError):
    """The database file stayed locked by another process for longer than the timeout."""


class StoreDamagedError(RuntimeError):
    """The database file exists but DuckDB cannot open it."""


class StoreNotWritableError(WorkspaceNotWritableError):
    """This user may not open the database file, or tried to write it or its folder without permission."""


# Fragments of DuckDB error messages that mean "this user cannot write here" (duckdb 1.x wording).
_DENIED = ("permission denied", "read-only file system")
_READ_ONLY = "attached in read-only mode"
_CREATE_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+) \(.*?\n\);", re.DOTALL)
_SEQUENCE_DEFAULT = re.compile(r"\s+DEFAULT nextval\('\w+'\)")


def _write_denied(error: BaseException, path) -> bool:
    """Return True for a DuckDB error about writing ``path`` (or its ``.wal``) without permission.

    A denied read of another file, such as a run's Parquet scores, is not matched.
    """
    if not isinstance(error, duckdb.Error):
        return False
    message = str(error).lower()
    if _READ_ONLY in message:
        return True
    return str(path).lower() in message and any(part in message for part in _DENIED)


def _add_missing_tables(connection) -> None:
    """Give a read-only connection an empty temporary table for each table its file lacks.

    A file written by an older version lacks the tables added since. Queries of them then return
    no rows instead of failing for the user who cannot write the file. The sequence defaults are
    left out, because a temporary table cannot use the file's sequence.
    """
    present = {row[0] for row in connection.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()").fetchall()}
    for match in _CREATE_TABLE.finditer(SCHEMA):
        if match.group(1) not in present:
            statement = _SEQUENCE_DEFAULT.sub("", match.group(0))
            connection.execute(statement.replace("CREATE TABLE IF NOT EXISTS", "CREATE TEMP TABLE", 1))


class Store:
    """Brief, retried connections to the workspace's DuckDB file.

    When this user cannot write the file or its folder, connections open it with ``read_only=True``
    so that reading commands still work. A write then raises ``StoreNotWritableError``.
    """

    def __init__(self, workspace: Workspace, timeout: float = 20.0):
        self.workspace = workspace
        self.path = workspace.database
        self.timeout = timeout
        self.read_only = self.path.exists() and not self._writable()
        if self.read_only:
            logger.info("opening %s read-only: this user cannot write it or its folder", self.path)
            return
        with self.connect() as connection:
            connection.execute(SCHEMA)

    def _writable(self) -> bool:
        """Return True when this user can write the file and the folder that takes DuckDB's ``.wal`` file."""
        return os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)

    def _not_writable(self, error: Exception, problem: str = "is not writable") -> StoreNotWritableError:
        return StoreNotWritableError(
            f"the workspace database {self.path} {problem} by this user ({error}); choose a "
            f"folder you can write to with --workspace or $CURATOR_WORKSPACE, or fix the "
            f"permissions of {self.path.parent} and {self.path.name} (chmod or chown)")

    @contextlib.contextmanager
    def connect(self):
        """Yield an open connection inside a transaction, retrying while the file is locked.

        The connection is read-write unless ``self.read_only``. A write the user is not allowed to make
        raises ``StoreNotWritableError``, and a file DuckDB cannot read raises ``StoreDamagedError``.
        """
        deadline = time.monotonic() + self.timeout
        delay = 0.02
        attempts = 0
        while True:
            try:
                connection = duckdb.connect(str(self.path), read_only=self.read_only)
                break
            except duckdb.Error as error:
                if _write_denied(error, self.path):
                    raise self._not_writable(error, "could not be opened") from error
                if not isinstance(error, duckdb.IOException) or "lock" not in str(error).lower():
                    raise StoreDamagedError(
                        f"the workspace database {self.path} could not be opened ({error}). It may be "
                        f"damaged or not a DuckDB file: move it aside (the run folders beside it stay "
                        f"intact) or restore it from a backup, then try again") from error
                attempts += 1
                if time.monotonic() > deadline:
                    raise StoreBusyError(
                        f"the workspace database {self.path} stayed locked by another process for "
                        f"{self.timeout:.0f} s ({attempts} attempts); wait for the running job to "
                        f"finish, or stop the other process that has it open") from error
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.5)
        try:
            if self.read_only:
                _add_missing_tables(connection)
            connection.execute("BEGIN TRANSACTION")
            yield connection
            connection.execute("COMMIT")
        except BaseException as error:
            with contextlib.suppress(duckdb.Error):
                connection.execute("ROLLBACK")
            if _write_denied(error, self.path):
                raise self._not_writable(error) from error
            raise
        finally:
            connection.close()

    def query(self, sql: str, parameters=None):
        """Run one read query and return a pandas DataFrame."""
        with self.connect() as connection:
            return connection.execute(sql, parameters or []).df()

    def execute(self, sql: str, parameters=None) -> None:
        with self.connect() as connection:
            connection.execute(sql, parameters or [])
