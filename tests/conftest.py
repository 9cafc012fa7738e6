"""Shared fixtures. Each test gets its own workspace folder; nothing is written outside ``tmp_path``
(or ``open_tmp``, for tests that read as another user)."""

import os
import shutil
import signal
import tempfile
from pathlib import Path

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


#: The user id that permission tests switch to when they run as root.
NOBODY = 65534


@pytest.fixture
def open_tmp():
    """A fresh folder that every user may enter and write (pytest's ``tmp_path`` is private to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="curator-test-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def deny_writes(open_tmp):
    """Return ``deny(*paths)``, which clears the write bits of ``paths`` (under ``open_tmp``).

    Root may write whatever the permission bits are. So when the tests run as root, as in CI
    containers, ``deny`` also makes this process act as ``nobody`` until the test ends. It sets
    the real and effective user id to 65534 and keeps saved user id 0 to switch back afterwards.
    """
    switched = []

    def deny(*paths) -> None:
        for path in paths:
            path.chmod(path.stat().st_mode & ~0o222)
        if os.geteuid() == 0 and not switched:
            os.setresuid(NOBODY, NOBODY, 0)
            switched.append(True)
        assert not os.access(paths[0], os.W_OK)

    yield deny
    if switched:
        os.setresuid(0, 0, 0)
