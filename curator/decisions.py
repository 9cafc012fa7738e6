"""Drop decisions: the rule's, a person's overrides, and approvals.

Decisions are append-only events; the current decision of a sample is the latest event, and a
person's event beats the rule's. Clearing an override appends a person event with no decision, so
every change stays in the audit trail and can be undone.
"""

import datetime as dt
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from core.drop_rules import DropRule, select_drop
from curator import queries
from curator.store import Store
from curator.workspace import Workspace

DECISIONS = ("keep", "drop")
#: Warn before approval when a drop set removes more than this share of the data or of any class.
WARNING_SHARE = 0.10


def current_rule(store: Store, run_id: str) -> Optional[DropRule]:
    frame = store.query("SELECT rule FROM rules WHERE run_id = ? ORDER BY event_id DESC LIMIT 1", [run_id])
    return None if frame.empty else DropRule.from_dict(json.loads(frame.iloc[0, 0]))


def preview_rule(store: Store, workspace: Workspace, run_id: str, rule: DropRule) -> np.ndarray:
    """Return the drop mask ``rule`` would give, by training index, without storing anything."""
    arrays = queries.score_arrays(store, workspace, run_id)
    return select_drop(rule, arrays["influence"], arrays["label"], arrays["influence_a"], arrays["influence_b"])


def set_rule(store: Store, workspace: Workspace, run_id: str, rule: DropRule) -> int:
    """Make ``rule`` the run's rule; append rule events only for samples whose rule decision changes.

    Returns the number of samples the rule drops. A person's overrides stay in force.
    """
    mask = preview_rule(store, workspace, run_id, rule)
    now = dt.datetime.now()
    with store.connect() as connection:
        previous = connection.execute(
            "SELECT sample_index FROM (SELECT sample_index, decision, row_number() OVER "
            "(PARTITION BY sample_index ORDER BY event_id DESC) AS position FROM decisions "
            "WHERE run_id = ? AND source = 'rule') WHERE position = 1 AND decision = 'drop'", [run_id]).df()
        was_dropped = np.zeros(len(mask), dtype=bool)
        was_dropped[previous["sample_index"].to_numpy(dtype=np.int64)] = True
        changed = np.flatnonzero(mask != was_dropped)
        events = pd.DataFrame({"run_id": run_id, "sample_index": changed.astype(np.int32),
                               "decision": np.where(mask[changed], "drop", "keep"), "source": "rule",
                               "created_at": now})
        connection.execute("INSERT INTO rules (run_id, rule, created_at) VALUES (?, ?, ?)",
                           [run_id, json.dumps(rule.to_dict()), now])
        connection.register("new_events", events)
        connection.execute("INSERT INTO decisions (run_id, sample_index, decision, source, created_at) "
                           "SELECT run_id, sample_index, decision, source, created_at FROM new_events")
        connection.unregister("new_events")
    return int(mask.sum())


def override(store: Store, run_id: str, sample_index: int, decision: Optional[str]) -> None:
    """Record a person's ``keep`` or ``drop`` for one sample; ``None`` clears it back to the rule's."""
    if decision is not None and decision not in DECISIONS:
        raise ValueError(f"decision must be 'keep', 'drop' or None, got {decision!r}")
    store.execute("INSERT INTO decisions (run_id, sample_index, decision, source, created_at) "
                  "VALUES (?, ?, ?, 'person', ?)", [run_id, int(sample_index), decision, dt.datetime.now()])


def drop_summary(store: Store, workspace: Workspace, run_id: str) -> dict:
    """Describe the current drop set before approval: size, per-class shares, estimate and warnings."""
    totals = queries.count(store, workspace, run_id)
    classes = queries.per_class(store, workspace, run_id)
    warnings = []
    share = totals["dropped"] / max(totals["total"], 1)
    if share > WARNING_SHARE:
        warnings.append(f"drops {share:.0%} of the training data (more than {WARNING_SHARE:.0%})")
    for row in classes.itertuples():
        if row.share_dropped > WARNING_SHARE:
            warnings.append(f"drops {row.share_dropped:.0%} of class {row.label} ({row.dropped} of {row.count})")
        if row.dropped == row.count:
            warnings.append(f"drops every sample of class {row.label}; round 2 cannot learn it")
    return {**totals, "share": share, "per_class": classes, "warnings": warnings}


class StaleDecisionsError(RuntimeError):
    """The run's decisions changed after the caller showed them, so an approval would freeze unseen ones."""


def decisions_version(store: Store, run_id: str) -> int:
    """Return the newest decision or rule event id of the run (0 before any), which every change raises."""
    frame = store.query("SELECT max(event_id) AS newest FROM (SELECT event_id FROM decisions WHERE run_id = ? "
                        "UNION ALL SELECT event_id FROM rules WHERE run_id = ?)", [run_id, run_id])
    newest = frame.iloc[0]["newest"]
    return 0 if pd.isna(newest) else int(newest)


def approve(store: Store, workspace: Workspace, run_id: str, expected_version: Optional[int] = None) -> int:
    """Freeze the current decisions as an approved drop set (a Parquet file) and return its id.

    With ``expected_version`` (a ``decisions_version`` the caller showed), raises
    ``StaleDecisionsError`` instead when a rule change or override has happened since, for
    example in another browser tab.
    """
    _check_version(store, run_id, expected_version)
    frame = queries.samples(store, workspace, run_id)
    frame = frame[["index", "sample_id", "label", "true_label", "influence", "predicted_val_change",
                   "decision", "source"]]
    rule = current_rule(store, run_id)
    now = dt.datetime.now()
    folder = workspace.run_dir(run_id) / "approvals"
    folder.mkdir(exist_ok=True)
    path = folder / f"approval-{now.strftime('%Y%m%d-%H%M%S-%f')}.parquet"
    tmp = Path(f"{path}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    _check_version(store, run_id, expected_version)
    with store.connect() as connection:
        approval_id = connection.execute(
            "INSERT INTO approvals (run_id, rule, n_drop, n_total, path, created_at) VALUES (?, ?, ?, ?, ?, ?)"
            " RETURNING approval_id",
            [run_id, json.dumps(rule.to_dict() if rule else None), int((frame["decision"] == "drop").sum()),
             len(frame), str(path.relative_to(workspace.run_dir(run_id))), now]).fetchone()[0]
    return int(approval_id)


def _check_version(store: Store, run_id: str, expected_version: Optional[int]) -> None:
    if expected_version is None:
        return
    current = decisions_version(store, run_id)
    if current != expected_version:
        raise StaleDecisionsError(
            f"the decisions of run {run_id} changed after this page showed them (version {expected_version}, "
            f"now {current}), for example in another browser tab; nothing was approved. Review the drop set "
            f"as it is now, then approve again")


def get_approval(store: Store, run_id: str, approval_id: Optional[int] = None) -> dict:
    """Return the approval ``approval_id``, or the run's latest one."""
    if approval_id is None:
        frame = store.query("SELECT * FROM approvals WHERE run_id = ? ORDER BY approval_id DESC LIMIT 1", [run_id])
    else:
        frame = store.query("SELECT * FROM approvals WHERE run_id = ? AND approval_id = ?", [run_id, approval_id])
    if frame.empty:
        raise LookupError(f"run {run_id} has no approved drop set"
                          + (f" with id {approval_id}" if approval_id is not None else "")
                          + "; approve one on the Review page or with `curator run`")
    approval = frame.iloc[0].to_dict()
    approval["path"] = _approval_file(store.workspace, run_id, approval["path"])
    return approval


def _approval_file(workspace: Workspace, run_id: str, stored: str) -> Path:
    """Return where an approval's file is in this workspace.

    Approvals store their file relative to the run folder, so a moved or copied workspace reads its
    own. Older approvals stored an absolute path. The file of that name in this run folder is
    preferred to it, so a copy does not read the original workspace's file.
    """
    path = Path(stored)
    if not path.is_absolute():
        return workspace.run_dir(run_id) / path
    in_this_run = workspace.run_dir(run_id) / "approvals" / path.name
    return in_this_run if in_this_run.exists() or not path.exists() else path


def read_approval(store: Store, run_id: str, approval_id: Optional[int] = None) -> tuple:
    """Return ``(approval record, its drop set frame)``; the latest approval unless ``approval_id``.

    Raises ``FileNotFoundError`` naming the fix when the approval's file is gone.
    """
    approval = get_approval(store, run_id, approval_id)
    if not approval["path"].exists():
        raise FileNotFoundError(f"the file of approved drop set #{approval['approval_id']} of run {run_id} is "
                                f"missing ({approval['path']}); approve the drop set again on the Review page")
    return approval, pd.read_parquet(approval["path"])
