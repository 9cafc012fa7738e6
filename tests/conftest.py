"""Shared fixtures. Each test gets its own workspace folder; nothing is written outside ``tmp_path``."""

import os
import signal

import pytest

from curator import runs
from curator.workspace import Workspace


def stop_live_jobs(workspace: Workspace) -> None:
    """Stop the job processes this workspace's runs started and that still run.

    ``curator.jobs.start_job`` starts each job in its own session, so its process group id is its pid.
    """
    for pid_file in workspace.root.glob("runs/*/job.pid"):
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if runs.process_alive(pid):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="session", autouse=True)
def scan_cache_folder(tmp_path_factory):
    """Point the image header scan cache (``CURATOR_SCAN_CACHE``) at a temporary folder for the whole session."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("scan-cache")
        patch.setenv("CURATOR_SCAN_CACHE", str(folder))
        yield folder


@pytest.fixture
def app_workspace(tmp_path, monkeypatch):
    """An empty workspace that the app opens, selected through ``CURATOR_WORKSPACE``.

    Jobs still running at the end of the test are stopped.
    """
    workspace = Workspace(tmp_path / "workspace")
    monkeypatch.setenv("CURATOR_WORKSPACE", str(workspace.root))
    yield workspace
    stop_live_jobs(workspace)
