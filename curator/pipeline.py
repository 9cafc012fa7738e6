"""The two-round pipeline as resumable stages: round 1, scoring, the drop rule, round 2.

Each stage writes its results so that a crash loses nothing already finished, and skips work whose
results exist: round training resumes from its last epoch checkpoint, scoring from its last
finished chunk. Bulk per-sample results go to Parquet in the run's folder; small state to the store.
"""

import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch

from core.datasets import DatasetSplits, load_dataset
from core.device import resolve_device
from core.drop_rules import DropRule
from core.evaluation import evaluate, predict
from core.influence import InfluenceProblem, cross_entropy_losses, score_samples, solve_direction
from core.influence import training_gradient_norm
from core.models import build_model
from core.progress import ProgressFn, report
from core.training import train
from curator import decisions, runs
from curator.config import RunConfig
from curator.store import Store
from curator.workspace import Workspace, new_run_id

logger = logging.getLogger(__name__)

#: Warn that round 1 may not be at a minimum when the mean training-loss gradient norm exceeds this.
GRADIENT_NORM_WARNING = 0.05
#: ... or when the last epoch lowered the training loss by more than this share.
LOSS_DECREASE_WARNING = 0.10


class DatasetChangedError(RuntimeError):
    """The dataset on disk no longer matches the fingerprint stored with the run."""


def load_splits(config: RunConfig) -> DatasetSplits:
    options = {"data_dir": config.data_dir} if config.data_dir else {}
    return load_dataset(config.dataset, seed=config.seed, label_noise=config.label_noise,
                        noise_pairs=config.noise_pairs, max_train_samples=config.max_train_samples,
                        **options, **config.dataset_options)


def create_run(workspace: Workspace, store: Store, config: RunConfig, run_id: Optional[str] = None) -> str:
    """Validate ``config`` by loading its dataset, store the run, and return its id."""
    if config.task == "denoise":
        from curator.denoise_pipeline import create_denoise_run

        return create_denoise_run(workspace, store, config, run_id)
    splits = load_splits(config)
    run_id = run_id or new_run_id()
    workspace.run_dir(run_id)
    runs.insert_run(store, run_id, config, splits.fingerprint)
    runs.update_run(store, run_id, diagnostics={"dataset": {
        "train": len(splits.train), "validation": len(splits.val), "test": len(splits.test),
        "num_classes": splits.num_classes, "class_names": splits.class_names, **splits.info}})
    return run_id


class RunContext:
    """Everything a stage needs: the run's config, its dataset (fingerprint checked) and paths."""

    def __init__(self, workspace: Workspace, store: Store, run_id: str, progress: Optional[ProgressFn] = None):
        self.workspace = workspace
        self.store = store
        self.run_id = run_id
        self.progress = progress
        self.record = runs.get_run(store, run_id)
        self.config = RunConfig.from_dict(self.record["config"])
        self.dir = workspace.run_dir(run_id)
        self.device = resolve_device(self.config.device)
        self._splits = None

    @property
    def splits(self) -> DatasetSplits:
        if self._splits is None:
            splits = load_splits(self.config)
            if splits.fingerprint != self.record["fingerprint"]:
                raise DatasetChangedError(
                    f"dataset {self.config.dataset!r} changed on disk since run {self.run_id} was created "
                    f"(fingerprint {splits.fingerprint[:12]} != stored {self.record['fingerprint'][:12]}); "
                    f"restore the original files or start a new run")
            self._splits = splits
        return self._splits

    def build_model(self, round_number: int = 1) -> torch.nn.Module:
        """Build the seeded network with round ``round_number``'s model options (dropout may differ)."""
        splits = self.splits
        image_size = splits.info.get("image_size", list(splits.train[0][0].shape[-2:]))
        return build_model(self.config.model, num_classes=splits.num_classes, in_channels=splits.in_channels,
                           image_size=tuple(image_size), seed=self.config.seed,
                           **self.config.round_model_options(round_number))

    def load_model(self, name: str, round_number: int = 1) -> torch.nn.Module:
        model = self.build_model(round_number)

        model.load_state_dict(torch.load(self.dir / name, map_location="cpu", weights_only=True))
        return model.to(self.device)


def _save_atomic(obj, path: Path) -> None:
    tmp = Path(f"{path}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _record_training(ctx: RunContext, round_number: int, history: list, model, n_train: int,
                     approval_id: Optional[int]) -> dict:
    splits = ctx.splits
    reports = {"test": evaluate(model, splits.test, splits.num_classes, ctx.device),
               "validation": evaluate(model, splits.val, splits.num_classes, ctx.device)}
    now = pd.Timestamp.now()
    with ctx.store.connect() as connection:
        connection.execute("DELETE FROM history WHERE run_id = ? AND round = ?", [ctx.run_id, round_number])
        connection.execute("DELETE FROM metrics WHERE run_id = ? AND round = ? AND approval_id IS NOT DISTINCT FROM ?",
                           [ctx.run_id, round_number, approval_id])
        for row in history:
            connection.execute("INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?)",
                               [ctx.run_id, round_number, row["epoch"], row["loss"], row["accuracy"], row["lr"],
                                row["seconds"]])
        for split, summary in reports.items():
            connection.execute("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               [ctx.run_id, round_number, split, approval_id, summary["error"], summary["loss"],
                                summary["count"], n_train, json.dumps(summary["per_class"]), now])
    return reports


def run_round1(ctx: RunContext) -> dict:
    """Train round 1 from the seeded initial weights; save both and the test/validation metrics."""
    started = time.perf_counter()
    runs.update_run(ctx.store, ctx.run_id, status="running", stage="round1")
    initial_path = ctx.dir / "initial.pt"
    if not initial_path.exists():
        _save_atomic(ctx.build_model().state_dict(), initial_path)
    if (ctx.dir / "round1.pt").exists():
        return {}

    model = ctx.load_model("initial.pt")
    history = train(model, ctx.splits.train, ctx.config.train_config(1), device=ctx.device,
                    progress=ctx.progress, checkpoint_path=str(ctx.dir / "round1.ckpt"), stage="round1",
                    val_data=ctx.splits.val)
    reports = _record_training(ctx, 1, history, model, len(ctx.splits.train), None)
    _save_atomic(model.state_dict(), ctx.dir / "round1.pt")
    runs.update_run(ctx.store, ctx.run_id, timings={"round1_seconds": time.perf_counter() - started},
                    diagnostics={"round1_last_epochs": history[-2:]})
    return reports


def validation_halves(labels: np.ndarray, seed: int) -> tuple:
    """Split validation positions into two halves, stratified by label where every class allows it."""
    rng = np.random.default_rng(seed + 424242)
    half_a, half_b = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        half_a.extend(members[0::2])
        half_b.extend(members[1::2])
    if not half_a or not half_b:
        raise ValueError(f"the validation split has {len(labels)} sample(s); it needs at least 2 to compute "
                         f"influence and choose the drop set. Use a larger validation fraction")
    return np.sort(np.array(half_a)), np.sort(np.array(half_b))


def _convergence_diagnostics(ctx: RunContext, problem: InfluenceProblem) -> dict:
    gradient_norm = training_gradient_norm(problem)
    last = ctx.record["diagnostics"].get("round1_last_epochs") or []
    decrease = (last[0]["loss"] - last[1]["loss"]) / max(last[0]["loss"], 1e-12) if len(last) == 2 else 0.0
    warnings = []
    if gradient_norm > GRADIENT_NORM_WARNING:
        warnings.append(f"round 1 may not be at a minimum: the mean training-loss gradient norm is "
                        f"{gradient_norm:.3g} (> {GRADIENT_NORM_WARNING}); influence assumes a minimum, "
                        f"so train longer or lower the learning rate")
    if decrease > LOSS_DECREASE_WARNING:
        warnings.append(f"round 1's training loss still fell {decrease:.0%} in its last epoch; train longer")
    for message in warnings:
        logger.warning(message)
    return {"training_gradient_norm": gradient_norm, "last_epoch_loss_decrease": decrease,
            "convergence_warnings": warnings}


def run_scoring(ctx: RunContext) -> None:
    """Solve for the validation halves' directions, then score every training sample in chunks."""
    if ctx.workspace.has_scores(ctx.run_id):
        return
    started = time.perf_counter()
    runs.update_run(ctx.store, ctx.run_id, status="running", stage="score")
    config, splits = ctx.config, ctx.splits
    dtype = torch.float64 if config.influence_dtype == "float64" else torch.float32
    model = ctx.load_model("round1.pt").to(dtype)
    problem = InfluenceProblem(model, cross_entropy_losses, splits.train, params=config.params,
                               curvature=config.curvature, dtype=dtype)

    directions_path = ctx.dir / "directions.pt"
    if directions_path.exists():
        saved = torch.load(directions_path, map_location="cpu", weights_only=True)
        directions = [saved["a"].to(ctx.device, dtype), saved["b"].to(ctx.device, dtype)]
    else:
        diagnostics = _convergence_diagnostics(ctx, problem)
        half_a, half_b = validation_halves(splits.val.labels, config.seed)
        directions, solves = [], {}
        for name, half in (("a", half_a), ("b", half_b)):
            direction, info = solve_direction(problem, torch.utils.data.Subset(splits.val, half), config.solver,
                                              config.damping, progress=ctx.progress, **config.all_solver_options())
            directions.append(direction)
            solves[name] = info
        _save_atomic({"a": directions[0].cpu(), "b": directions[1].cpu()}, directions_path)
        diagnostics.update({"solver": config.solver, "curvature": config.curvature, "damping": config.damping,
                            "params": config.params, "num_params": problem.num_params, "solves": solves,
                            "validation_halves": [len(half_a), len(half_b)]})
        runs.update_run(ctx.store, ctx.run_id, diagnostics={"influence": diagnostics},
                        timings={"solve_seconds": time.perf_counter() - started})

    score_started = time.perf_counter()
    _score_in_chunks(ctx, problem, directions)
    (ctx.dir / "scores.done").write_text("ok")
    runs.update_run(ctx.store, ctx.run_id, timings={"score_seconds": time.perf_counter() - score_started})


def _score_in_chunks(ctx: RunContext, problem: InfluenceProblem, directions: list) -> None:
    splits, chunk = ctx.splits, ctx.config.score_chunk
    train_split = splits.train
    n = len(train_split)
    folder = ctx.workspace.scores_dir(ctx.run_id)
    model = ctx.load_model("round1.pt")
    for number, start in enumerate(range(0, n, chunk)):
        path = folder / f"chunk-{number:05d}.parquet"
        if path.exists():
            continue
        indices = np.arange(start, min(start + chunk, n))
        influence_a = score_samples(problem, directions[0], train_split, indices=indices).double().numpy()
        influence_b = score_samples(problem, directions[1], train_split, indices=indices).double().numpy()
        losses, predictions = predict(model, torch.utils.data.Subset(train_split, indices), device=ctx.device)
        influence = influence_a + influence_b
        if not np.isfinite(influence).all():
            raise RuntimeError(f"scores of training samples {start}..{indices[-1]} contain NaN or infinity; "
                               f"no scores were stored. Raise damping or check the inputs")
        true = train_split.true_labels[indices] if train_split.true_labels is not None else None
        frame = pd.DataFrame({
            "index": indices.astype(np.int64),
            "sample_id": [train_split.sample_ids[i] for i in indices],
            "label": train_split.labels[indices],
            "true_label": true if true is not None else pd.array([None] * len(indices), dtype="Int64"),
            "loss": losses.astype(np.float64),
            "prediction": predictions.astype(np.int64),
            "influence": influence,
            "influence_a": influence_a,
            "influence_b": influence_b,
            "predicted_val_change": -influence / n,
        })
        tmp = Path(f"{path}.tmp")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        report(ctx.progress, "score", min(start + chunk, n), n, "scoring training samples")


def apply_default_rule(ctx: RunContext) -> None:
    """Record the configured drop rule's decisions, unless a rule was already set for the run."""
    if decisions.current_rule(ctx.store, ctx.run_id) is None:
        decisions.set_rule(ctx.store, ctx.workspace, ctx.run_id, DropRule.from_dict(ctx.config.drop_rule))
    runs.update_run(ctx.store, ctx.run_id, status="scored", stage="review")


def run_round2(ctx: RunContext, approval_id: Optional[int] = None) -> dict:
    """Retrain from the round-1 initial weights on the samples the approval keeps, with augmentation."""
    started = time.perf_counter()
    approval = decisions.get_approval(ctx.store, ctx.run_id, approval_id)
    runs.update_run(ctx.store, ctx.run_id, status="running", stage="round2")
    approved = pd.read_parquet(approval["path"])
    kept = np.sort(approved.loc[approved["decision"] == "keep", "index"].to_numpy())
    missing = sorted(set(range(ctx.splits.num_classes)) - set(np.unique(ctx.splits.train.labels[kept])))
    if missing:
        logger.warning("the approved set drops every training sample of class(es) %s", missing)

    model = ctx.load_model("initial.pt", round_number=2)
    checkpoint = ctx.dir / f"round2-{approval['approval_id']}.ckpt"
    history = train(model, ctx.splits.train, ctx.config.train_config(2), indices=kept, device=ctx.device,
                    progress=ctx.progress, checkpoint_path=str(checkpoint), stage="round2", val_data=ctx.splits.val)
    reports = _record_training(ctx, 2, history, model, len(kept), int(approval["approval_id"]))
    _save_atomic(model.state_dict(), ctx.dir / f"round2-{approval['approval_id']}.pt")
    runs.update_run(ctx.store, ctx.run_id, status="done", stage="done",
                    timings={"round2_seconds": time.perf_counter() - started})
    return reports


STAGES = ("round1", "score", "rule", "approve", "round2")


def run_stages(workspace: Workspace, store: Store, run_id: str, stages=STAGES,
               progress: Optional[ProgressFn] = None, approval_id: Optional[int] = None) -> None:
    """Run the named stages in order, recording a failure in the store before re-raising it."""
    ctx = RunContext(workspace, store, run_id, progress)
    if ctx.config.task == "denoise":
        from curator.denoise_pipeline import run_denoise_stages

        return run_denoise_stages(workspace, store, run_id, stages, progress, approval_id)
    try:
        for stage in STAGES:
            if stage not in stages:
                continue
            if stage == "round1":
                run_round1(ctx)
                ctx.record = runs.get_run(store, run_id)
            elif stage == "score":
                run_scoring(ctx)
            elif stage == "rule":
                apply_default_rule(ctx)
            elif stage == "approve":
                approval_id = decisions.approve(store, workspace, run_id)
            elif stage == "round2":
                run_round2(ctx, approval_id)
    except BaseException as error:
        message = f"{type(error).__name__}: {error}"
        if isinstance(error, KeyboardInterrupt):
            message = "interrupted; resume to continue from the last finished step"
        runs.update_run(store, run_id, status="failed", error=message)
        raise
