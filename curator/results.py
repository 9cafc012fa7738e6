"""A run's results as one JSON-ready dict: settings, diagnostics, timings, metrics and the drop set."""

import json
import math

import pandas as pd

from curator import decisions, denoise_queries, experiment, experiment_summary, queries, runs
from curator.store import Store
from curator.workspace import Workspace


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_clean(item) for item in value]
    return value


def run_results(store: Store, workspace: Workspace, run_id: str) -> dict:
    run = runs.get_run(store, run_id)
    metric_rows = []
    for row in queries.metrics(store, run_id).itertuples():
        metric_rows.append({"round": int(row.round), "split": row.split,
                            "approval_id": None if pd.isna(row.approval_id) else int(row.approval_id),
                            "error": row.error, "loss": row.loss, "count": int(row.count),
                            "n_train": int(row.n_train), "per_class": json.loads(row.per_class)})
    result = {"run_id": run_id, "status": run["status"], "stage": run["stage"], "error": run["error"],
              "created_at": str(run["created_at"]), "dataset": run["dataset"], "model": run["model"],
              "fingerprint": run["fingerprint"], "config": run["config"], "diagnostics": run["diagnostics"],
              "timings": run["timings"], "metrics": metric_rows}
    if run["config"].get("task") == "denoise":
        result["psnr"] = denoise_queries.psnr_records(store, run_id)
    if workspace.has_scores(run_id):
        rule = decisions.current_rule(store, run_id)
        result["drop_set"] = {"rule": rule.to_dict() if rule else None,
                              "rule_description": rule.describe() if rule else None,
                              **queries.count(store, workspace, run_id)}
        approvals = store.query("SELECT approval_id, n_drop, n_total, created_at FROM approvals WHERE run_id = ?"
                                " ORDER BY approval_id", [run_id])
        result["approvals"] = [{"approval_id": int(r.approval_id), "n_drop": int(r.n_drop),
                                "n_total": int(r.n_total), "created_at": str(r.created_at)}
                               for r in approvals.itertuples()]
    experiment_id = experiment.experiment_of_run(store, run_id)
    if experiment_id is not None:
        result["experiment"] = experiment_summary.experiment_summary(store, experiment_id)
    return _clean(result)


def test_errors(results: dict) -> dict:
    """Return ``{1: error, 2: error}`` of the latest test metrics of each round present."""
    errors = {}
    for row in results["metrics"]:
        if row["split"] == "test":
            errors[row["round"]] = row["error"]
    return errors


def mean_test_psnr(results: dict) -> dict:
    """Return ``{round: mean test PSNR in dB}`` of a denoising run; round 0 is the noisy input.

    Round 2 is that of the highest approval id with results. Empty for a classification run.
    """
    rows = [row for row in results.get("psnr") or [] if row["split"] == "test"]
    approvals = [row["approval_id"] for row in rows if row["round"] == 2]
    latest = max(approvals) if approvals else None
    means = {}
    for round_number in (0, 1, 2):
        values = [row["psnr"] for row in rows
                  if row["round"] == round_number and (round_number < 2 or row["approval_id"] == latest)]
        if values:
            means[round_number] = sum(values) / len(values)
    return means
