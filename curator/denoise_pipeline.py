"""The two-round pipeline for the denoising task: DnCNN on noisy patches, scored against whole images.

The stages mirror the classification pipeline's (round 1, scoring, the drop rule, approval,
round 2) and share its store tables, Parquet score layout, drop rules and approvals. What differs:

- A training sample is a fixed ``(noisy, clean)`` patch. Its "label" is the index of the image it
  was cut from, so a rule's class cap limits the share dropped from any one source image.
- The loss is the per-sample mean squared error. Each validation sample is a whole image, and
  the two validation halves used by the "validated" rule are two halves of the images.
- Rounds are reported as PSNR per test image (table ``psnr``; round 0 is the noisy input), and
  the denoised test images are saved for display.

Score rows carry ``source_image``, ``y`` and ``x`` (the patch's top-left corner in that image).
The column is not called ``source`` because the review queries already use that name for who
made a decision.
"""

import logging
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch

from core.datasets.denoising import DenoisingSplits
from core.denoising import (DenoiseOptions, curvature_cache_limit, evaluate_denoiser, load_splits_for, mse_losses,
                            noisy_psnr, patch_losses, train_denoiser)
from core.models.dncnn import PAPER_DEPTH, PAPER_WIDTH
from core.influence import InfluenceProblem, score_samples, solve_direction, training_gradient_norm
from core.progress import ProgressFn, report
from curator import decisions, runs
from curator.config import RunConfig
from curator.pipeline import (STAGES, RunContext, _save_atomic, apply_default_rule, last_epochs_warnings,
                              store_new_run)
from curator.store import Store
from curator.workspace import Workspace

logger = logging.getLogger(__name__)

#: Folder of a run holding the noisy and denoised test images as ``.npz`` files.
IMAGES_FOLDER = "denoised"


def load_denoise_splits(config: RunConfig) -> DenoisingSplits:
    """Load the patches and images that ``config`` (a denoising run) describes."""
    options = DenoiseOptions.from_dict(config.dataset_options)
    return load_splits_for(options, config.dataset, config.data_dir, config.seed)


def create_denoise_run(workspace: Workspace, store: Store, config: RunConfig, run_id: Optional[str] = None) -> str:
    """Validate ``config`` by loading its images, store the run, and return its id."""
    return store_new_run(workspace, store, config, load_denoise_splits(config), run_id)


class DenoiseContext(RunContext):
    """A ``RunContext`` whose dataset is the denoising splits (fingerprint checked)."""

    def _load_splits(self) -> DenoisingSplits:
        return load_denoise_splits(self.config)

    @property
    def eval_batch_size(self) -> int:
        return DenoiseOptions.from_dict(self.config.dataset_options).eval_batch_size


def images_path(ctx: RunContext, round_number: int, approval_id: Optional[int] = None) -> Path:
    """Return the ``.npz`` file of the test images of a round: 0 noisy, 1 round 1, 2 round 2 of an approval."""
    folder = ctx.dir / IMAGES_FOLDER
    folder.mkdir(exist_ok=True)
    if round_number == 0:
        return folder / "noisy-test.npz"
    if round_number == 1:
        return folder / "round1-test.npz"
    return folder / f"round2-{approval_id}-test.npz"


def _save_images(path: Path, names: list, images: list) -> None:
    tmp = Path(f"{path}.tmp.npz")
    np.savez_compressed(tmp, **{name: np.asarray(image, dtype=np.float32) for name, image in zip(names, images)})
    tmp.replace(path)


def _record_round(ctx: DenoiseContext, round_number: int, history: list, model, approval_id: Optional[int]) -> dict:
    """Store the round's training history and the PSNR of every validation and test image; save test outputs."""
    splits = ctx.splits
    reports = {split: evaluate_denoiser(model, images, ctx.device, ctx.eval_batch_size)
               for split, images in (("test", splits.test), ("validation", splits.val))}
    rows = [(round_number, approval_id, split, row["image"], row["psnr"], row["loss"])
            for split, summary in reports.items() for row in summary["rows"]]
    if round_number == 1:
        rows += [(0, None, split, row["image"], row["psnr"], None)
                 for split, images in (("test", splits.test), ("validation", splits.val))
                 for row in noisy_psnr(images)]
        _save_images(images_path(ctx, 0), splits.test.names, [image[0].numpy() for image in splits.test.noisy])
    _save_images(images_path(ctx, round_number, approval_id), splits.test.names, reports["test"]["estimates"])

    now = pd.Timestamp.now()
    with ctx.store.connect() as connection:
        connection.execute("DELETE FROM history WHERE run_id = ? AND round = ?", [ctx.run_id, round_number])
        connection.execute("DELETE FROM psnr WHERE run_id = ? AND (round = ? OR (? = 1 AND round = 0)) AND "
                           "approval_id IS NOT DISTINCT FROM ?", [ctx.run_id, round_number, round_number, approval_id])
        for row in history:
            # A denoiser has no accuracy; the column stays NaN and the PSNR is in the psnr table.
            connection.execute("INSERT INTO history (run_id, round, epoch, loss, accuracy, lr, seconds) "
                               "VALUES (?, ?, ?, ?, 'NaN'::DOUBLE, ?, ?)",
                               [ctx.run_id, round_number, row["epoch"], row["loss"], row["lr"], row["seconds"]])
        connection.executemany("INSERT INTO psnr (run_id, round, approval_id, split, image, psnr, loss, created_at) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [[ctx.run_id, *row, now] for row in rows])
    return {split: {"mean_psnr": summary["mean_psnr"], "loss": summary["loss"]} for split, summary in reports.items()}


def run_denoise_round1(ctx: DenoiseContext) -> dict:
    """Train round 1 from the seeded initial weights; store PSNR and save the weights and test outputs."""
    started = time.perf_counter()
    runs.update_run(ctx.store, ctx.run_id, status="running", stage="round1")
    initial_path = ctx.dir / "initial.pt"
    if not initial_path.exists():
        _save_atomic(ctx.build_model().state_dict(), initial_path)
    if (ctx.dir / "round1.pt").exists():
        return {}

    model = ctx.load_model("initial.pt")
    history = train_denoiser(model, ctx.splits.train, ctx.config.train_config(1), device=ctx.device,
                             progress=ctx.progress, checkpoint_path=str(ctx.dir / "round1.ckpt"), stage="round1")
    reports = _record_round(ctx, 1, history, model, None)
    _save_atomic(model.state_dict(), ctx.dir / "round1.pt")
    runs.update_run(ctx.store, ctx.run_id, timings={"round1_seconds": time.perf_counter() - started},
                    diagnostics={"round1_last_epochs": history[-2:], "round1_psnr": reports})
    return reports


def image_halves(count: int, seed: int) -> tuple:
    """Split validation image positions ``0..count-1`` into two seeded halves for cross-fitting."""
    if count < 2:
        raise ValueError(f"the validation split has {count} image(s); influence and the drop rule need at "
                         f"least 2 (one per half). Add validation images")
    order = np.random.default_rng(seed + 424242).permutation(count)
    return np.sort(order[0::2]), np.sort(order[1::2])


def _convergence_diagnostics(ctx: DenoiseContext, problem: InfluenceProblem) -> dict:
    """Record the training-gradient norm and warn when round 1's loss was still falling fast.

    Unlike classification runs, no gradient-norm threshold is applied.
    """
    decrease, warnings = last_epochs_warnings(ctx.record)
    for message in warnings:
        logger.warning(message)
    return {"training_gradient_norm": training_gradient_norm(problem), "last_epoch_loss_decrease": decrease,
            "convergence_warnings": warnings}


def _solve_directions(ctx: DenoiseContext, problem: InfluenceProblem, dtype: torch.dtype) -> list:
    """Return the solved directions of the two validation halves, loading them when saved."""
    path = ctx.dir / "directions.pt"
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return [saved["a"].to(ctx.device, dtype), saved["b"].to(ctx.device, dtype)]

    started = time.perf_counter()
    config, val = ctx.config, ctx.splits.val
    diagnostics = _convergence_diagnostics(ctx, problem)
    halves = image_halves(len(val), config.seed)
    directions, solves = [], {}
    for name, half in zip(("a", "b"), halves):
        images = val.subset(half).loader(ctx.eval_batch_size)
        direction, info = solve_direction(problem, images, config.solver, config.damping, progress=ctx.progress,
                                          **config.all_solver_options())
        directions.append(direction)
        solves[name] = {**info, "images": [val.names[i] for i in half]}
    _save_atomic({"a": directions[0].cpu(), "b": directions[1].cpu()}, path)
    diagnostics.update({"solver": config.solver, "curvature": config.curvature, "damping": config.damping,
                        "params": config.params, "num_params": problem.num_params, "loss": "per-sample MSE",
                        "solves": solves, "validation_halves": [len(half) for half in halves]})
    runs.update_run(ctx.store, ctx.run_id, diagnostics={"influence": diagnostics},
                    timings={"solve_seconds": time.perf_counter() - started})
    return directions


def run_denoise_scoring(ctx: DenoiseContext) -> None:
    """Solve for the validation halves' directions, then score every training patch in chunks."""
    if ctx.workspace.has_scores(ctx.run_id):
        return
    runs.update_run(ctx.store, ctx.run_id, status="running", stage="score")
    config = ctx.config
    dtype = torch.float64 if config.influence_dtype == "float64" else torch.float32
    model = ctx.load_model("round1.pt").to(dtype)
    options = {"depth": PAPER_DEPTH, "width": PAPER_WIDTH, **config.model_options}
    cache_limit = curvature_cache_limit(ctx.splits.train.patch_size, options["depth"], options["width"])
    problem = InfluenceProblem(model, mse_losses, ctx.splits.train, params=config.params,
                               curvature=config.curvature, dtype=dtype, cache_limit=cache_limit)
    directions = _solve_directions(ctx, problem, dtype)

    started = time.perf_counter()
    _score_patches_in_chunks(ctx, problem, directions)
    (ctx.dir / "scores.done").write_text("ok")
    runs.update_run(ctx.store, ctx.run_id, timings={"score_seconds": time.perf_counter() - started})


def _score_patches_in_chunks(ctx: DenoiseContext, problem: InfluenceProblem, directions: list) -> None:
    """Score and write each missing chunk of patches, as a temporary file renamed when complete."""
    train, chunk = ctx.splits.train, ctx.config.score_chunk
    n = len(train)
    folder = ctx.workspace.scores_dir(ctx.run_id)
    model = ctx.load_model("round1.pt")
    for number, start in enumerate(range(0, n, chunk)):
        path = folder / f"chunk-{number:05d}.parquet"
        if path.exists():
            continue
        indices = np.arange(start, min(start + chunk, n))
        influence_a = score_samples(problem, directions[0], train, indices=indices).double().numpy()
        influence_b = score_samples(problem, directions[1], train, indices=indices).double().numpy()
        influence = influence_a + influence_b
        if not np.isfinite(influence).all():
            raise RuntimeError(f"scores of training patches {start}..{indices[-1]} contain NaN or infinity; no "
                               f"scores were stored. Raise damping or check the images")
        frame = pd.DataFrame({
            "index": indices.astype(np.int64),
            "sample_id": [train.sample_ids[i] for i in indices],
            "label": train.labels[indices],
            "true_label": pd.array([None] * len(indices), dtype="Int64"),
            "loss": patch_losses(model, train, indices, ctx.device),
            "influence": influence,
            "influence_a": influence_a,
            "influence_b": influence_b,
            "predicted_val_change": -influence / n,
            "source_image": [train.source_names[label] for label in train.labels[indices]],
            "y": train.ys[indices],
            "x": train.xs[indices],
        })
        tmp = Path(f"{path}.tmp")
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)
        report(ctx.progress, "score", min(start + chunk, n), n, "scoring training patches")


def run_denoise_round2(ctx: DenoiseContext, approval_id: Optional[int] = None) -> dict:
    """Retrain from the round-1 initial weights on the patches the approval keeps, with augmentation."""
    started = time.perf_counter()
    approval, approved = decisions.read_approval(ctx.store, ctx.run_id, approval_id)
    runs.update_run(ctx.store, ctx.run_id, status="running", stage="round2")
    kept = np.sort(approved.loc[approved["decision"] == "keep", "index"].to_numpy())
    train = ctx.splits.train
    emptied = sorted(set(train.source_names) - {train.source_names[label] for label in train.labels[kept]})
    if emptied:
        logger.warning("the approved set drops every training patch of image(s) %s", emptied)

    model = ctx.load_model("initial.pt", round_number=2)
    approval_number = int(approval["approval_id"])
    history = train_denoiser(model, train, ctx.config.train_config(2), indices=kept, device=ctx.device,
                             progress=ctx.progress, checkpoint_path=str(ctx.dir / f"round2-{approval_number}.ckpt"),
                             stage="round2")
    reports = _record_round(ctx, 2, history, model, approval_number)
    _save_atomic(model.state_dict(), ctx.dir / f"round2-{approval_number}.pt")
    runs.update_run(ctx.store, ctx.run_id, status="done", stage="done",
                    timings={"round2_seconds": time.perf_counter() - started},
                    diagnostics={"round2_psnr": reports})
    return reports


def run_denoise_stages(workspace: Workspace, store: Store, run_id: str, stages=STAGES,
                       progress: Optional[ProgressFn] = None, approval_id: Optional[int] = None) -> None:
    """Run the named stages of a denoising run in order, recording a failure before re-raising it.

    Raises ``RuntimeError`` under torchrun: these stages have no multi-process path, and every
    rank would train, score and write the store on its own.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError(f"the denoise task runs in one process; start run {run_id} without torchrun")
    ctx = DenoiseContext(workspace, store, run_id, progress)
    try:
        for stage in STAGES:
            if stage not in stages:
                continue
            if stage == "round1":
                run_denoise_round1(ctx)
                ctx.record = runs.get_run(store, run_id)
            elif stage == "score":
                run_denoise_scoring(ctx)
            elif stage == "rule":
                apply_default_rule(ctx)
            elif stage == "approve":
                approval_id = decisions.approve(store, workspace, run_id)
            elif stage == "round2":
                run_denoise_round2(ctx, approval_id)
    except BaseException as error:
        status, message = "failed", f"{type(error).__name__}: {error}"
        if isinstance(error, KeyboardInterrupt):
            status, message = "interrupted", "interrupted; resume to continue from the last finished step"
        runs.update_run(store, run_id, status=status, error=message)
        raise
