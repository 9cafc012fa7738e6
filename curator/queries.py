"""Read-side SQL for the app and the command line: the samples of a run with their current decision.

Scores come from the run's Parquet files through ``read_parquet``; decisions from the store's
append-only ``decisions`` events, where the latest event per sample and source counts and a
person's decision beats the rule's. Every value is passed as a query parameter. Aggregates
(histogram bins, per-class counts) and gallery pages are computed in DuckDB, so the app never
loads every row.
"""

import numpy as np
import pandas as pd

from curator.store import Store
from curator.workspace import Workspace

# Parameters: run_id, parquet glob.
_SAMPLES = """
WITH ranked AS (
    SELECT sample_index, decision, source,
           row_number() OVER (PARTITION BY sample_index, source ORDER BY event_id DESC) AS position
    FROM decisions WHERE run_id = ?
), latest AS (SELECT * FROM ranked WHERE position = 1),
samples AS (
    SELECT s.*,
           coalesce(p.decision, r.decision, 'keep') AS decision,
           CASE WHEN p.decision IS NOT NULL THEN 'person' ELSE 'rule' END AS source,
           coalesce(r.decision, 'keep') AS rule_decision
    FROM read_parquet(?) AS s
    LEFT JOIN latest AS r ON r.sample_index = s."index" AND r.source = 'rule'
    LEFT JOIN latest AS p ON p.sample_index = s."index" AND p.source = 'person'
)
"""


def _samples_params(workspace: Workspace, run_id: str) -> list:
    if not workspace.has_scores(run_id):
        raise FileNotFoundError(f"run {run_id} has no scores yet; run round 1 and scoring first")
    return [run_id, workspace.scores_glob(run_id)]


def samples(store: Store, workspace: Workspace, run_id: str, where: str = "TRUE", parameters=(),
            order: str = '"index"', limit: int = None, offset: int = 0) -> pd.DataFrame:
    """Return sample rows with their current decision; ``where`` and ``order`` are trusted SQL fragments."""
    sql = _SAMPLES + f"SELECT * FROM samples WHERE {where} ORDER BY {order}"
    params = _samples_params(workspace, run_id) + list(parameters)
    if limit is not None:
        sql += " LIMIT ? OFFSET ?"
        params += [int(limit), int(offset)]
    return store.query(sql, params)


def gallery_page(store: Store, workspace: Workspace, run_id: str, most_unfavorable: bool = True,
                 page: int = 0, page_size: int = 24, label: int = None) -> pd.DataFrame:
    """Return one page of samples ordered by influence, highest first when ``most_unfavorable``."""
    order = 'influence DESC, "index"' if most_unfavorable else 'influence ASC, "index"'
    where, params = ("label = ?", [int(label)]) if label is not None else ("TRUE", [])
    return samples(store, workspace, run_id, where, params, order, limit=page_size, offset=page * page_size)


def count(store: Store, workspace: Workspace, run_id: str) -> dict:
    """Return the number of samples, drops, person overrides and (with label noise) flipped labels."""
    frame = store.query(_SAMPLES + """
        SELECT count(*) AS total,
               count(*) FILTER (WHERE decision = 'drop') AS dropped,
               count(*) FILTER (WHERE source = 'person') AS overrides,
               count(*) FILTER (WHERE true_label IS NOT NULL AND true_label <> label) AS flipped,
               count(*) FILTER (WHERE true_label IS NOT NULL AND true_label <> label AND decision = 'drop') AS flipped_dropped,
               sum(CASE WHEN decision = 'drop' THEN predicted_val_change ELSE 0 END) AS predicted_change,
               count(*) FILTER (WHERE influence > 0) AS positive
        FROM samples""", _samples_params(workspace, run_id))
    row = frame.iloc[0].to_dict()
    return {key: (float(value) if key == "predicted_change" else int(value or 0)) for key, value in row.items()}


def histogram(store: Store, workspace: Workspace, run_id: str, bins: int = 60) -> pd.DataFrame:
    """Return influence histogram bins split by decision: ``low``, ``high``, ``decision``, ``count``."""
    bounds = store.query(_SAMPLES + "SELECT min(influence) AS lo, max(influence) AS hi FROM samples",
                         _samples_params(workspace, run_id)).iloc[0]
    low, high = float(bounds["lo"]), float(bounds["hi"])
    width = (high - low) / bins if high > low else 1.0
    frame = store.query(_SAMPLES + """
        SELECT least(floor((influence - ?) / ?), ? - 1)::INTEGER AS bin, decision, count(*) AS count
        FROM samples GROUP BY ALL ORDER BY bin""", _samples_params(workspace, run_id) + [low, width, bins])
    frame["low"] = low + frame["bin"] * width
    frame["high"] = frame["low"] + width
    return frame


def per_class(store: Store, workspace: Workspace, run_id: str) -> pd.DataFrame:
    """Return per-class counts: ``label``, ``count``, ``dropped``, ``share_dropped``, ``mean_influence``, flips."""
    return store.query(_SAMPLES + """
        SELECT label, count(*) AS count,
               count(*) FILTER (WHERE decision = 'drop') AS dropped,
               count(*) FILTER (WHERE decision = 'drop') / count(*) AS share_dropped,
               avg(influence) AS mean_influence,
               count(*) FILTER (WHERE true_label IS NOT NULL AND true_label <> label) AS flipped,
               count(*) FILTER (WHERE true_label IS NOT NULL AND true_label <> label AND decision = 'drop')
                   AS flipped_dropped
        FROM samples GROUP BY label ORDER BY label""", _samples_params(workspace, run_id))


def score_arrays(store: Store, workspace: Workspace, run_id: str) -> dict:
    """Return NumPy arrays of every sample's index, label, influence and half influences, by index."""
    frame = store.query('SELECT "index", label, influence, influence_a, influence_b FROM read_parquet(?)'
                        ' ORDER BY "index"', [workspace.scores_glob(run_id)])
    return {column: frame[column].to_numpy() for column in frame.columns}


def metrics(store: Store, run_id: str) -> pd.DataFrame:
    return store.query("SELECT * FROM metrics WHERE run_id = ? ORDER BY round, created_at", [run_id])


def history(store: Store, run_id: str) -> pd.DataFrame:
    return store.query("SELECT * FROM history WHERE run_id = ? ORDER BY round, epoch", [run_id])


def flipped_share_found(frame: pd.DataFrame) -> float:
    """Share of flipped labels among the dropped rows of ``frame`` (nan without label noise)."""
    flipped = frame["true_label"].notna() & (frame["true_label"] != frame["label"])
    return float(flipped[frame["decision"] == "drop"].mean()) if (frame["decision"] == "drop").any() else np.nan
