"""Plain logic behind the app's controls: the run selector, the setup form, rule controls and jobs.

Nothing here imports Streamlit, so the pages stay thin and every decision they make is unit-tested.
"""

import inspect
from dataclasses import dataclass
from typing import Optional

from core.datasets import LOADERS
from core.drop_rules import DEFAULT_CLASS_CAP, DEFAULT_MAX_FRACTION, RULES, DropRule
from curator.config import RunConfig

SOLVERS = ("cg", "exact", "lissa", "paper")
CURVATURES = ("gauss_newton", "hessian")

#: Display names of the pipeline stages, for progress messages.
STAGE_NAMES = {
    "round1": "Round 1 training",
    "solve": "Solving for the influence direction",
    "score": "Scoring training samples",
    "rule": "Applying the drop rule",
    "review": "Ready for review",
    "round2": "Round 2 training",
    "done": "Finished",
}

#: Stages a Setup job runs; each skips the work it finished before, so a resume repeats them.
ROUND1_STAGES = ["round1", "score", "rule"]
ROUND2_STAGES = ["round2"]


def run_label(run: dict) -> str:
    """Return the run selector's short text for one row of ``runs.list_runs``: time, data, model, status."""
    # Seconds and the id's random suffix tell apart runs started in the same minute.
    return (f"{run['created_at']:%m-%d %H:%M:%S} · {run['dataset']}/{run['model']} · {run['status']}"
            f" · {run['run_id'][-4:]}")


def choose_run(run_ids: list, requested: Optional[str]) -> Optional[str]:
    """Return ``requested`` when it is one of ``run_ids``, else the first (latest) id, else None."""
    if requested in run_ids:
        return requested
    return run_ids[0] if run_ids else None


@dataclass(frozen=True)
class RuleControl:
    """The number input that sets one rule's ``value``."""

    label: str
    min_value: float
    max_value: Optional[float]
    default: float
    step: float
    help: str
    integer: bool = False


RULE_TITLES = {
    "validated": "Validated (default)",
    "paper": "Paper's rule: every positive score",
    "threshold": "Threshold",
    "top_k": "Top k",
    "top_fraction": "Top fraction",
}

RULE_HELP = ("Validated: drops as many top-scored samples as held-out validation halves favour. Paper's rule: "
             "drops every positive score, often half the data. Threshold: drops scores above a value. Top k and "
             "top fraction: drop the highest positive scores.")

_RULE_CONTROLS = {
    "validated": RuleControl("Maximum share of the data to drop", 0.0, 1.0, DEFAULT_MAX_FRACTION, 0.01,
                             "The rule drops the number of top-scored samples that held-out validation "
                             "halves favour, but never more than this share of the training set."),
    "threshold": RuleControl("Influence threshold", -1e12, None, 0.0, 0.001,
                             "Samples whose influence is above this value are dropped."),
    "top_k": RuleControl("Number of samples to drop (k)", 0, None, 50, 1,
                         "The k highest positive scores are dropped; favorable samples never are.", integer=True),
    "top_fraction": RuleControl("Share of the data to drop", 0.0, 1.0, 0.05, 0.01,
                                "The most unfavorable share of the training set; only positive scores count."),
}


def rule_control(name: str) -> Optional[RuleControl]:
    """Return the value control of rule ``name``, or None for ``paper``, which drops every positive score."""
    if name not in RULES:
        raise ValueError(f"unknown drop rule {name!r}; choose one of {RULES}")
    return _RULE_CONTROLS.get(name)


def make_rule(name: str, value: Optional[float], class_cap: float, current: Optional[DropRule] = None) -> DropRule:
    """Build the rule from the controls; ``value`` is ignored for the ``paper`` rule.

    Settings the controls do not show are kept from ``current`` when it is a rule of the same name.
    Raises ``ValueError`` naming the invalid value and the valid range.
    """
    control = rule_control(name)
    if control is not None and value is None:
        raise ValueError(f"the {name} rule needs a value: {control.label.lower()}")
    if control is not None:
        value = int(value) if control.integer else float(value)
    kept = current.to_dict() if current is not None and current.name == name else {}
    return DropRule.from_dict({**kept, "name": name, "value": None if control is None else value,
                               "class_cap": class_cap})


def build_run_config(dataset: str, model: str, solver: str, curvature: str, damping: float, params: str,
                     epochs: int, seed: int, label_noise: float, rule: DropRule,
                     data_dir: Optional[str] = None, task: str = "classification", preset: Optional[str] = None,
                     max_train_samples: Optional[int] = None) -> RunConfig:
    """Return the run's settings from the Setup form; ``RunConfig`` raises on an invalid value.

    A ``preset`` brings its own dataset and recipe (model, epochs, optimiser, solver settings); the form
    then adds only the data folder, seed, label noise, drop rule and training-set cap. The denoising
    ``task`` starts from its default preset, with the form's seed and data folder.
    """
    folder = (data_dir or "").strip() or None
    if task == "denoise":
        return RunConfig.for_task("denoise", seed=int(seed), **({"data_dir": folder} if folder else {}))
    if preset:
        cap = {"max_train_samples": max_train_samples} if max_train_samples else {}
        return RunConfig.from_preset(preset, data_dir=folder, seed=int(seed), label_noise=float(label_noise),
                                     drop_rule=rule.to_dict(), **cap)
    if dataset not in LOADERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(LOADERS)}")
    if (data_dir or "").strip() and not accepts_data_dir(dataset):
        raise ValueError(f"dataset {dataset!r} is built in and reads no data folder, but the Data folder field "
                         f"is {data_dir!r}; clear that field")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    if curvature not in CURVATURES:
        raise ValueError(f"unknown curvature {curvature!r}; choose one of {CURVATURES}")
    params = (params or "").strip() or "all"
    return RunConfig(dataset=dataset, data_dir=folder, model=model, seed=int(seed),
                     epochs=int(epochs), label_noise=float(label_noise), solver=solver, curvature=curvature,
                     damping=float(damping), params=params, drop_rule=rule.to_dict(),
                     max_train_samples=max_train_samples)


def accepts_data_dir(dataset: str) -> bool:
    """Return True when the loader of ``dataset`` takes a ``data_dir`` option."""
    parameters = inspect.signature(LOADERS[dataset]).parameters.values()
    return any(p.name == "data_dir" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


@dataclass(frozen=True)
class JobView:
    """The app's view of a run's job.

    ``kind`` is one of ``starting``, ``running`` (a live job), ``interrupted`` (the job process is
    gone before the run finished), ``failed``, ``finished`` (round 1 scored or round 2 done) and
    ``not_started``. ``fraction`` is in [0, 1], or None when the job has not reported progress yet.
    """

    kind: str
    text: str
    fraction: Optional[float] = None
    error: Optional[str] = None

    @property
    def active(self) -> bool:
        return self.kind in ("starting", "running")


def describe_job(state: dict) -> JobView:
    """Turn ``jobs.job_state`` into what the app shows.

    A job process that is alive counts as running whatever status the store has, because a
    round-2 job starts on a run whose status is still ``scored`` or ``done``. Progress is shown only
    when it was written by that process, so a finished job's last progress is never shown as current.
    """
    progress = state.get("progress") or {}
    fresh = bool(progress) and state.get("pid") is not None and progress.get("pid") == state.get("pid")
    status = state["status"]
    if state.get("alive"):
        if not fresh:
            return JobView("starting", "Starting the job…")
        return JobView("running", progress_text(progress), progress_fraction(progress))
    if status == "failed":
        return JobView("failed", "The job failed.", error=state.get("error") or "no error was recorded")
    if status == "interrupted" or (status == "created" and state.get("pid") is not None):
        stage = STAGE_NAMES.get(state.get("stage") or "", state.get("stage") or "before its first stage")
        return JobView("interrupted", f"The job stopped during: {stage}. Resume continues from the last "
                                      f"finished step.")
    if status == "created":
        return JobView("not_started", "No job has run for this run yet.")
    stage = state.get("stage")
    text = "Round 2 finished." if stage == "done" else "Round 1 and scoring finished; review the drop set."
    return JobView("finished", text, 1.0)


def progress_fraction(progress: dict) -> Optional[float]:
    total = progress.get("total") or 0
    if total <= 0:
        return None
    return min(max(progress.get("step", 0) / total, 0.0), 1.0)


def progress_text(progress: dict) -> str:
    """Return e.g. ``Round 1 training: 120/300 · epoch 2 loss 0.41``."""
    stage = STAGE_NAMES.get(progress.get("stage"), progress.get("stage") or "working")
    text = f"{stage}: {progress.get('step', 0)}/{progress.get('total', 0)}"
    if progress.get("message"):
        text += f" · {progress['message']}"
    return text


def resume_plan(run: dict, latest_approval_id: Optional[int]) -> tuple:
    """Return ``(stages, approval_id)`` that continue an interrupted or failed run.

    A run stopped in round 2 retrains with its latest approval; any other run repeats the Setup
    stages, which skip what they finished.
    """
    if run.get("stage") == "round2" and latest_approval_id is not None:
        return list(ROUND2_STAGES), int(latest_approval_id)
    return list(ROUND1_STAGES), None


def default_rule_value(name: str, current: Optional[DropRule]) -> Optional[float]:
    """Return the value the rule controls start from: the current rule's when it has the same name."""
    if current is not None and current.name == name and current.value is not None:
        return current.value
    control = rule_control(name)
    return None if control is None else control.default


def default_class_cap(current: Optional[DropRule]) -> float:
    return current.class_cap if current is not None else DEFAULT_CLASS_CAP
