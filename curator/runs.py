"""Run records in the store: create, update status, read, and list."""

import datetime as dt
import json
import os
from typing import Optional

from curator.config import RunConfig
from curator.store import Store

STATUSES = ("created", "running", "scored", "done", "failed", "interrupted")


class RunNotFoundError(KeyError):
    """No run with the requested id is stored. A ``KeyError``, so existing ``except KeyError`` callers still match."""

    def __str__(self) -> str:
        # KeyError.__str__ returns repr() of the message, which wraps it in a second pair of quotes.
        return str(self.args[0]) if self.args else ""


def _now() -> dt.datetime:
    return dt.datetime.now()


def insert_run(store: Store, run_id: str, config: RunConfig, fingerprint: str) -> None:
    with store.connect() as connection:
        connection.execute(
            "INSERT INTO runs (run_id, created_at, updated_at, dataset, model, fingerprint, config, status)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 'created')",
            [run_id, _now(), _now(), config.dataset, config.model, fingerprint, json.dumps(config.to_dict())])


def update_run(store: Store, run_id: str, status: Optional[str] = None, stage: Optional[str] = None,
               error: Optional[str] = None, diagnostics: Optional[dict] = None,
               timings: Optional[dict] = None) -> None:
    """Update the given fields; ``diagnostics`` and ``timings`` are merged into the stored JSON."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown run status {status!r}")
    with store.connect() as connection:
        row = connection.execute("SELECT diagnostics, timings FROM runs WHERE run_id = ?", [run_id]).fetchone()
        if row is None:
            raise RunNotFoundError(f"run {run_id!r} not found in {store.path}")
        merged_diagnostics = {**json.loads(row[0] or "{}"), **(diagnostics or {})}
        merged_timings = {**json.loads(row[1] or "{}"), **(timings or {})}
        connection.execute(
            "UPDATE runs SET updated_at = ?, status = coalesce(?, status), stage = coalesce(?, stage),"
            " error = CASE WHEN ? THEN ? ELSE error END, diagnostics = ?, timings = ? WHERE run_id = ?",
            [_now(), status, stage, error is not None or status in ("running", "done", "scored"), error,
             json.dumps(merged_diagnostics, default=str), json.dumps(merged_timings), run_id])


def get_run(store: Store, run_id: str) -> dict:
    """Return the run as a dict with ``config``, ``diagnostics`` and ``timings`` decoded."""
    frame = store.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
    if frame.empty:
        raise RunNotFoundError(f"run {run_id!r} not found in {store.path}; list runs with `curator results --list`")
    run = frame.iloc[0].to_dict()
    for key in ("config", "diagnostics", "timings"):
        run[key] = json.loads(run[key]) if run[key] else {}
    return run


#: Runs first, newest first, then the per-seed runs of experiments (ids ``<experiment>-s<seed>``),
#: so an experiment's many runs do not take the place of a person's latest run as the default.
_RUN_ORDER = ("ORDER BY EXISTS (SELECT 1 FROM experiments WHERE starts_with(runs.run_id, experiment_id || '-s')), "
              "created_at DESC, run_id DESC")


def list_runs(store: Store):
    """Return every run: the ones started on their own, newest first, then those of experiments."""
    return store.query(f"SELECT run_id, created_at, dataset, model, status, stage, error FROM runs {_RUN_ORDER}")


def latest_run_id(store: Store) -> Optional[str]:
    """Return the newest run that no experiment started, else the newest experiment run, else None."""
    row = store.query(f"SELECT run_id FROM runs {_RUN_ORDER} LIMIT 1")
    return None if row.empty else row.iloc[0, 0]


def process_alive(pid: int) -> bool:
    """Return True when a process with ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
