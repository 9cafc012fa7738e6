"""The ``curator`` command line: the whole pipeline headless, export, results, and the app."""

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

logger = logging.getLogger("curator")


def _add_workspace(parser):
    parser.add_argument("--workspace", default=None,
                        help="workspace folder holding curator.duckdb and one folder per run "
                             "(default: $CURATOR_WORKSPACE or ./workspace)")


def _add_run_options(parser):
    from core.datasets import LOADERS
    from core.drop_rules import DEFAULT_ALPHA, DEFAULT_MAX_FRACTION, RULES
    from core.influence import defaults
    from core.presets import PRESETS
    from curator.config import DENOISE_PRESET, TASKS

    # Settings a preset can set default to None here, so that only flags given explicitly override it.
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS), metavar="NAME",
                        help="start from one of the paper's recipes, e.g. resnet110-cifar10 or its CPU-sized "
                             f"resnet110-cifar10-cpu; explicit flags override it. Presets: {', '.join(sorted(PRESETS))}")
    parser.add_argument("--dataset", default=None,
                        help=f"dataset: {', '.join(LOADERS)} (default: digits, embedded, or the preset's)")
    parser.add_argument("--data-dir", default=None,
                        help="the dataset's folder or file: the folder holding cifar-10-batches-py, the SVHN .mat "
                             "files, an image tree train/<class>/..., a CSV of path,label, or an .npz file")
    parser.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a dataset loader option, value in JSON, e.g. image_size=224, val_fraction=0.2, "
                             "use_extra=false or whiten=zca; repeatable")
    parser.add_argument("--max-train-samples", type=int, default=None,
                        help="train on a stratified, seeded subset of this many training samples (default: all)")
    parser.add_argument("--model", default=None, help="model name (default: small_cnn, or the preset's)")
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a model builder option of both rounds, value in JSON, e.g. width=32 for small_cnn or "
                             "dropout=0.2 for densenet40; repeatable")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the weights and the noise")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs of each round (default: 30, or the preset's)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="training batch size (default: 64, or the preset's)")
    parser.add_argument("--test-crops", type=int, choices=[1, 10], default=None,
                        help="test-time views: 1, or 10 crops of an image-file dataset decoded at its resize "
                             "option (default: 1, or the preset's; the ImageNet presets use 10)")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default: 1e-3 with Adam, or the preset's)")
    parser.add_argument("--label-noise", type=float, default=0.0,
                        help="share of training labels to flip for a demo, e.g. 0.1 (default: 0)")
    parser.add_argument("--noise-pairs", default=None, metavar="A:B,C:D",
                        help="flip labels only between class pairs, e.g. 3:5,7:1 (class 3 becomes 5, 7 becomes 1); "
                             "needs --label-noise (default: symmetric noise over all classes)")
    parser.add_argument("--solver", default=defaults.SOLVER, choices=["cg", "exact", "lissa", "paper"],
                        help=f"inverse-Hessian solver (default: {defaults.SOLVER})")
    parser.add_argument("--curvature", default=defaults.CURVATURE, choices=["gauss_newton", "hessian"],
                        help=f"curvature matrix (default: {defaults.CURVATURE})")
    parser.add_argument("--damping", type=float, default=None,
                        help=f"added to the curvature's diagonal (default: {defaults.DAMPING}, or the preset's)")
    parser.add_argument("--solver-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a solver option such as tol=1e-5, max_iter=300, depth=1000 or scale=50; repeatable")
    parser.add_argument("--params", default=None,
                        help="parameters to take influence over: all, last_layer, or module names joined by commas "
                             "(default: all, or the preset's)")
    parser.add_argument("--drop-rule", default="validated", choices=RULES,
                        help="drop rule (default: validated; 'paper' drops every positive score)")
    parser.add_argument("--drop-value", type=float, default=None,
                        help="the rule's value: threshold, count (top_k), share (top_fraction) or "
                             f"maximum share (validated, default {DEFAULT_MAX_FRACTION:g})")
    parser.add_argument("--drop-alpha", type=float, default=DEFAULT_ALPHA,
                        help=f"validated rule: drop nothing unless its cross-fitted gain beats random orderings "
                             f"at p <= this (default {DEFAULT_ALPHA:g}; 0 turns the test off)")
    parser.add_argument("--class-cap", type=float, default=1 / 3,
                        help="largest share of any class that may be dropped (default: 0.333)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--task", default="classification", choices=TASKS,
                        help="classification, or denoise: DnCNN learns to remove Gaussian noise from grayscale "
                             f"images and is scored on whole validation images; denoise starts from preset "
                             f"{DENOISE_PRESET} (default: classification)")
    parser.add_argument("--sigma", type=float, default=None,
                        help="denoise: noise standard deviation on the 0-255 scale (default: 25)")
    for split, example in (("train", "BSD400"), ("val", "BSD68"), ("test", "Set12")):
        parser.add_argument(f"--{split}-dir", default=None,
                            help=f"denoise: folder of {split} images, e.g. {example} (default: <data-dir>/{split}, "
                                 f"or scikit-image's bundled images without --data-dir)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="curator", description="Find training samples that hurt a model, review them, retrain without them.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run round 1, scoring, the drop rule and round 2 headless",
                              description="Run the whole two-round pipeline and print a summary.")
    _add_workspace(run)
    _add_run_options(run)
    run.add_argument("--no-round2", action="store_true", help="stop after scoring and the drop rule")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    resume = commands.add_parser(
        "resume", help="continue an interrupted run from its last finished step",
        description="Continue a run from its last finished epoch or scoring chunk, through the stages the "
                    "interrupted command asked for.")
    _add_workspace(resume)
    resume.add_argument("--run", "--run-id", dest="run", required=True,
                        help="run id (spell it --run-id under torchrun, whose own --run-path makes --run ambiguous)")
    resume.add_argument("--quiet", action="store_true", help="no progress bar")

    score = commands.add_parser("score", help="score a finished round-1 model again from scratch",
                                description="Delete a run's scores and solved directions, compute them again and "
                                            "re-apply its drop rule. Works with and without torchrun.")
    _add_workspace(score)
    score.add_argument("--run", "--run-id", dest="run", default=None,
                       help="run id (default: the latest run; spell it --run-id under torchrun)")
    score.add_argument("--quiet", action="store_true", help="no progress bar")

    job = commands.add_parser("job", help="run stages of an existing run (used by the app)",
                              description="Run the named stages of an existing run; the app starts its jobs this way.")
    _add_workspace(job)
    job.add_argument("--run", "--run-id", dest="run", required=True, help="run id (--run-id under torchrun)")
    job.add_argument("--stages", required=True, help="comma-separated stages: round1,score,rule,approve,round2")
    job.add_argument("--approval", type=int, default=None, help="approval id for round2 (default: the latest)")

    export = commands.add_parser(
        "export", help="write the curated index of an approved drop set",
        description="Write one row per training sample (index, sample_id, label, influence, decision, and "
                    "true_label with label noise) of an approved drop set as CSV, JSON or Parquet.")
    _add_workspace(export)
    export.add_argument("--run", default=None, help="run id (default: the latest run)")
    export.add_argument("--approval", type=int, default=None, help="approval id (default: the latest)")
    export.add_argument("--format", choices=["csv", "json", "parquet"], default=None,
                        help="file format (default: from the output file's suffix)")
    export.add_argument("--output", required=True, help="file to write")

    results = commands.add_parser("results", help="print a run's settings, diagnostics and metrics",
                                  description="Print a run's settings, solver diagnostics, timings, test and "
                                              "validation metrics of both rounds, and its drop set.")
    _add_workspace(results)
    results.add_argument("--run", default=None, help="run id (default: the latest run)")
    results.add_argument("--format", choices=["json", "text"], default="text", help="output format")
    results.add_argument("--list", action="store_true", help="list all runs instead")

    experiment = commands.add_parser(
        "experiment", help="compare round 2 with round 1 and with controls over several seeds",
        description="For each seed: round 1, scoring and the drop rule, then retrain from the same initial "
                    "weights on all samples, without the drop set, without the paper rule's drop set, without a "
                    "random set and without the highest-loss set. Reports test error per arm with paired "
                    "95% intervals, and with --label-noise how well each ranking finds the flipped labels.")
    _add_workspace(experiment)
    _add_run_options(experiment)
    experiment.add_argument("--seeds", type=int, default=5,
                            help="number of seeds, counted up from --seed (default: 5)")
    experiment.add_argument("--cleanlab-folds", type=int, default=None, metavar="K",
                            help="cross-validation folds behind the cleanlab ranking of flipped labels, where "
                                 "cleanlab is installed and --label-noise is set (default: 4; 0 uses the "
                                 "round-1 model's own probabilities, which hide memorised flipped labels)")
    experiment.add_argument("--resume", default=None, metavar="EXPERIMENT",
                            help="continue a stored experiment by id instead of starting one")
    experiment.add_argument("--show", default=None, metavar="EXPERIMENT",
                            help="print a stored experiment's summary without running anything")
    experiment.add_argument("--list", action="store_true", help="list stored experiments")
    experiment.add_argument("--format", choices=["json", "text"], default="text", help="summary format")
    experiment.add_argument("--quiet", action="store_true", help="no progress bar")

    verify = commands.add_parser(
        "verify", help="check a run's influence scores by leave-one-out retraining",
        description="Retrain without each of the K most unfavorable, K most favorable and K random training "
                    "samples, and report how well -influence/n predicted the actual change in total "
                    "validation loss (Pearson and Spearman). Costs 3K+2 retrainings.")
    _add_workspace(verify)
    verify.add_argument("--run", default=None, help="run id (default: the latest run)")
    verify.add_argument("--k", type=int, default=10, help="samples per group (default: 10)")
    verify.add_argument("--mode", choices=["warm", "scratch"], default="warm",
                        help="warm: a few epochs from the round-1 weights (default); scratch: round 1's "
                             "whole schedule from its initial weights")
    verify.add_argument("--epochs", type=int, default=None,
                        help="epochs per retraining (default: 5 for warm, round 1's for scratch)")
    verify.add_argument("--lr", type=float, default=None,
                        help="learning rate of retraining (default: round 1's, divided by 10 for warm)")
    verify.add_argument("--quiet", action="store_true", help="no progress bar")

    app = commands.add_parser("app", help="start the Streamlit app",
                              description="Start the Streamlit app on 127.0.0.1 for this workspace.")
    _add_workspace(app)
    app.add_argument("--port", type=_port_number, default=8501, help="port on 127.0.0.1 (default: 8501)")
    return parser


#: Commands that run under torchrun, one process per device; the others run in one process.
RANKED_COMMANDS = ("run", "resume", "job", "score")


def _port_number(text: str) -> int:
    """Parse a TCP port for argparse: a whole number from 1 to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {text!r} must be a whole number from 1 to 65535, e.g. 8501")
    return port


def _launched_with_ranks() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _is_main_rank() -> bool:
    """Return True in a single process and on torchrun's rank 0, the only rank that opens the store."""
    return int(os.environ.get("RANK", "0")) == 0


def _open(args, create: bool = True):
    """Return the workspace and its store; under torchrun the other ranks get ``None`` for the store.

    Read-only commands pass ``create=False`` so that a mistyped path is reported, not created.
    """
    from curator.store import Store
    from curator.workspace import Workspace

    workspace = Workspace(args.workspace, create=create)
    return workspace, Store(workspace) if _is_main_rank() else None


class _ProgressBar:
    """A tqdm bar per stage, fed by the engine's progress callback."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.stage = None

    def __call__(self, stage, step, total, message=""):
        if not self.enabled:
            return
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total or None, desc=stage, unit="step", leave=True, dynamic_ncols=True,
                            mininterval=0.5 if sys.stderr.isatty() else 5.0)
        if total and self.bar.total != total:
            self.bar.total = total
        self.bar.set_postfix_str(message, refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _config_from_args(args):
    from core.drop_rules import DEFAULT_MAX_FRACTION, DropRule
    from curator.config import RunConfig

    value = args.drop_value
    if value is None and args.drop_rule == "validated":
        value = DEFAULT_MAX_FRACTION
    if value is None and args.drop_rule in ("threshold", "top_k", "top_fraction"):
        raise SystemExit(f"curator run: --drop-rule {args.drop_rule} needs --drop-value")
    rule = DropRule(args.drop_rule, value, args.class_cap, alpha=args.drop_alpha or None)
    settings = {"solver_options": _parse_solver_options(args.solver_option) or None,
                "dataset_options": _parse_json_options(args.data_option, "--data-option") or None,
                "model_options": _parse_json_options(args.model_option, "--model-option") or None,
                "dataset": args.dataset, "data_dir": args.data_dir, "model": args.model,
                "max_train_samples": args.max_train_samples, "epochs": args.epochs, "batch_size": args.batch_size,
                "lr": args.lr, "params": args.params, "noise_pairs": args.noise_pairs, "damping": args.damping,
                "test_crops": args.test_crops}
    settings = {key: value for key, value in settings.items() if value is not None}
    settings.update(seed=args.seed, label_noise=args.label_noise, solver=args.solver, curvature=args.curvature,
                    drop_rule=rule.to_dict(), device=args.device)
    preset = _denoise_preset(args, settings) or args.preset
    if preset:
        return RunConfig.from_preset(preset, **settings)
    return RunConfig(**settings)


def _denoise_preset(args, settings: dict):
    """Return the preset of a denoising run (None for classification) and fold the denoising flags into ``settings``.

    ``--data-option`` and ``--model-option`` add to the preset's dataset and model options
    instead of replacing them, so ``--sigma 50`` keeps the preset's patch count.
    """
    from core.presets import preset_settings
    from curator.config import DENOISE_PRESET

    preset = args.preset or (DENOISE_PRESET if args.task == "denoise" else None)
    base = preset_settings(preset) if preset else {}
    flags = {"sigma": args.sigma, "train_dir": args.train_dir, "val_dir": args.val_dir, "test_dir": args.test_dir}
    if base.get("task") != "denoise":
        if args.task == "denoise":
            raise SystemExit(f"curator run: preset {preset} is a classification recipe; drop --preset or choose "
                             f"dncnn-denoise or {DENOISE_PRESET} for --task denoise")
        denoise_flags = [f"--{key.replace('_', '-')}" for key, value in flags.items() if value is not None]
        if denoise_flags:
            raise ValueError(f"{', '.join(denoise_flags)} apply only to denoising; add --task denoise or leave "
                             f"them out")
        return None
    settings["dataset_options"] = {**base.get("dataset_options", {}), **settings.get("dataset_options", {}),
                                   **{key: value for key, value in flags.items() if value is not None}}
    settings["model_options"] = {**base.get("model_options", {}), **settings.get("model_options", {})}
    settings.setdefault("dataset", "folder" if args.data_dir or args.train_dir else base["dataset"])
    return preset


def _parse_json_options(pairs: list, flag: str) -> dict:
    """Turn ``["image_size=224", "whiten=zca"]`` into ``{"image_size": 224, "whiten": "zca"}``.

    Values are read as JSON (numbers, true/false, null, lists); anything else stays a string.
    """
    options = {}
    for pair in pairs:
        key, separator, text = pair.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"{flag} {pair!r} must look like KEY=VALUE, e.g. image_size=224")
        try:
            options[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            options[key.strip()] = text
    return options


def _parse_solver_options(pairs: list) -> dict:
    """Turn ``["tol=1e-5", "max_iter=300"]`` into ``{"tol": 1e-05, "max_iter": 300}``."""
    options = {}
    for pair in pairs:
        key, separator, text = pair.partition("=")
        if not separator or not key:
            raise ValueError(f"solver option {pair!r} must look like KEY=VALUE, e.g. tol=1e-5")
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                value = text
        options[key.strip()] = value
    return options


def _run_job(workspace, store, run_id, stages, approval_id=None, quiet=True):
    from curator.pipeline import run_stages
    from curator.progress import ProgressFile

    folder = workspace.run_dir(run_id)
    main_rank = _is_main_rank()
    bar = _ProgressBar(not quiet and main_rank)
    progress = ProgressFile(folder / "progress.json", echo=bar) if main_rank else None
    try:
        with _run_lock(workspace, folder, run_id):
            run_stages(workspace, store, run_id, stages, progress, approval_id)
    except KeyboardInterrupt:
        if main_rank:
            print(f"\nrun {run_id} interrupted; continue it with: curator resume --workspace {workspace.root} "
                  f"--run {run_id}", file=sys.stderr)
        raise
    finally:
        bar.close()


@contextlib.contextmanager
def _run_lock(workspace, folder: Path, run_id: str):
    """Hold the run's job lock for the block; under torchrun rank 0 takes it for every rank.

    When rank 0 cannot take it, ``main_only`` makes every rank raise, so no rank waits at the first
    collective of a job that rank 0 never starts.
    """
    from core import distributed
    from curator.job_lock import job_lock

    with contextlib.ExitStack() as stack:
        def take_lock():
            stack.enter_context(job_lock(folder, f"run {run_id}",
                                         f"resume it with `curator resume --workspace {workspace.root} --run {run_id}`"))

        distributed.main_only(take_lock)
        yield


def _print_summary(results: dict) -> None:
    from curator.results import mean_test_psnr, test_errors

    errors = test_errors(results)
    drop = results.get("drop_set") or {}
    print(f"run {results['run_id']}: {results['dataset']} / {results['model']}, status {results['status']}")
    if drop:
        print(f"  drop set: {drop['dropped']} of {drop['total']} training samples ({drop['rule_description']})")
        if drop.get("flipped"):
            print(f"  flipped labels dropped: {drop['flipped_dropped']} of {drop['flipped']}")
    for round_number, error in sorted(errors.items()):
        print(f"  round {round_number} test error: {error:.4f}")
    config = results.get("config") or {}
    augmentation = (config.get("round1_augmentation"), config.get("round2_augmentation"))
    if 2 in errors and augmentation[0] != augmentation[1]:
        print(f"  round 2 also changes augmentation ({augmentation[0] or 'none'} -> {augmentation[1] or 'none'}), "
              f"so part of the difference is not the drop; `curator experiment` retrains on all samples to separate them")
    for round_number, value in sorted(mean_test_psnr(results).items()):
        name = "noisy input" if round_number == 0 else f"round {round_number}"
        print(f"  {name} mean test PSNR: {value:.2f} dB")
    for warning in (results["diagnostics"].get("influence") or {}).get("convergence_warnings", []):
        print(f"  warning: {warning}")
    seconds = results.get("timings", {})
    if seconds:
        print("  seconds: " + ", ".join(f"{key.replace('_seconds', '')} {value:.1f}" for key, value in seconds.items()))


def _command_run(args) -> int:
    from core import distributed
    from curator.pipeline import create_run
    from curator.results import run_results

    config = _config_from_args(args)
    workspace, store = _open(args)
    started = time.perf_counter()
    run_id = distributed.main_only(create_run, workspace, store, config, keep_splits=True)
    if _is_main_rank():
        print(f"run {run_id} in {workspace.root}", file=sys.stderr)
    stages = ["round1", "score", "rule"] + ([] if args.no_round2 else ["approve", "round2"])
    distributed.main_only(_record_requested_stages, workspace, store, run_id, stages)
    _run_job(workspace, store, run_id, stages, quiet=args.quiet)
    if _is_main_rank():
        _print_summary(run_results(store, workspace, run_id))
        print(f"  total: {time.perf_counter() - started:.1f} s")
    return 0


def _stages_to_resume(store, run_id) -> list:
    from curator import decisions, runs

    run = runs.get_run(store, run_id)
    try:
        decisions.get_approval(store, run_id)
        approved = True
    except LookupError:
        approved = False

    requested_file = Path(run["diagnostics"].get("requested_stages_file") or "")
    if requested_file.name and requested_file.exists():
        # Finish what the interrupted command asked for; an approval it already made is reused.
        stages = json.loads(requested_file.read_text())
        return [stage for stage in stages if not (stage == "approve" and approved)]

    stages = ["round1", "score", "rule"]
    if approved:
        stages.append("round2")
    if run["stage"] == "round2" and "round2" not in stages:
        stages += ["approve", "round2"]
    return stages


def _record_requested_stages(workspace, store, run_id, stages) -> None:
    """Store the stages a command asked for, so that `curator resume` finishes the same ones."""
    from curator import runs

    path = workspace.run_dir(run_id) / "requested_stages.json"
    path.write_text(json.dumps(list(stages)))
    runs.update_run(store, run_id, diagnostics={"requested_stages_file": str(path)})


def _command_resume(args) -> int:
    from core import distributed
    from curator import runs
    from curator.results import run_results

    workspace, store = _open(args)
    stages = distributed.main_only(_stages_to_resume, store, args.run)
    status = distributed.main_only(lambda: runs.get_run(store, args.run)["status"])
    if status == "done" or (status == "scored" and "round2" not in stages):
        if _is_main_rank():
            print(f"run {args.run} has already finished (status {status}); nothing to resume")
        return 0
    _run_job(workspace, store, args.run, stages, quiet=args.quiet)
    if _is_main_rank():
        _print_summary(run_results(store, workspace, args.run))
    return 0


def _command_score(args) -> int:
    from core import distributed
    from curator.pipeline import rescore_run
    from curator.progress import ProgressFile
    from curator.results import run_results

    workspace, store = _open(args)
    run_id = distributed.main_only(_resolve_run, store, args.run)
    main_rank = _is_main_rank()
    bar = _ProgressBar(not args.quiet and main_rank)
    folder = workspace.run_dir(run_id)
    try:
        with _run_lock(workspace, folder, run_id):
            rescore_run(workspace, store, run_id,
                        ProgressFile(folder / "progress.json", echo=bar) if main_rank else None)
    finally:
        bar.close()
    if main_rank:
        _print_summary(run_results(store, workspace, run_id))
    return 0


def _resolve_run(store, run_id):
    from curator import runs

    run_id = run_id or runs.latest_run_id(store)
    if run_id is None:
        raise SystemExit("no runs in this workspace yet; start one with `curator run`")
    runs.get_run(store, run_id)  # raises RunNotFoundError, naming the id and how to list runs
    return run_id


def _command_export(args) -> int:
    from curator.export import export

    workspace, store = _open(args, create=False)
    path = export(store, _resolve_run(store, args.run), args.output, args.format, args.approval)
    print(path)
    return 0


def _command_results(args) -> int:
    from curator import jobs, runs
    from curator.results import run_results

    workspace, store = _open(args, create=False)
    if args.list:
        frame = runs.list_runs(store)
        frame["status"] = [jobs.job_state(store, workspace, run_id)["status"] if status == "running" else status
                           for run_id, status in zip(frame["run_id"], frame["status"])]
        print(frame.to_json(orient="records", date_format="iso") if args.format == "json" else frame.to_string())
        return 0
    results = run_results(store, workspace, _resolve_run(store, args.run))
    if args.format == "json":
        print(json.dumps(results, indent=1, default=str))
    else:
        _print_summary(results)
    return 0


def _command_experiment(args) -> int:
    from curator import experiment, experiment_summary
    from curator.progress import ProgressFile

    workspace, store = _open(args)
    if args.list:
        frame = experiment.list_experiments(store)
        print(frame.to_json(orient="records", date_format="iso") if args.format == "json" else frame.to_string())
        return 0
    experiment_id = args.show or args.resume
    if experiment_id is None:
        if args.seeds < 1:
            raise ValueError(f"--seeds {args.seeds} must be at least 1")
        seeds = list(range(args.seed, args.seed + args.seeds))
        folds = {} if args.cleanlab_folds is None else {"cleanlab_folds": args.cleanlab_folds}
        config = experiment.ExperimentConfig(seeds=seeds, run=_config_from_args(args).to_dict(), **folds)
        experiment_id = experiment.create_experiment(store, config)
        print(f"experiment {experiment_id} in {workspace.root}", file=sys.stderr)
    if args.show is None:
        bar = _ProgressBar(not args.quiet)
        try:
            experiment.run_experiment(workspace, store, experiment_id,
                                      ProgressFile(experiment.progress_path(workspace, experiment_id), echo=bar))
        except KeyboardInterrupt:
            print(f"\nexperiment {experiment_id} interrupted; continue it with: curator experiment --workspace "
                  f"{workspace.root} --resume {experiment_id}", file=sys.stderr)
            raise
        finally:
            bar.close()
    summary = experiment_summary.experiment_summary(store, experiment_id)
    if args.format == "json":
        print(json.dumps(summary, indent=1, default=str))
    else:
        print(experiment_summary.summary_text(summary))
    return 0


def _command_verify(args) -> int:
    from curator.verify import run_verification

    workspace, store = _open(args)
    run_id = _resolve_run(store, args.run)
    bar = _ProgressBar(not args.quiet)
    try:
        result = run_verification(workspace, store, run_id, k=args.k, mode=args.mode, epochs=args.epochs,
                                  lr=args.lr, progress=bar)
    finally:
        bar.close()
    print(f"run {run_id}: {args.mode} leave-one-out check of {len(result['points'])} samples "
          f"(verification {result['verification_id']})")
    print(f"  Pearson {result['pearson']:.3f}, Spearman {result['spearman']:.3f} between predicted and actual "
          f"change in total validation loss")
    print(f"  change from another batch order alone (cancelled by pairing): {result['noise_floor']:.3g}; "
          f"{result['seconds']:.0f} s")
    return 0


def _command_app(args) -> int:
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    if args.workspace:
        env["CURATOR_WORKSPACE"] = str(Path(args.workspace).resolve())
    command = [sys.executable, "-m", "streamlit", "run", str(root / "run_app.py"),
               "--server.address", "127.0.0.1", "--server.port", str(args.port)]
    return subprocess.call(command, cwd=root, env=env)


def main(argv=None) -> int:
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    args = build_parser().parse_args(argv)
    if _launched_with_ranks() and args.command not in RANKED_COMMANDS:
        raise SystemExit(f"curator {args.command} runs in one process; start it without torchrun "
                         f"(torchrun runs only: {', '.join(RANKED_COMMANDS)})")
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level if _is_main_rank() else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    handlers = {"run": _command_run, "resume": _command_resume, "export": _command_export,
                "results": _command_results, "app": _command_app, "verify": _command_verify,
                "experiment": _command_experiment, "score": _command_score}
    try:
        if _launched_with_ranks():
            from core import distributed

            distributed.setup()
            try:
                return _dispatch(args, handlers)
            finally:
                distributed.teardown()
        code = _dispatch(args, handlers)
        sys.stdout.flush()  # so a closed pipe raises here and not at interpreter exit
        return code
    except KeyboardInterrupt:
        # What was interrupted and how to continue it was printed where it happened; finished
        # steps are stored, so a traceback adds nothing.
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) closed stdout early. Point stdout at devnull so the final
        # flush at exit cannot raise again, and exit like other Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1


def _dispatch(args, handlers) -> int:
    try:
        if args.command == "job":
            workspace, store = _open(args)
            _run_job(workspace, store, args.run, args.stages.split(","), args.approval)
            return 0
        return handlers[args.command](args)
    except (ValueError, LookupError, FileNotFoundError, RuntimeError) as error:
        print(f"curator {args.command}: error: {error}", file=sys.stderr)
        return 2
