"""Streamlit pieces that every page shares: the store, the run selector, the job panel, the dataset cache.

A module of the page layer, not a page: ``run_app.py`` lists the pages explicitly. The decisions
behind these widgets live in ``curator.app_state``, so they can be tested without a script run. Jobs run in child
processes (``curator.jobs``); the app only polls their files and never calls Streamlit from a thread.
"""

import os
from pathlib import Path
from typing import Optional

import streamlit as st

from curator import app_state, decisions, jobs, queries, runs
from curator.pipeline import RunContext
from curator.store import Store, StoreBusyError, StoreDamagedError
from curator.workspace import DATABASE_NAME, DEFAULT_WORKSPACE, Workspace, WorkspaceNotWritableError

#: Session-state key of the sidebar run selector, shared by every page.
RUN_KEY = "run_selector"
# A run to select on the next script run; a page cannot change the selector after it was drawn.
_NEXT_RUN_KEY = "run_selector_next"
#: Seconds between progress polls while a job runs.
POLL_SECONDS = 1.0


def workspace_root() -> str:
    """Return the workspace folder: ``$CURATOR_WORKSPACE`` or ``./workspace``, resolved."""
    return str(Path(os.environ.get("CURATOR_WORKSPACE") or DEFAULT_WORKSPACE).expanduser().resolve())


@st.cache_resource(show_spinner=False)
def _open_store(root: str) -> Store:
    """Open the workspace's store, read-only when this user cannot write an existing workspace."""
    try:
        return Store(Workspace(root))
    except WorkspaceNotWritableError:
        if not (Path(root) / DATABASE_NAME).exists():
            raise
        return Store(Workspace(root, create=False))


def open_workspace() -> tuple:
    """Return ``(workspace, store)``. A store keeps no connection open, so all sessions share one per folder."""
    try:
        store = _open_store(workspace_root())
    except (ValueError, StoreDamagedError, StoreBusyError, WorkspaceNotWritableError) as error:
        st.error(f"The workspace cannot be opened: {error}")
        st.stop()
    if store.read_only:
        st.sidebar.warning(f"The workspace {store.workspace.root} is read-only for this user: runs can be viewed, "
                           f"but starting, approving or exporting needs write access (fix its permissions, or "
                           f"set CURATOR_WORKSPACE to a folder you can write to).")
    return store.workspace, store


def select_run_next(run_id: str) -> None:
    """Make the selector show ``run_id`` from the next script run on (call ``st.rerun`` after)."""
    st.session_state[_NEXT_RUN_KEY] = run_id


def run_selector(store: Store) -> Optional[str]:
    """Draw the sidebar run selector (latest run by default) and return the selected id."""
    records = runs.list_runs(store).to_dict("records")
    ids = [record["run_id"] for record in records]
    requested = st.session_state.pop(_NEXT_RUN_KEY, None) or st.session_state.get(RUN_KEY)
    chosen = app_state.choose_run(ids, requested)
    if chosen is None:
        st.sidebar.caption("No runs yet: start one on Setup.")
        return None

    st.session_state[RUN_KEY] = chosen
    labels = {record["run_id"]: app_state.run_label(record) for record in records}
    selected = st.sidebar.selectbox("Run", ids, key=RUN_KEY, format_func=labels.get,
                                    help="Every page shows this run. The latest run is selected by default.")
    st.sidebar.caption(f"Run id: `{selected}`")
    return selected


def current_run(store: Store) -> Optional[str]:
    """Return the run the selector shows, or the latest run when a page runs without the selector.

    A run chosen with ``select_run_next`` counts already, for pages that run without the entry point:
    Streamlit 1.67's AppTest, for one, reruns only the page script once the page has drawn a fragment.
    """
    ids = runs.list_runs(store)["run_id"].tolist()
    return app_state.choose_run(ids, st.session_state.get(_NEXT_RUN_KEY) or st.session_state.get(RUN_KEY))


def latest_approval_id(store: Store, run_id: str) -> Optional[int]:
    try:
        return int(decisions.get_approval(store, run_id)["approval_id"])
    except LookupError:
        return None


def job_view(workspace: Workspace, store: Store, run_id: str) -> app_state.JobView:
    return app_state.describe_job(jobs.job_state(store, workspace, run_id))


def job_panel(workspace: Workspace, store: Store, run_id: str, key: str, show_finished: bool = True) -> bool:
    """Show the run's job: live progress while it runs, its error, or a Resume button when it stopped.

    Returns True while a job is running. ``key`` keeps the Resume buttons of different pages apart.
    """
    view = job_view(workspace, store, run_id)
    if view.active:
        _live_progress(workspace, store, run_id)
        return True
    if view.kind == "failed":
        st.error(f"The job of run {run_id} failed: {view.error}")
        _log_expander(workspace, run_id)
        _resume_button(workspace, store, run_id, key, "Retry from the last finished step")
    elif view.kind == "interrupted":
        st.warning(view.text)
        _log_expander(workspace, run_id)
        _resume_button(workspace, store, run_id, key, "Resume")
    elif show_finished and view.kind == "finished":
        st.success(view.text)
    return False


@st.fragment(run_every=POLL_SECONDS)
def _live_progress(workspace: Workspace, store: Store, run_id: str) -> None:
    view = job_view(workspace, store, run_id)
    if not view.active:
        st.rerun()
    st.progress(view.fraction or 0.0, text=view.text)
    st.caption("The job runs in its own process: other pages stay usable, and closing the browser does not "
               "stop it.")


def _log_expander(workspace: Workspace, run_id: str) -> None:
    tail = jobs.log_tail(workspace, run_id, lines=30)
    if tail:
        with st.expander("Last lines of the job's log"):
            st.code(tail, language=None)


def _resume_button(workspace: Workspace, store: Store, run_id: str, key: str, label: str) -> None:
    if st.button(label, key=f"{key}_resume_{run_id}", type="primary",
                 help="Starts the stopped stages again; finished epochs and score chunks are kept."):
        stages, approval_id = app_state.resume_plan(runs.get_run(store, run_id), latest_approval_id(store, run_id))
        jobs.start_job(workspace, run_id, stages, approval_id=approval_id)
        st.rerun()


@st.cache_resource(show_spinner="Loading the run's dataset…", max_entries=4)
def train_split(root: str, run_id: str):
    """Return the training split of ``run_id`` in workspace ``root``, loaded once per run.

    Raises ``curator.pipeline.DatasetChangedError`` (never cached) when the data on disk no longer
    matches the run's fingerprint, so the app never shows another dataset's images.
    """
    workspace = Workspace(root)
    return RunContext(workspace, Store(workspace), run_id).splits.train


#: The page that shows each task's review, for runs opened on the other task's page.
TASK_PAGES = {"classification": ("pages/review.py", "Review"),
              "denoise": ("pages/denoise_review.py", "Denoising review")}


def require_task(store: Store, run_id: str, task: str) -> None:
    """Stop the page with a link to the right one when ``run_id`` is a run of another task."""
    run_task = runs.get_run(store, run_id)["config"].get("task", "classification")
    if run_task == task:
        return
    page, title = TASK_PAGES.get(run_task, TASK_PAGES["classification"])
    st.info(f"Run {run_id} is a {run_task} run, and this page shows {task} runs. Open {title} instead, "
            f"or choose another run in the sidebar.")
    st.page_link(page, label=f"Go to {title}")
    st.stop()


def require_run(store: Store, task: str) -> str:
    """Return the selected run of ``task``; otherwise stop the page with a link to where to go."""
    run_id = current_run(store)
    if run_id is None:
        st.info("There are no runs yet. Start one on Setup.")
        st.page_link("pages/setup.py", label="Go to Setup", icon=":material/tune:")
        st.stop()
    require_task(store, run_id, task)
    require_readable_scores(store.workspace, run_id)
    return run_id


def require_readable_scores(workspace: Workspace, run_id: str) -> None:
    """Stop the page with an error naming the fix when a scored run's score files are missing or damaged."""
    if not workspace.has_scores(run_id):
        return
    try:
        queries.prepare_scores(workspace, run_id)
    except queries.ScoresDamagedError as error:
        st.error(str(error))
        st.stop()


def rule_value_input(container, rule_name: str, default, key: str, **options):
    """Draw the number input of ``rule_name``'s parameter in ``container``; return its value (None if it has none).

    ``default`` None takes the rule's own default. ``options`` go to ``number_input``.
    """
    control = app_state.rule_control(rule_name)
    if control is None:
        return None
    number = int if control.integer else float
    return container.number_input(
        control.label, min_value=number(control.min_value),
        max_value=None if control.max_value is None else number(control.max_value),
        value=number(control.default if default is None else default), step=number(control.step),
        help=control.help, format=None if control.integer else "%g", key=key, **options)
