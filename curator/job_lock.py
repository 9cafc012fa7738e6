"""The exclusive lock of a job's folder, so one process at a time works on a run or an experiment.

The lock is ``flock`` on ``job.lock`` in the folder. The operating system releases it when the
last process holding the open file exits, killed or not. So a killed job does not block a later
resume, and a folder whose lock is free has no live job.
"""

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_FILE = "job.lock"
PID_FILE = "job.pid"


class JobLockedError(RuntimeError):
    """Another process holds the lock of the job's folder."""


@contextlib.contextmanager
def job_lock(folder: Path, name: str, resume_hint: str = "resume"):
    """Hold the lock of ``folder`` and write this process's id to ``job.pid`` while the block runs.

    ``name`` (such as "run 2026...") and ``resume_hint`` (the command that continues the job)
    go into the ``JobLockedError`` raised when another process holds the lock.
    """
    handle = open(folder / LOCK_FILE, "a")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid_file = folder / PID_FILE
            holder = pid_file.read_text().strip() if pid_file.exists() else "another process"
            raise JobLockedError(f"{name} is already being worked on by process {holder}; wait for it to "
                                 f"finish, or stop it (kill {holder}) and then {resume_hint}") from None
        (folder / PID_FILE).write_text(str(os.getpid()))
        yield
    finally:
        handle.close()


def job_running(folder: Path) -> bool:
    """Return True while some process holds the lock of ``folder``."""
    path = folder / LOCK_FILE
    if not path.exists():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
