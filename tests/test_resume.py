"""A run killed with SIGKILL in round 1 and again while scoring resumes to the uninterrupted results.

The job runs as the app starts it: ``curator.jobs.start_job`` starts a child ``curator job``
process. The test kills that child at a moment it picks by watching the run's folder, checks that
``job_state`` reports the run as interrupted, and continues it.
"""

import os
import signal
import time

import numpy as np
import pytest
import torch

from curator import jobs, queries
from curator.cli import main
from curator.config import RunConfig
from curator.pipeline import create_run, run_stages
from curator.store import Store
from curator.workspace import Workspace

#: Small score chunks give 40 chunk files, so scoring lasts long enough to be killed part-way.
#: Influence over the last layer and 4 CG steps keep the solve short; convergence is not tested here.
CONFIG = dict(epochs=4, score_chunk=32, params="classifier.3", solver_options={"max_iter": 4, "tol": 1e-30},
              device="cpu")
STAGES = ["round1", "score", "rule"]


def wait_for(condition, what: str, timeout: float = 240.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Jobs:
    """Jobs started through ``jobs.start_job``; each is killed and reaped at most once."""

    def __init__(self):
        self.running = set()

    def start(self, workspace, run_id, stages) -> int:
        pid = jobs.start_job(workspace, run_id, stages)
        self.running.add(pid)
        return pid

    def kill(self, pid: int) -> None:
        # Only a pid this tracker has not reaped is signalled, which keeps clear of recycled pids.
        if pid not in self.running:
            return
        self.running.discard(pid)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):  # it ended and was reaped by subprocess already
            pass


@pytest.fixture
def started_jobs():
    """The test's jobs; any left running by a failed test is killed at teardown."""
    tracker = Jobs()
    yield tracker
    for pid in list(tracker.running):
        tracker.kill(pid)


@pytest.fixture(scope="module")
def workspace_and_store(tmp_path_factory):
    workspace = Workspace(tmp_path_factory.mktemp("workspace"))
    return workspace, Store(workspace)


@pytest.fixture(scope="module")
def uninterrupted(workspace_and_store):
    """The same run finished in one go: ``(round-1 weights, scores by index)``."""
    workspace, store = workspace_and_store
    run_id = create_run(workspace, store, RunConfig(**CONFIG))
    run_stages(workspace, store, run_id, STAGES)
    weights = torch.load(workspace.run_dir(run_id) / "round1.pt", weights_only=True)
    return weights, queries.samples(store, workspace, run_id)


def test_killed_job_resumes_to_same_results(workspace_and_store, uninterrupted, started_jobs):
    workspace, store = workspace_and_store
    run_id = create_run(workspace, store, RunConfig(**CONFIG))
    folder = workspace.run_dir(run_id)
    scores = workspace.scores_dir(run_id)

    # Kill during round 1, after the first epoch checkpoint and before the last epoch ends.
    pid = started_jobs.start(workspace, run_id, STAGES)
    wait_for(lambda: (folder / "round1.ckpt").exists() or (folder / "round1.pt").exists(), "an epoch checkpoint")
    started_jobs.kill(pid)
    assert not (folder / "round1.pt").exists(), "round 1 finished before it could be killed; raise CONFIG epochs"
    epochs_done = len(torch.load(folder / "round1.ckpt", weights_only=True)["history"])
    state = jobs.job_state(store, workspace, run_id)
    assert (state["status"], state["stage"], state["alive"]) == ("interrupted", "round1", False)
    assert 1 <= epochs_done < CONFIG["epochs"]

    # Continue as the app does, and kill again once the first score chunk is written.
    pid = started_jobs.start(workspace, run_id, STAGES)
    wait_for(lambda: any(scores.glob("chunk-*.parquet")) or (folder / "scores.done").exists(),
             "a score chunk", interval=0.005)
    started_jobs.kill(pid)
    assert not (folder / "scores.done").exists(), "scoring finished before it could be killed"
    state = jobs.job_state(store, workspace, run_id)
    assert (state["status"], state["stage"]) == ("interrupted", "score")
    written = {path.name: path.stat().st_mtime_ns for path in scores.glob("chunk-*.parquet")}
    assert 1 <= len(written) < 40

    assert main(["resume", "--workspace", str(workspace.root), "--run", run_id]) == 0
    weights, expected = uninterrupted
    resumed = torch.load(folder / "round1.pt", weights_only=True)
    frame = queries.samples(store, workspace, run_id)
    log = (folder / "job.log").read_text()

    assert f"resumed round1 from epoch {epochs_done}" in log
    assert jobs.job_state(store, workspace, run_id)["status"] == "scored"
    assert weights.keys() == resumed.keys()
    for name in weights:
        torch.testing.assert_close(resumed[name], weights[name], rtol=0, atol=0, msg=name)
    # Chunks finished before the kill are kept as they were, not scored again.
    assert {name: (scores / name).stat().st_mtime_ns for name in written} == written
    assert len(list(scores.glob("chunk-*.parquet"))) == 40
    assert frame["index"].tolist() == list(range(1257))
    for column in ("loss", "prediction"):
        np.testing.assert_allclose(frame[column], expected[column], rtol=1e-6, atol=1e-9, err_msg=column)
    # An uninterrupted run scores from the output tangents summed during its solve. The resumed one
    # reloads the directions and pushes them through the network, so float32 rounding differs.
    for column in ("influence", "influence_a", "influence_b"):
        scale = np.abs(expected[column]).max()
        np.testing.assert_allclose(frame[column], expected[column], rtol=0, atol=1e-5 * scale, err_msg=column)
    assert frame["decision"].tolist() == expected["decision"].tolist()


def test_interrupted_job_says_how_to_resume(workspace_and_store, started_jobs):
    workspace, store = workspace_and_store
    # Many epochs, so that round 1 is still training when the signal arrives.
    run_id = create_run(workspace, store, RunConfig(**{**CONFIG, "epochs": 200}))
    folder = workspace.run_dir(run_id)

    # Ctrl-C reaches the job as SIGINT once round 1 has checkpointed an epoch.
    pid = started_jobs.start(workspace, run_id, STAGES)
    wait_for(lambda: (folder / "round1.ckpt").exists() or (folder / "round1.pt").exists(), "an epoch checkpoint")
    assert not (folder / "round1.pt").exists(), "round 1 finished before the signal; raise its epochs"
    os.kill(pid, signal.SIGINT)
    _, code = os.waitpid(pid, 0)
    started_jobs.running.discard(pid)
    log = (folder / "job.log").read_text()
    state = jobs.job_state(store, workspace, run_id)

    assert os.waitstatus_to_exitcode(code) == 130
    assert f"run {run_id} interrupted; continue it with: curator resume --workspace {workspace.root} --run {run_id}" in log
    assert "Traceback" not in log
    assert state["status"] == "interrupted"
    assert state["error"] == "interrupted; resume to continue from the last finished step"
