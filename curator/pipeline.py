"""The two-round pipeline as resumable stages: round 1, scoring, the drop rule, round 2.

Each stage writes its results so that a crash loses nothing already finished, and skips work whose
results exist: round training resumes from its last epoch checkpoint, scoring from its last
finished chunk. Bulk per-sample results go to Parquet in the run's folder; small state to the store.

Under torchrun every rank runs the same stages: rounds 1 and 2 train with DistributedDataParallel,
the influence solve sums its gradients and curvature products over ranks, and each rank scores its
own chunks. Only rank 0 reads and writes the store and the run's shared files (weights, directions,
``scores.done``). The other ranks receive what it read and wait for what it writes
(``core.distributed.main_only``). The workspace must be on a file system that every rank can open.
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

from core import distributed
from core.datasets import DatasetSplits, load_dataset
from core.device import resolve_device
from core.drop_rules import DropRule
from core.evaluation import predict, split_reports
from core.influence import InfluenceProblem, cross_entropy_losses, score_samples, solve_direction
from core.influence import select_parameters, training_gradient_norm
from core.models import build_model
from core.progress import ProgressFn, report
from core.ten_crop import ten_crop_test_split
from core.training import check_above_chance, train
from curator import decisions, queries, runs
from curator.config import RunConfig
from curator.store import Store
from curator.workspace import Workspace, new_run_id

logger = logging.getLogger(__name__)

#: Warn that round 1 may not be at a minimum when the mean training-loss gradient norm exceeds this.
GRADIENT_NORM_WARNING = 0.05
#: ... or when the last epoch lowered the training loss by more than this share.
LOSS_DECREASE_WARNING = 0.10
#: Warn when a solve ends with ``|(H + dI) s - g| / |g|`` above this. LiSSA at its default depth
#: reached about 0.09 on the default CNN (benchmarks/README.md), where its scores agreed with a
#: converged solve at Pearson 0.996.
SOLVE_RESIDUAL_WARNING = 0.2


class DatasetChangedError(RuntimeError):
    """The dataset on disk no longer matches the fingerprint stored with the run."""


def load_splits(config: RunConfig) -> DatasetSplits:
    options = {"data_dir": config.data_dir} if config.data_dir else {}
    return load_dataset(config.dataset, seed=config.seed, label_noise=config.label_noise,
                        noise_pairs=config.noise_pairs, max_train_samples=config.max_train_samples,
                        **options, **config.dataset_options)


#: Datasets that ``create_run(..., keep_splits=True)`` loaded, by run id, for that run's first
#: ``RunContext`` in the same process: a command that creates a run and then trains it reads the
#: files, and logs their warnings, once.
_created_splits: dict = {}


def create_run(workspace: Workspace, store: Store, config: RunConfig, run_id: Optional[str] = None,
               keep_splits: bool = False) -> str:
    """Validate ``config`` by loading its dataset, store the run, and return its id.

    With ``keep_splits`` the loaded dataset stays in memory until this process first opens the run
    with ``RunContext``, which then uses it instead of loading it again. Relative data paths are
    stored as absolute ones.
    """
    config = config.with_absolute_paths()
    if config.task == "denoise":
        from curator.denoise_pipeline import create_denoise_run

        return create_denoise_run(workspace, store, config, run_id)
    splits = load_splits(config)
    _check_model_settings(config, splits)
    run_id = store_new_run(workspace, store, config, splits, run_id)
    if keep_splits:
        _created_splits.clear()
        _created_splits[run_id] = splits
    return run_id


def store_new_run(workspace: Workspace, store: Store, config: RunConfig, splits, run_id: Optional[str] = None) -> str:
    """Create the run's folder and record, with the dataset's sizes and info; return the run id."""
    run_id = run_id or new_run_id()
    workspace.run_dir(run_id)
    runs.insert_run(store, run_id, config, splits.fingerprint)
    runs.update_run(store, run_id, diagnostics={"dataset": {
        "train": len(splits.train), "validation": len(splits.val), "test": len(splits.test),
        "num_classes": splits.num_classes, "class_names": splits.class_names, **splits.info}})
    return run_id


def _check_model_settings(config: RunConfig, splits: DatasetSplits) -> None:
    """Build the model once and check the device and parameter selection, before anything is stored."""
    resolve_device(config.device)
    image_size = splits.info.get("image_size", list(splits.train[0][0].shape[-2:]))
    model = build_model(config.model, num_classes=splits.num_classes, in_channels=splits.in_channels,
                        image_size=tuple(image_size), seed=config.seed, **config.round_model_options(1))
    select_parameters(model, config.params)
    if config.test_crops == 10:
        ten_crop_test_split(splits)


class RunContext:
    """Everything a stage needs: the run's config, its dataset (fingerprint checked) and paths."""

    def __init__(self, workspace: Workspace, store: Store, run_id: str, progress: Optional[ProgressFn] = None):
        self.workspace = workspace
        self.store = store
        self.run_id = run_id
        self.progress = progress
        self.record = distributed.main_only(runs.get_run, store, run_id)
        self.config = RunConfig.from_dict(self.record["config"])
        self.dir = workspace.run_dir(run_id)
        self.device = distributed.device_for_rank(resolve_device(self.config.device))
        self._splits = None

    def _load_splits(self):
        """Load the run's dataset; a task with its own data overrides this."""
        return load_splits(self.config)

    @property
    def splits(self) -> DatasetSplits:
        if self._splits is None:
            splits = _created_splits.pop(self.run_id, None)
            if splits is None:
                splits = self._load_splits()
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


def _update_run(ctx: RunContext, **fields) -> None:
    """Update the run's record through rank 0, the only rank that opens the store."""
    distributed.main_only(runs.update_run, ctx.store, ctx.run_id, **fields)


def _record_training(ctx: RunContext, round_number: int, history: list, model, n_train: int,
                     approval_id: Optional[int]) -> dict:
    splits = ctx.splits
    reports = split_reports(model, splits, ctx.config.test_crops, ctx.device)
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
    _update_run(ctx, status="running", stage="round1")
    initial_path = ctx.dir / "initial.pt"
    if not distributed.main_only(initial_path.exists):
        distributed.main_only(_save_atomic, ctx.build_model().state_dict(), initial_path)
    if distributed.main_only((ctx.dir / "round1.pt").exists):
        return {}

    model = ctx.load_model("initial.pt")
    history = train(model, ctx.splits.train, ctx.config.train_config(1), device=ctx.device,
                    progress=ctx.progress, checkpoint_path=str(ctx.dir / "round1.ckpt"), stage="round1",
                    val_data=ctx.splits.val)
    check_above_chance(history, ctx.splits.num_classes, "round1", ctx.config.lr)
    reports = distributed.main_only(_record_training, ctx, 1, history, model, len(ctx.splits.train), None)
    distributed.main_only(_save_atomic, model.state_dict(), ctx.dir / "round1.pt")
    _update_run(ctx, timings={"round1_seconds": time.perf_counter() - started},
                diagnostics={"round1_last_epochs": history[-2:]})
    return reports


def validation_halves(labels: np.ndarray, seed: int) -> tuple:
    """Split validation positions into two halves, stratified by label where every class allows it."""
    rng = np.random.default_rng(seed + 424242)
    # Shuffle within each class, lay the classes end to end and deal the positions out alternately:
    # each class splits evenly, and classes with one sample still alternate between the halves.
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == label)) for label in np.unique(labels)]
                           or [np.array([], dtype=np.int64)])
    half_a, half_b = list(order[0::2]), list(order[1::2])
    if not half_a or not half_b:
        raise ValueError(f"the validation split has {len(labels)} sample(s); it needs at least 2 to compute "
                         f"influence and choose the drop set. Use a larger validation fraction")
    return np.sort(np.array(half_a)), np.sort(np.array(half_b))


def last_epochs_warnings(record: dict) -> tuple:
    """Return ``(loss decrease, warnings)`` from round 1's last two epochs stored in the run ``record``.

    The warnings say when the last epoch still lowered the training loss by more than
    ``LOSS_DECREASE_WARNING``, or when round 1 ran one epoch, so a minimum cannot be judged.
    """
    last = record["diagnostics"].get("round1_last_epochs") or []
    decrease = (last[0]["loss"] - last[1]["loss"]) / max(last[0]["loss"], 1e-12) if len(last) == 2 else 0.0
    warnings = []
    if decrease > LOSS_DECREASE_WARNING:
        warnings.append(f"round 1's training loss still fell {decrease:.0%} in its last epoch; influence "
                        f"assumes a minimum, so train longer")
    if len(last) < 2:
        warnings.append("round 1 ran a single epoch, so whether it reached a minimum cannot be judged; "
                        "influence assumes one, so train longer")
    return decrease, warnings


def _convergence_diagnostics(ctx: RunContext, problem: InfluenceProblem) -> dict:
    gradient_norm = training_gradient_norm(problem)
    decrease, epoch_warnings = last_epochs_warnings(ctx.record)
    warnings = []
    if gradient_norm > GRADIENT_NORM_WARNING:
        warnings.append(f"round 1 may not be at a minimum: the mean training-loss gradient norm is "
                        f"{gradient_norm:.3g} (> {GRADIENT_NORM_WARNING}); influence assumes a minimum, "
                        f"so train longer or lower the learning rate")
    warnings += epoch_warnings
    for message in warnings:
        logger.warning(message)
    return {"training_gradient_norm": gradient_norm, "last_epoch_loss_decrease": decrease,
            "convergence_warnings": warnings}


def _solve_warnings(solver: str, solves: dict) -> list:
    """Return (and log) a warning for each solve whose relative residual is above ``SOLVE_RESIDUAL_WARNING``.

    CG stops on its own tolerance and reports ``converged``; LiSSA has no tolerance on the residual,
    so this is the only sign that its estimate is far from the solution.
    """
    warnings = []
    for name, info in solves.items():
        residual = info.get("relative_residual")
        if residual is not None and residual > SOLVE_RESIDUAL_WARNING:
            warnings.append(f"the {solver} solve of validation half {name} stopped at relative residual "
                            f"{residual:.3g} (> {SOLVE_RESIDUAL_WARNING}), so its scores are rough; raise the "
                            f"damping, give LiSSA more depth, or use --solver cg")
    for message in warnings:
        logger.warning(message)
    return warnings


def run_scoring(ctx: RunContext) -> None:
    """Solve for the validation halves' directions, then score every training sample in chunks.

    Under torchrun the solve's full-data sums are split over ranks, except with the exact solver,
    which every rank runs whole (its curvature products run under vmap, where no collective can).
    """
    if distributed.main_only(ctx.workspace.has_scores, ctx.run_id):
        return
    started = time.perf_counter()
    _update_run(ctx, status="running", stage="score")
    config, splits = ctx.config, ctx.splits
    dtype = torch.float64 if config.influence_dtype == "float64" else torch.float32
    model = ctx.load_model("round1.pt").to(dtype)
    problem = InfluenceProblem(model, cross_entropy_losses, splits.train, params=config.params,
                               curvature=config.curvature, dtype=dtype, across_ranks=config.solver != "exact")

    directions_path = ctx.dir / "directions.pt"
    if distributed.main_only(directions_path.exists):
        saved = torch.load(directions_path, map_location="cpu", weights_only=True)
        directions = [saved["a"].to(ctx.device, dtype), saved["b"].to(ctx.device, dtype)]
    else:
        diagnostics = _convergence_diagnostics(ctx, problem)
        half_a, half_b = validation_halves(splits.val.labels, config.seed)
        directions, solves = [], {}
        for name, half in (("a", half_a), ("b", half_b)):
            # Under torchrun every rank runs the same CG steps on its shard, and machines may not share
            # a folder, so only a single process keeps a checkpoint of the solve.
            checkpoint = None if distributed.is_distributed() else str(ctx.dir / f"solve-{name}.ckpt")
            direction, info = solve_direction(problem, torch.utils.data.Subset(splits.val, half), config.solver,
                                              config.damping, progress=ctx.progress, checkpoint_path=checkpoint,
                                              **config.all_solver_options())
            directions.append(distributed.broadcast(direction))
            solves[name] = info
        distributed.main_only(_save_atomic, {"a": directions[0].cpu(), "b": directions[1].cpu()}, directions_path)
        for name in ("a", "b"):
            (ctx.dir / f"solve-{name}.ckpt").unlink(missing_ok=True)
        diagnostics["convergence_warnings"] += _solve_warnings(config.solver, solves)
        diagnostics.update({"solver": config.solver, "curvature": config.curvature, "damping": config.damping,
                            "params": config.params, "num_params": problem.num_params, "solves": solves,
                            "validation_halves": [len(half_a), len(half_b)]})
        _update_run(ctx, diagnostics={"influence": diagnostics},
                    timings={"solve_seconds": time.perf_counter() - started})

    score_started = time.perf_counter()
    _score_in_chunks(ctx, problem, directions)
    distributed.barrier()
    distributed.main_only((ctx.dir / "scores.done").write_text, "ok")
    distributed.main_only(queries.prepare_scores, ctx.workspace, ctx.run_id)
    _update_run(ctx, timings={"score_seconds": time.perf_counter() - score_started})


def _score_in_chunks(ctx: RunContext, problem: InfluenceProblem, directions: list) -> None:
    """Score and write each missing chunk. Under torchrun a rank takes the chunks that start in its shard.

    A rank's shard is the contiguous block of training positions that its part of the solve
    summed over, so a Gauss-Newton cache built there can be replayed for its chunks. Chunk files
    are named by chunk number alone, so a run interrupted with one world size continues with any
    other. Each chunk is written to a temporary file and renamed, so a finished chunk is never
    half-written.
    """
    splits, chunk = ctx.splits, ctx.config.score_chunk
    train_split = splits.train
    n = len(train_split)
    folder = ctx.workspace.scores_dir(ctx.run_id)
    model = ctx.load_model("round1.pt")
    shard_start, shard_stop = distributed.shard_bounds(n)
    for number, start in enumerate(range(0, n, chunk)):
        path = folder / f"chunk-{number:05d}.parquet"
        if not shard_start <= start < shard_stop or path.exists():
            continue
        indices = np.arange(start, min(start + chunk, n))
        influence_a = score_samples(problem, directions[0], train_split, indices=indices).double().numpy()
        influence_b = score_samples(problem, directions[1], train_split, indices=indices).double().numpy()
        chunk_split = train_split.subset(indices) if hasattr(train_split, "subset") else torch.utils.data.Subset(train_split, indices)
        losses, predictions = predict(model, chunk_split, device=ctx.device)
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
    approval, kept = distributed.main_only(_approved_kept, ctx, approval_id)
    _update_run(ctx, status="running", stage="round2")
    missing = sorted(set(range(ctx.splits.num_classes)) - set(np.unique(ctx.splits.train.labels[kept])))
    if missing:
        logger.warning("the approved set drops every training sample of class(es) %s", missing)

    model = ctx.load_model("initial.pt", round_number=2)
    checkpoint = ctx.dir / f"round2-{approval['approval_id']}.ckpt"
    history = train(model, ctx.splits.train, ctx.config.train_config(2), indices=kept, device=ctx.device,
                    progress=ctx.progress, checkpoint_path=str(checkpoint), stage="round2", val_data=ctx.splits.val)
    check_above_chance(history, ctx.splits.num_classes, "round2", ctx.config.lr)
    reports = distributed.main_only(_record_training, ctx, 2, history, model, len(kept),
                                    int(approval["approval_id"]))
    distributed.main_only(_save_atomic, model.state_dict(), ctx.dir / f"round2-{approval['approval_id']}.pt")
    _update_run(ctx, status="done", stage="done", timings={"round2_seconds": time.perf_counter() - started})
    return reports


def _approved_kept(ctx: RunContext, approval_id: Optional[int]) -> tuple:
    """Return the approval record and the sorted training positions it keeps."""
    approval, approved = decisions.read_approval(ctx.store, ctx.run_id, approval_id)
    return approval, np.sort(approved.loc[approved["decision"] == "keep", "index"].to_numpy())


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
                ctx.record = distributed.main_only(runs.get_run, store, run_id)
            elif stage == "score":
                run_scoring(ctx)
            elif stage == "rule":
                distributed.main_only(apply_default_rule, ctx)
            elif stage == "approve":
                approval_id = distributed.main_only(decisions.approve, store, workspace, run_id)
            elif stage == "round2":
                run_round2(ctx, approval_id)
    except BaseException as error:
        status, message = "failed", f"{type(error).__name__}: {error}"
        if isinstance(error, KeyboardInterrupt):
            status, message = "interrupted", "interrupted; resume to continue from the last finished step"
        if distributed.is_main():
            runs.update_run(store, run_id, status=status, error=message)
        raise


def clear_scores(ctx: RunContext) -> None:
    """Delete the run's scores and solved directions, so that scoring starts again from the solve.

    ``scores.done`` goes first: a crash part-way leaves a run that is simply not scored yet.
    """
    (ctx.dir / "scores.done").unlink(missing_ok=True)
    (ctx.dir / queries.SORTED_SCORES).unlink(missing_ok=True)
    (ctx.dir / "directions.pt").unlink(missing_ok=True)
    for path in ctx.workspace.scores_dir(ctx.run_id).iterdir():
        if path.name.startswith("chunk-"):
            path.unlink()


def rescore_run(workspace: Workspace, store: Store, run_id: str, progress: Optional[ProgressFn] = None) -> None:
    """Score a run's round-1 model again from scratch, and re-apply the run's drop rule to the new scores.

    A person's overrides stay in force. Raises ``FileNotFoundError`` when round 1 has not finished
    and ``DatasetChangedError`` when the dataset changed, both before any score is deleted.
    """
    ctx = RunContext(workspace, store, run_id, progress)
    if not distributed.main_only((ctx.dir / "round1.pt").exists):
        raise FileNotFoundError(f"run {run_id} has no round-1 model ({ctx.dir / 'round1.pt'}); "
                                f"finish round 1 first with `curator resume --run {run_id}`")
    # Loading the dataset checks its fingerprint, so a changed dataset raises here, before the
    # scores that still match the old data are deleted.
    ctx.splits
    had_rule = distributed.main_only(lambda: decisions.current_rule(store, run_id) is not None)
    distributed.main_only(clear_scores, ctx)
    run_stages(workspace, store, run_id, ("score", "rule"), progress)
    if had_rule:
        distributed.main_only(lambda: decisions.set_rule(store, workspace, run_id,
                                                         decisions.current_rule(store, run_id)))
