"""Jobs: the command line run as a child process, so the app never trains in its own process.

A job is ``python -m curator job --workspace W --run R --stages ...``. It writes ``job.pid``,
``job.log`` and ``progress.json`` in the run's folder; the app polls them. A job that died
(killed, machine closed) is shown as interrupted and can be resumed, because every stage skips
what it already finished.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from curator import runs
from curator.progress import read_progress
from curator.store import Store
from curator.workspace import Workspace


def _spawn(workspace: Workspace, run_id: str, arguments: list, name: str) -> int:
    """Run ``python -m curator ARGUMENTS`` detached, logging to ``NAME.log`` and recording ``NAME.pid``."""
    folder = workspace.run_dir(run_id)
    command = [sys.executable, "-m", "curator", *arguments]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    with open(folder / f"{name}.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env=env, cwd=root)
    (folder / f"{name}.pid").write_text(str(process.pid))
    return process.pid


def start_job(workspace: Workspace, run_id: str, stages: list, approval_id: Optional[int] = None) -> int:
    """Start the stages of ``run_id`` in a child process and return its pid."""
    arguments = ["job", "--workspace", str(workspace.root), "--run", run_id, "--stages", ",".join(stages)]
    if approval_id is not None:
        arguments += ["--approval", str(approval_id)]
    return _spawn(workspace, run_id, arguments, "job")


def start_verification(workspace: Workspace, run_id: str, k: int, mode: str) -> int:
    """Start ``curator verify`` (leave-one-out retraining of 3K+2 models) for ``run_id`` in a child process."""
    arguments = ["verify", "--workspace", str(workspace.root), "--run", run_id, "--k", str(int(k)), "--mode", mode]
    return _spawn(workspace, run_id, arguments, "verify")


def verification_running(workspace: Workspace, run_id: str) -> bool:
    """Return True while a verification started by ``start_verification`` is still running."""
    pid_file = workspace.run_dir(run_id) / "verify.pid"
    try:
        return runs.process_alive(int(pid_file.read_text().strip()))
    except (OSError, ValueError):
        return False


def job_state(store: Store, workspace: Workspace, run_id: str) -> dict:
    """Return ``status`` as the app should show it, with the job's progress, error and ``pid``.

    A run stored as running whose job process is gone is reported as ``interrupted``. ``pid`` is the
    last job's process id (None before the first job), which ``progress["pid"]`` matches while the
    progress file belongs to that job.
    """
    run = runs.get_run(store, run_id)
    folder = workspace.run_dir(run_id)
    progress = read_progress(folder / "progress.json")
    status = run["status"]
    pid_file = folder / "job.pid"
    pid, alive = None, False
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text().strip())
            alive = runs.process_alive(pid)
        except ValueError:
            pid, alive = None, False
    if status == "running" and not alive:
        status = "interrupted"
    return {"status": status, "stage": run["stage"], "error": run["error"], "progress": progress, "alive": alive,
            "pid": pid}


def log_tail(workspace: Workspace, run_id: str, lines: int = 20) -> str:
    path = workspace.run_dir(run_id) / "job.log"
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
