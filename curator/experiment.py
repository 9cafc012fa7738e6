"""Before/after experiments: does retraining without the drop set beat the controls, over several seeds?

For every seed the experiment makes one run (``<experiment id>-s<seed>``) and takes it through the
pipeline's round 1, scoring and drop-rule stages. It then trains each *arm* from that run's
``initial.pt`` with the round-2 settings (augmentation on), so the arms differ only in which
training samples they keep:

- ``round1``: the run's own round 1 (all samples, no augmentation), read from its metrics;
- ``full``: all samples again with augmentation, the seed-noise control;
- ``dropout``: without the drop set of the run's configured rule (default ``validated``);
- ``paper``: without every positively scored sample (the rule of Wang, Huan and Li, no class cap);
- ``random``: without a seeded random set of the same size as ``dropout``'s;
- ``high_loss``: without the same number of highest round-1 training-loss samples.

What is dropped is decided from training and validation data only; the test split is used only to
report error. Each arm's test and validation results are stored in ``experiment_arms`` with their
split, so a validation number is never reported as a test number. With label noise, every seed
also scores how well each ranking finds the flipped labels (``experiment_rankings``).

Work is resumable: runs resume through the pipeline's stages, and an arm or ranking whose rows are
stored is not computed again.
"""

import dataclasses
import datetime as dt
import json
import logging
import os
import secrets
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from core.cross_validation import MAX_FOLDS, MIN_FOLDS
from core.drop_rules import DropRule, select_drop
from core.evaluation import split_reports
from core.progress import ProgressFn, report
from core.training import train
from curator import label_noise, queries, runs
from curator.config import RunConfig
from curator.job_lock import job_lock, job_running
from curator.pipeline import RunContext, create_run, run_stages
from curator.store import Store
from curator.workspace import Workspace, check_run_id

logger = logging.getLogger(__name__)

ARMS = ("round1", "full", "dropout", "paper", "random", "high_loss")
ARM_LABELS = {
    "round1": "round 1: all samples, no augmentation",
    "full": "all samples again, augmentation on (seed-noise control)",
    "dropout": "data dropout: without the configured rule's drop set",
    "paper": "paper's rule: without every positive score",
    "random": "random drop of the same size (control)",
    "high_loss": "drop of the same number of highest-training-loss samples (control)",
}
#: Paired differences are taken against these arms.
REFERENCES = ("round1", "full", "random")

STATUSES = ("created", "running", "done", "failed", "interrupted")


@dataclass
class ExperimentConfig:
    """An experiment's settings: the seeds and the run settings shared by every seed.

    ``run`` is a ``RunConfig`` dict whose ``seed`` is replaced by each seed in turn (the seed sets
    the split, the initial weights and the label noise). ``self_influence_params`` is the
    parameter subset of the self-influence ranking. ``extra_rules`` maps a short name to a
    ``DropRule`` dict; each becomes one more arm, ``rule_<name>``, trained like ``dropout``. With
    ``matched_random`` each also gets ``random_<name>``, a random drop of the same size per seed.
    ``cleanlab_folds`` is the number of cross-validation folds behind the cleanlab ranking of
    flipped labels (0: the round-1 model's own probabilities); it only costs training time where
    cleanlab is installed and the labels are noisy.
    """

    seeds: list
    run: dict = field(default_factory=lambda: RunConfig().to_dict())
    self_influence_params: str = "last_layer"
    extra_rules: dict = field(default_factory=dict)
    matched_random: bool = False
    cleanlab_folds: int = label_noise.DEFAULT_CLEANLAB_FOLDS

    def __post_init__(self):
        seeds = [int(seed) for seed in self.seeds]
        if not seeds:
            raise ValueError("an experiment needs at least one seed; use --seeds 5 for five seeds")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds {seeds} repeat a value; each seed must be different")
        self.seeds = seeds
        run = RunConfig.from_dict(self.run)
        self.run = run.with_absolute_paths().to_dict()
        if run.task != "classification":
            raise ValueError(f"experiments compare classification test error, and this run's task is "
                             f"{self.run['task']!r}; compare denoising rounds on the Denoising results page "
                             f"or with `curator results`")
        for name, rule in self.extra_rules.items():
            check_run_id(name)
            DropRule.from_dict(rule)
        self.cleanlab_folds = int(self.cleanlab_folds)
        if self.cleanlab_folds != 0 and not MIN_FOLDS <= self.cleanlab_folds <= MAX_FOLDS:
            raise ValueError(f"cleanlab folds {self.cleanlab_folds} must be 0 (the round-1 model's own "
                             f"probabilities) or between {MIN_FOLDS} and {MAX_FOLDS}; 4 is the default")

    def arms(self) -> list:
        """Return every arm: ``ARMS``, then ``rule_<name>`` (and ``random_<name>``) per extra rule."""
        arms = list(ARMS)
        for name in self.extra_rules:
            arms += [f"rule_{name}", f"random_{name}"] if self.matched_random else [f"rule_{name}"]
        return arms

    def arm_labels(self) -> dict:
        labels = dict(ARM_LABELS)
        for name, rule in self.extra_rules.items():
            labels[f"rule_{name}"] = DropRule.from_dict(rule).describe()
            labels[f"random_{name}"] = f"random drop of the same size as rule_{name} (control)"
        return {arm: labels[arm] for arm in self.arms()}

    def run_config(self, seed: int) -> RunConfig:
        return RunConfig.from_dict({**self.run, "seed": int(seed)})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ExperimentConfig":
        return cls(**data)


def new_experiment_id() -> str:
    return "exp-" + time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def run_id_for(experiment_id: str, seed: int) -> str:
    return f"{experiment_id}-s{seed}"


def create_experiment(store: Store, config: ExperimentConfig, experiment_id: Optional[str] = None) -> str:
    """Store a new experiment and return its id; nothing is trained until ``run_experiment``."""
    experiment_id = experiment_id or new_experiment_id()
    for seed in config.seeds:
        check_run_id(run_id_for(experiment_id, seed))
    now = dt.datetime.now()
    store.execute("INSERT INTO experiments VALUES (?, ?, ?, ?, 'created', NULL)",
                  [experiment_id, now, now, json.dumps(config.to_dict())])
    return experiment_id


def get_experiment(store: Store, experiment_id: str) -> dict:
    frame = store.query("SELECT * FROM experiments WHERE experiment_id = ?", [experiment_id])
    if frame.empty:
        raise LookupError(f"experiment {experiment_id!r} not found in {store.path}; "
                          f"list experiments with `curator experiment --list`")
    record = frame.iloc[0].to_dict()
    record["config"] = ExperimentConfig.from_dict(json.loads(record["config"]))
    record["status"] = _live_status(store.workspace, experiment_id, record["status"])
    return record


def list_experiments(store: Store) -> pd.DataFrame:
    """Return every experiment, newest first; one stored as running with no live job shows as interrupted."""
    frame = store.query("SELECT experiment_id, created_at, updated_at, status, error FROM experiments "
                        "ORDER BY created_at DESC, experiment_id DESC")
    frame["status"] = [_live_status(store.workspace, experiment_id, status)
                       for experiment_id, status in zip(frame["experiment_id"], frame["status"])]
    return frame


def _live_status(workspace: Workspace, experiment_id: str, status: str) -> str:
    """Return ``status``, except "interrupted" for a running experiment whose job process is gone."""
    folder = workspace.root / "experiments" / experiment_id
    if status == "running" and not job_running(folder):
        return "interrupted"
    return status


def finished_seeds(store: Store, experiment_id: str) -> list:
    """Return the sorted seeds whose every arm has a stored test result."""
    arms = get_experiment(store, experiment_id)["config"].arms()
    frame = store.query("SELECT seed, count(DISTINCT arm) AS arms FROM experiment_arms WHERE experiment_id = ? "
                        "AND split = 'test' AND arm IN (SELECT unnest(?)) GROUP BY seed ORDER BY seed",
                        [experiment_id, arms])
    return [int(seed) for seed, count in zip(frame["seed"], frame["arms"]) if count == len(arms)]


def latest_experiment_id(store: Store) -> Optional[str]:
    frame = list_experiments(store)
    return None if frame.empty else frame.iloc[0]["experiment_id"]


def experiment_of_run(store: Store, run_id: str) -> Optional[str]:
    """Return the id of the experiment that made ``run_id``, or None."""
    for experiment_id in list_experiments(store)["experiment_id"]:
        config = get_experiment(store, experiment_id)["config"]
        if any(run_id_for(experiment_id, seed) == run_id for seed in config.seeds):
            return experiment_id
    return None


def experiment_dir(workspace: Workspace, experiment_id: str) -> Path:
    """Return (and create) the folder of the experiment's progress file, job log and pid file."""
    check_run_id(experiment_id)
    path = workspace.root / "experiments" / experiment_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def progress_path(workspace: Workspace, experiment_id: str) -> Path:
    return experiment_dir(workspace, experiment_id) / "progress.json"


def start_experiment_job(workspace: Workspace, experiment_id: str) -> int:
    """Run (or resume) a stored experiment in a child process, as the app does; return its pid.

    The child writes ``job.log``, ``job.pid`` and ``progress.json`` in ``experiment_dir``.
    """
    folder = experiment_dir(workspace, experiment_id)
    root = str(Path(__file__).resolve().parent.parent)
    command = [sys.executable, "-m", "curator", "experiment", "--workspace", str(workspace.root),
               "--resume", experiment_id, "--quiet"]
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(folder / "job.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env=env, cwd=root)
    (folder / "job.pid").write_text(str(process.pid))
    return process.pid


def job_alive(workspace: Workspace, experiment_id: str) -> bool:
    """Return True while the experiment's last child process is running."""
    pid_file = experiment_dir(workspace, experiment_id) / "job.pid"
    try:
        return runs.process_alive(int(pid_file.read_text().strip()))
    except (OSError, ValueError):
        return False


def _set_status(store: Store, experiment_id: str, status: str, error: Optional[str] = None) -> None:
    store.execute("UPDATE experiments SET status = ?, error = ?, updated_at = ? WHERE experiment_id = ?",
                  [status, error, dt.datetime.now(), experiment_id])


def run_experiment(workspace: Workspace, store: Store, experiment_id: str,
                   progress: Optional[ProgressFn] = None) -> None:
    """Run (or resume) every seed of the experiment, holding its folder's job lock.

    Progress stages: ``experiment`` (seeds finished of all), then the pipeline's and each arm's own
    stages. A failure is stored with the experiment before it is re-raised; finished seeds and
    arms stay stored. Raises ``JobLockedError`` when another process works on the experiment.
    """
    config = get_experiment(store, experiment_id)["config"]
    resume = f"resume it with `curator experiment --workspace {workspace.root} --resume {experiment_id}`"
    with job_lock(experiment_dir(workspace, experiment_id), f"experiment {experiment_id}", resume):
        _set_status(store, experiment_id, "running")
        try:
            for number, seed in enumerate(config.seeds):
                report(progress, "experiment", number, len(config.seeds), f"seed {seed}")
                run_seed(workspace, store, experiment_id, config, seed, progress)
            report(progress, "experiment", len(config.seeds), len(config.seeds), "done")
        except BaseException as error:
            if isinstance(error, KeyboardInterrupt):
                _set_status(store, experiment_id, "interrupted", f"interrupted; {resume}")
            else:
                _set_status(store, experiment_id, "failed", f"{type(error).__name__}: {error}")
            raise
        _set_status(store, experiment_id, "done")


def run_seed(workspace: Workspace, store: Store, experiment_id: str, config: ExperimentConfig, seed: int,
             progress: Optional[ProgressFn] = None) -> None:
    """Take one seed's run through round 1, scoring and the rule, then train its missing arms."""
    run_id = run_id_for(experiment_id, seed)
    try:
        runs.get_run(store, run_id)
    except KeyError:
        create_run(workspace, store, config.run_config(seed), run_id=run_id)
    run_stages(workspace, store, run_id, ["round1", "score", "rule"], progress)

    ctx = RunContext(workspace, store, run_id, progress)
    samples = queries.samples(store, workspace, run_id)
    masks = drop_sets(samples, seed)
    masks.update(extra_drop_sets(samples, config.extra_rules, seed if config.matched_random else None))
    done = set(store.query("SELECT DISTINCT arm FROM experiment_arms WHERE experiment_id = ? AND seed = ?",
                           [experiment_id, seed])["arm"])
    if "round1" not in done:
        _record_round1(ctx, experiment_id, seed, samples)
    for arm in config.arms()[1:]:
        if arm not in done:
            _train_arm(ctx, experiment_id, seed, arm, masks, samples)

    if label_noise.has_label_noise(samples):
        stored = store.query("SELECT count(*) AS n FROM experiment_rankings WHERE experiment_id = ? AND seed = ?",
                             [experiment_id, seed]).iloc[0, 0]
        if stored == 0:
            label_noise.score_rankings(ctx, experiment_id, seed, config.self_influence_params, samples,
                                       masks["dropout"], config.cleanlab_folds)


def drop_sets(samples: pd.DataFrame, seed: int) -> dict:
    """Return each arm's boolean drop mask over training samples in index order.

    ``dropout`` is the run's current decisions (its rule, plus any person's overrides); ``paper``
    drops every positive influence with no class cap; ``random`` and ``high_loss`` drop as many
    samples as ``dropout``, chosen at random (seeded by ``seed``) or by the highest round-1
    training loss.
    """
    samples = samples.sort_values("index")
    n = len(samples)
    dropout = (samples["decision"] == "drop").to_numpy()
    k = int(dropout.sum())
    paper = select_drop(DropRule("paper", None, class_cap=1.0), samples["influence"].to_numpy(),
                        samples["label"].to_numpy())
    rng = np.random.default_rng(seed + 99_991)
    random = np.zeros(n, dtype=bool)
    random[rng.choice(n, size=k, replace=False)] = True
    high_loss = np.zeros(n, dtype=bool)
    high_loss[np.argsort(-samples["loss"].to_numpy(), kind="stable")[:k]] = True
    return {"full": np.zeros(n, dtype=bool), "dropout": dropout, "paper": paper, "random": random,
            "high_loss": high_loss}


def extra_drop_sets(samples: pd.DataFrame, rules: dict, random_seed: Optional[int] = None) -> dict:
    """Return the drop mask of each extra rule, ``rule_<name>``, from the run's stored scores.

    With ``random_seed`` each rule also gets ``random_<name>``: as many samples drawn at random,
    seeded by ``random_seed`` and the rule's name.
    """
    samples = samples.sort_values("index")
    masks = {}
    for name, rule in rules.items():
        mask = select_drop(DropRule.from_dict(rule), samples["influence"].to_numpy(), samples["label"].to_numpy(),
                           samples["influence_a"].to_numpy(), samples["influence_b"].to_numpy())
        masks[f"rule_{name}"] = mask
        if random_seed is not None:
            rng = np.random.default_rng([random_seed, 99_991, zlib.crc32(name.encode())])
            random = np.zeros(len(mask), dtype=bool)
            random[rng.choice(len(mask), size=int(mask.sum()), replace=False)] = True
            masks[f"random_{name}"] = random
    return masks


def add_rules(store: Store, experiment_id: str, rules: dict, matched_random: Optional[bool] = None) -> None:
    """Add extra rule arms (and, with ``matched_random``, their random controls) to a stored experiment.

    Resuming the experiment then trains only the new arms, on the scores already stored.
    """
    config = get_experiment(store, experiment_id)["config"].to_dict()
    config["extra_rules"] = {**config["extra_rules"], **rules}
    if matched_random is not None:
        config["matched_random"] = matched_random
    config = ExperimentConfig.from_dict(config)
    store.execute("UPDATE experiments SET config = ?, updated_at = ? WHERE experiment_id = ?",
                  [json.dumps(config.to_dict()), dt.datetime.now(), experiment_id])


def _insert_arm_rows(ctx: RunContext, experiment_id: str, seed: int, arm: str, reports: dict, n_train: int,
                     n_dropped: int, n_flipped_dropped: Optional[int], drop_path: Optional[str],
                     reused_from: Optional[str], seconds: Optional[float]) -> None:
    now = dt.datetime.now()
    with ctx.store.connect() as connection:
        connection.execute("DELETE FROM experiment_arms WHERE experiment_id = ? AND seed = ? AND arm = ?",
                           [experiment_id, seed, arm])
        for split, summary in reports.items():
            connection.execute(
                "INSERT INTO experiment_arms VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [experiment_id, seed, ctx.run_id, arm, split, summary["error"], summary["loss"], summary["count"],
                 n_train, n_dropped, n_flipped_dropped, json.dumps(summary["per_class"]), drop_path, reused_from,
                 seconds, now])


def _record_round1(ctx: RunContext, experiment_id: str, seed: int, samples: pd.DataFrame) -> None:
    metrics = queries.metrics(ctx.store, ctx.run_id)
    metrics = metrics[metrics["round"] == 1]
    reports = {row.split: {"error": row.error, "loss": row.loss, "count": int(row.count),
                           "per_class": json.loads(row.per_class)} for row in metrics.itertuples()}
    if not {"test", "validation"} <= set(reports):
        raise RuntimeError(f"run {ctx.run_id} has no round-1 test and validation metrics; resume the run")
    seconds = runs.get_run(ctx.store, ctx.run_id)["timings"].get("round1_seconds")
    flipped_dropped = 0 if label_noise.has_label_noise(samples) else None
    _insert_arm_rows(ctx, experiment_id, seed, "round1", reports, len(samples), 0, flipped_dropped, None, None,
                     seconds)


def _save_mask(ctx: RunContext, arm: str, mask: np.ndarray) -> str:
    folder = ctx.dir / "arms"
    folder.mkdir(exist_ok=True)
    path = folder / f"{arm}.parquet"
    tmp = Path(f"{path}.tmp")
    pd.DataFrame({"index": np.arange(len(mask), dtype=np.int64), "dropped": mask}).to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return str(path)


def _train_arm(ctx: RunContext, experiment_id: str, seed: int, arm: str, masks: dict,
               samples: pd.DataFrame) -> None:
    """Train ``arm`` from the run's initial weights with the round-2 settings and store its results.

    An arm whose drop set equals an earlier arm's (for example an empty drop set, which equals
    ``full``) reuses that arm's stored results, because training is seeded and would repeat them.
    """
    mask = masks[arm]
    path = _save_mask(ctx, arm, mask)
    flipped = label_noise.flipped_mask(samples)
    n_flipped_dropped = int((mask & flipped).sum()) if label_noise.has_label_noise(samples) else None
    for earlier in list(masks)[:list(masks).index(arm)]:
        if np.array_equal(masks[earlier], mask):
            rows = ctx.store.query("SELECT * FROM experiment_arms WHERE experiment_id = ? AND seed = ? AND arm = ?",
                                   [experiment_id, seed, earlier])
            if not rows.empty:
                reports = {row.split: {"error": row.error, "loss": row.loss, "count": int(row.count),
                                       "per_class": json.loads(row.per_class)} for row in rows.itertuples()}
                _insert_arm_rows(ctx, experiment_id, seed, arm, reports, int(rows.iloc[0]["n_train"]),
                                 int(mask.sum()), n_flipped_dropped, path, earlier, 0.0)
                return

    started = time.perf_counter()
    kept = np.flatnonzero(~mask)
    model = ctx.load_model("initial.pt", round_number=2)
    checkpoint = ctx.dir / f"arm-{arm}.ckpt"
    train(model, ctx.splits.train, ctx.config.train_config(2), indices=kept, device=ctx.device,
          progress=ctx.progress, checkpoint_path=str(checkpoint), stage=f"seed {seed}: {arm}",
          val_data=ctx.splits.val)
    splits = ctx.splits
    reports = split_reports(model, splits, ctx.config.test_crops, ctx.device)
    _insert_arm_rows(ctx, experiment_id, seed, arm, reports, len(kept), int(mask.sum()), n_flipped_dropped, path,
                     None, time.perf_counter() - started)
    checkpoint.unlink(missing_ok=True)
