"""The DuckDB store under concurrent use by several processes."""

import os
import subprocess
import sys
import textwrap

import duckdb
import pytest

from curator.store import Store, StoreBusyError, StoreNotWritableError
from curator.workspace import Workspace, WorkspaceNotWritableError

HOLD_LOCK = textwrap.dedent("""
    import sys, time, duckdb
    connection = duckdb.connect(sys.argv[1])
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    connection.close()
""")

APPEND_OVERRIDES = textwrap.dedent("""
    import sys
    from curator.decisions import override
    from curator.store import Store
    from curator.workspace import Workspace
    store = Store(Workspace(sys.argv[1]), timeout=60)
    for index in range(int(sys.argv[2]), int(sys.argv[3])):
        override(store, "run-1", index, "drop" if index % 2 else "keep")
""")


def _hold_lock(workspace: Workspace, seconds: float) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(workspace.database), str(seconds)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_write_waits_for_other_process(tmp_path):
    workspace = Workspace(tmp_path)
    store = Store(workspace, timeout=30)
    holder = _hold_lock(workspace, 1.0)

    store.execute("INSERT INTO rules (run_id, rule, created_at) VALUES ('r', '{}', now())")
    holder.wait(timeout=30)

    assert store.query("SELECT count(*) AS n FROM rules").iloc[0, 0] == 1


def test_lock_timeout_names_file_and_fix(tmp_path):
    workspace = Workspace(tmp_path)
    store = Store(workspace, timeout=0.5)
    holder = _hold_lock(workspace, 5.0)
    try:
        with pytest.raises(StoreBusyError) as error:
            store.query("SELECT 1")
    finally:
        holder.kill()
        holder.wait()

    assert str(workspace.database) in str(error.value)
    assert "wait for the running job" in str(error.value)


def test_concurrent_overrides_none_lost(tmp_path):
    workspace = Workspace(tmp_path)
    store = Store(workspace)
    workers = [subprocess.Popen([sys.executable, "-c", APPEND_OVERRIDES, str(tmp_path), str(start), str(start + 40)])
               for start in (0, 40)]
    for worker in workers:
        assert worker.wait(timeout=120) == 0

    frame = store.query("SELECT sample_index, decision FROM decisions WHERE run_id = 'run-1' ORDER BY sample_index")

    assert frame["sample_index"].tolist() == list(range(80))
    assert frame["decision"].tolist() == ["drop" if i % 2 else "keep" for i in range(80)]


def test_failed_transaction_stores_nothing(tmp_path):
    store = Store(Workspace(tmp_path))
    with pytest.raises(RuntimeError):
        with store.connect() as connection:
            connection.execute("INSERT INTO rules (run_id, rule, created_at) VALUES ('r', '{}', now())")
            raise RuntimeError("stop half-way")

    assert store.query("SELECT count(*) FROM rules").iloc[0, 0] == 0


def test_run_id_cannot_escape_workspace(tmp_path):
    workspace = Workspace(tmp_path)
    for bad in ["../outside", "a/b", "", "x" * 65, "run id"]:
        with pytest.raises(ValueError, match="invalid run id"):
            workspace.run_dir(bad)


def test_unwritable_database_opened_read_only(open_tmp, deny_writes):
    store = Store(Workspace(open_tmp))
    store.execute("INSERT INTO rules (run_id, rule, created_at) VALUES ('r', '{}', now())")
    deny_writes(store.path, open_tmp)

    reader = Store(Workspace(open_tmp, create=False))
    with pytest.raises(StoreNotWritableError) as error:
        reader.execute("INSERT INTO rules (run_id, rule, created_at) VALUES ('s', '{}', now())")

    assert reader.read_only
    assert reader.query("SELECT run_id FROM rules")["run_id"].tolist() == ["r"]
    assert f"{store.path} is not writable by this user" in str(error.value)
    assert "damaged" not in str(error.value)


def test_read_only_store_has_tables_added_since(open_tmp, deny_writes):
    store = Store(Workspace(open_tmp))
    store.execute("INSERT INTO rules (run_id, rule, created_at) VALUES ('r', '{}', now())")
    # A file written before these tables existed.
    store.execute("DROP TABLE verifications; DROP TABLE experiment_arms")
    deny_writes(store.path, open_tmp)

    reader = Store(Workspace(open_tmp, create=False))

    assert reader.read_only
    assert reader.query("SELECT count(*) AS n FROM verifications")["n"].item() == 0
    assert reader.query("SELECT count(*) AS n FROM experiment_arms")["n"].item() == 0
    assert reader.query("SELECT run_id FROM rules")["run_id"].tolist() == ["r"]
    tables = duckdb.connect(str(store.path), read_only=True).execute(
        "SELECT table_name FROM duckdb_tables() WHERE NOT temporary").fetchall()
    assert ("verifications",) not in tables  # the file itself is untouched


def test_unwritable_runs_folder_rejected(open_tmp, deny_writes):
    Store(Workspace(open_tmp))
    deny_writes(open_tmp / "runs")

    with pytest.raises(WorkspaceNotWritableError) as error:
        Workspace(open_tmp)

    assert f"Permission denied: {open_tmp / 'runs'}" in str(error.value)
    assert "choose a folder you can write to" in str(error.value)


@pytest.mark.parametrize("create", [True, False])
def test_workspace_under_file_rejected(tmp_path, create):
    blocker = tmp_path / "afile"
    blocker.write_text("kept")

    with pytest.raises(ValueError) as error:
        Workspace(blocker / "sub", create=create)

    assert f"workspace {blocker / 'sub'} is inside {blocker}, which is a file" in str(error.value)
    assert blocker.read_text() == "kept"


def test_experiment_runs_listed_after_own_runs(tmp_path):
    from curator import runs
    from curator.config import RunConfig

    store = Store(Workspace(tmp_path))
    store.execute("INSERT INTO experiments VALUES ('exp-1', now(), now(), '{}', 'done', NULL)")
    runs.insert_run(store, "mine", RunConfig(), "fingerprint")
    runs.insert_run(store, "exp-1-s0", RunConfig(), "fingerprint")
    runs.insert_run(store, "exp-1-s1", RunConfig(), "fingerprint")

    assert runs.latest_run_id(store) == "mine"
    assert runs.list_runs(store)["run_id"].tolist() == ["mine", "exp-1-s1", "exp-1-s0"]
