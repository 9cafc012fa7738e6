"""Leave-one-out verification of a run's influence scores: run it, store it, read it back for the app.

``run_verification`` retrains round 1's model without each of ``3k`` chosen samples (see
``core.verify``) and stores one row in the ``verifications`` table, with every point of the
scatter as JSON. ``latest_verification`` returns those points as a DataFrame and
``verification_figure`` draws them.
"""

import datetime as dt
import json
import logging
import math
from typing import Optional

import pandas as pd

from core.progress import ProgressFn
from core.verify import MODES, RetrainSettings, verify_influence
from curator.pipeline import RunContext
from curator.store import Store
from curator.workspace import Workspace

logger = logging.getLogger(__name__)

#: Warm retraining runs this many epochs at the run's learning rate times ``WARM_LR_FACTOR``.
WARM_EPOCHS = 5
WARM_LR_FACTOR = 0.1

POINT_COLUMNS = ["index", "sample_id", "group", "influence", "predicted", "actual"]


def retrain_settings(ctx: RunContext, mode: str, epochs: Optional[int] = None,
                     lr: Optional[float] = None) -> RetrainSettings:
    """Return the retraining settings of ``mode`` for the run: round 1's, shortened for "warm"."""
    round1 = ctx.config.train_config(1)
    if epochs is None:
        epochs = WARM_EPOCHS if mode == "warm" else round1.epochs
    if lr is None:
        lr = round1.lr * WARM_LR_FACTOR if mode == "warm" else round1.lr
    return RetrainSettings(epochs=epochs, lr=lr, optimizer=round1.optimizer,
                           momentum=round1.momentum, weight_decay=round1.weight_decay,
                           batch_size=round1.batch_size, seed=round1.seed)


def _read_scores(store: Store, workspace: Workspace, run_id: str) -> pd.Series:
    if not workspace.has_scores(run_id):
        raise LookupError(f"run {run_id} has no influence scores yet; run its scoring stage first "
                          f"(`curator run` or `curator job --stages round1,score`)")
    frame = store.query('SELECT "index", influence FROM read_parquet(?) ORDER BY "index"',
                        [workspace.scores_glob(run_id)])
    return frame["influence"]


def run_verification(workspace: Workspace, store: Store, run_id: str, k: int = 10, mode: str = "warm",
                     epochs: Optional[int] = None, lr: Optional[float] = None,
                     progress: Optional[ProgressFn] = None) -> dict:
    """Verify run ``run_id``'s scores by leave-one-out retraining; store and return the result.

    "warm" starts each retraining from ``round1.pt`` (``WARM_EPOCHS`` epochs at a tenth of the
    run's learning rate unless ``epochs`` and ``lr`` are given); "scratch" from ``initial.pt``
    with round 1's whole schedule. Costs ``3k + 2`` retrainings.
    """
    if mode not in MODES:
        raise ValueError(f"unknown verification mode {mode!r}; choose one of {MODES}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}; the check retrains 3k + 2 times, so k 10 costs 32")
    ctx = RunContext(workspace, store, run_id, progress)
    if ctx.config.task != "classification":
        raise ValueError(f"leave-one-out verification retrains classifiers, and run {run_id} is a "
                         f"{ctx.config.task} run; verify a classification run instead")
    scores = _read_scores(store, workspace, run_id)
    start_file = "round1.pt" if mode == "warm" else "initial.pt"
    if not (ctx.dir / start_file).exists():
        raise FileNotFoundError(f"run {run_id} has no {start_file} to retrain from ({ctx.dir / start_file}); "
                                f"finish round 1 first with `curator resume --run {run_id}`")
    splits = ctx.splits
    if len(scores) != len(splits.train):
        raise ValueError(f"run {run_id} has {len(scores)} scores for {len(splits.train)} training samples; "
                         f"rescore the run")
    for message in (ctx.record["diagnostics"].get("influence") or {}).get("convergence_warnings", []):
        logger.warning("%s (expect weak leave-one-out agreement until round 1 converges)", message)
    if ctx.config.round1_augmentation not in (None, "", "none"):
        logger.warning("round 1 trained with augmentation %r; leave-one-out retraining runs without it",
                       ctx.config.round1_augmentation)

    start = ctx.load_model(start_file)
    settings = retrain_settings(ctx, mode, epochs, lr)
    result = verify_influence(start, splits.train, splits.val, scores.to_numpy(), k=k, mode=mode,
                              settings=settings, seed=ctx.config.seed, device=ctx.device, progress=progress)
    for point in result["points"]:
        point["sample_id"] = splits.train.sample_ids[point["index"]]
    result["verification_id"] = _insert(store, run_id, result)
    return result


def _finite_or_none(value: float) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else float(value)


def _insert(store: Store, run_id: str, result: dict) -> int:
    with store.connect() as connection:
        row = connection.execute(
            "INSERT INTO verifications (run_id, mode, k, pearson, spearman, noise_floor, baseline_loss, settings,"
            " points, seconds, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING verification_id",
            [run_id, result["mode"], result["k"], _finite_or_none(result["pearson"]),
             _finite_or_none(result["spearman"]), result["noise_floor"], result["baseline_loss"],
             json.dumps(result["settings"]), json.dumps(result["points"]), result["seconds"],
             dt.datetime.now()]).fetchone()
    return int(row[0])


def list_verifications(store: Store, run_id: str) -> pd.DataFrame:
    """Return one row per stored verification of the run, newest first, without the points."""
    return store.query("SELECT verification_id, mode, k, pearson, spearman, noise_floor, seconds, created_at"
                       " FROM verifications WHERE run_id = ? ORDER BY verification_id DESC", [run_id])


def latest_verification(store: Store, run_id: str, mode: Optional[str] = None) -> pd.DataFrame:
    """Return the points of the run's newest verification (of ``mode``, when given) as a DataFrame.

    Columns: ``index`` (training-set position), ``sample_id``, ``group`` ("unfavorable",
    "favorable" or "random"), ``influence``, ``predicted`` and ``actual`` (changes of the total
    validation loss on removing the sample; positive means the loss rises). ``frame.attrs`` holds
    ``verification_id``, ``mode``, ``k``, ``pearson``, ``spearman``, ``noise_floor``, ``settings``
    and ``created_at``. An empty frame when the run has no verification yet.
    """
    sql = "SELECT * FROM verifications WHERE run_id = ?"
    parameters = [run_id]
    if mode is not None:
        sql += " AND mode = ?"
        parameters.append(mode)
    rows = store.query(sql + " ORDER BY verification_id DESC LIMIT 1", parameters)
    if rows.empty:
        return pd.DataFrame(columns=POINT_COLUMNS)
    row = rows.iloc[0]
    frame = pd.DataFrame(json.loads(row["points"]), columns=POINT_COLUMNS)
    frame.attrs = {"verification_id": int(row["verification_id"]), "mode": row["mode"], "k": int(row["k"]),
                   "pearson": row["pearson"], "spearman": row["spearman"], "noise_floor": row["noise_floor"],
                   "settings": json.loads(row["settings"]), "created_at": row["created_at"]}
    return frame


def verification_figure(frame: pd.DataFrame):
    """Return a Plotly scatter of predicted against actual change, one colour per group, with ``y = x``."""
    import plotly.express as px

    title = "Predicted vs actual change in total validation loss"
    if frame.attrs.get("pearson") is not None:
        title += f" (Pearson {frame.attrs['pearson']:.2f}, Spearman {frame.attrs['spearman']:.2f})"
    figure = px.scatter(frame, x="predicted", y="actual", color="group", hover_data=["index", "sample_id", "influence"],
                        labels={"predicted": "predicted change (-influence / n)",
                                "actual": "actual change (leave-one-out retraining)"}, title=title)
    if len(frame):
        low = float(min(frame["predicted"].min(), frame["actual"].min()))
        high = float(max(frame["predicted"].max(), frame["actual"].max()))
        figure.add_shape(type="line", x0=low, y0=low, x1=high, y1=high, line={"dash": "dot", "color": "gray"})
    return figure
