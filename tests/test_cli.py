"""The curator command line: help, and clear errors for bad input."""

import os

import numpy as np
import pytest

from curator.cli import build_parser, main
from curator.store import Store
from curator.workspace import Workspace

COMMANDS = ["run", "resume", "job", "export", "results", "app"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])

    assert exit_info.value.code == 0
    assert "usage: curator" in capsys.readouterr().out


def test_parser_lists_every_command():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert set(COMMANDS) <= set(choices)


def test_negative_damping_rejected(tmp_path, capsys):
    code = main(["run", "--workspace", str(tmp_path), "--damping", "-1", "--quiet"])

    assert code == 2
    assert "damping -1.0 must be a finite number >= 0" in capsys.readouterr().err


def test_unknown_solver_option_named(tmp_path, capsys):
    code = main(["run", "--workspace", str(tmp_path), "--epochs", "1", "--solver-option", "depth=5", "--quiet"])

    assert code == 2
    assert "no option(s) ['depth']" in capsys.readouterr().err


def test_results_empty_workspace(tmp_path, capsys):
    Store(Workspace(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(["results", "--workspace", str(tmp_path)])

    assert "no runs in this workspace yet" in str(exit_info.value)


def test_results_missing_workspace_not_created(tmp_path, capsys):
    missing = tmp_path / "typo"
    code = main(["results", "--workspace", str(missing)])

    assert code == 2
    assert "has no curator.duckdb" in capsys.readouterr().err
    assert not missing.exists()


def test_damaged_database_named(tmp_path, capsys):
    (tmp_path / "curator.duckdb").write_bytes(b"not a database" * 1000)
    code = main(["results", "--workspace", str(tmp_path)])

    assert code == 2
    assert "could not be opened" in capsys.readouterr().err
    assert (tmp_path / "curator.duckdb").read_bytes() == b"not a database" * 1000


@pytest.mark.parametrize("option, message", [
    (["--batch-size", "0"], "batch size must be at least 1"),
    (["--lr", "-1"], "learning rate must be > 0"),
    (["--model", "nope"], "unknown model 'nope'"),
    (["--params", "nonsense"], "matches no parameter"),
    (["--lr", "1e38"], "at most 1000"),
    (["--damping", "nan"], "damping nan must be a finite number"),
    (["--solver-option", "tol=abc"], "option tol='abc' is invalid"),
    (["--solver-option", "max_iter=-5"], "option max_iter=-5 is invalid"),
    (["--solver", "lissa", "--solver-option", "scale=0"], "option scale=0 is invalid"),
    (["--model-option", "dropout=5"], "does not take the option(s) ['dropout']"),
])
def test_bad_settings_store_no_run(tmp_path, capsys, option, message):
    code = main(["run", "--workspace", str(tmp_path), "--quiet", *option])

    assert code == 2
    assert message in capsys.readouterr().err
    assert Store(Workspace(tmp_path)).query("SELECT count(*) FROM runs").iloc[0, 0] == 0


def test_export_unknown_format(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export", "--workspace", str(tmp_path), "--format", "xlsx", "--output", str(tmp_path / "a.xlsx")])

    assert "invalid choice: 'xlsx'" in capsys.readouterr().err


def test_unknown_run_message_quoted_once(tmp_path, capsys):
    Store(Workspace(tmp_path))
    code = main(["results", "--workspace", str(tmp_path), "--run", "nosuch"])

    err = capsys.readouterr().err
    assert code == 2
    assert f"error: run 'nosuch' not found in {tmp_path / 'curator.duckdb'}; list runs with" in err
    assert '"' not in err


def test_unknown_run_still_keyerror(tmp_path):
    from curator import runs

    with pytest.raises(KeyError, match="run 'nosuch' not found"):
        runs.get_run(Store(Workspace(tmp_path)), "nosuch")


def _tiny_run(workspace, *extra) -> str:
    from curator import runs

    assert main(["run", "--workspace", str(workspace), "--quiet", "--model", "logreg", "--epochs", "1", *extra]) == 0
    return runs.latest_run_id(Store(Workspace(workspace)))


def test_resume_refused_while_run_is_locked(tmp_path, capsys):
    import fcntl

    from curator import runs

    run_id = _tiny_run(tmp_path, "--no-round2")
    folder = Workspace(tmp_path).run_dir(run_id)
    runs.update_run(Store(Workspace(tmp_path)), run_id, status="failed")
    with open(folder / "job.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code = main(["resume", "--workspace", str(tmp_path), "--run", run_id])

    assert code == 2
    assert f"run {run_id} is already being worked on by process" in capsys.readouterr().err


def test_resume_of_finished_run_changes_nothing(tmp_path, capsys):
    from curator import runs

    run_id = _tiny_run(tmp_path)
    before = runs.get_run(Store(Workspace(tmp_path)), run_id)
    capsys.readouterr()

    code = main(["resume", "--workspace", str(tmp_path), "--run", run_id])
    after = runs.get_run(Store(Workspace(tmp_path)), run_id)

    assert code == 0
    assert "has already finished (status done); nothing to resume" in capsys.readouterr().out
    assert after["timings"] == before["timings"]


def test_diverged_training_fails_with_clear_error(tmp_path, capsys):
    from curator import runs

    code = main(["run", "--workspace", str(tmp_path), "--quiet", "--epochs", "2", "--lr", "1000"])
    run = runs.get_run(Store(Workspace(tmp_path)), runs.latest_run_id(Store(Workspace(tmp_path))))

    assert code == 2
    assert "training diverged. Lower the learning rate (now 1000)" in capsys.readouterr().err
    assert run["status"] == "failed"


def test_results_closed_pipe_exits_quietly(tmp_path, capsys, monkeypatch):
    import os
    import sys

    Store(Workspace(tmp_path))
    read_end, write_end = os.pipe()
    os.close(read_end)
    closed_pipe = open(write_end, "w")
    monkeypatch.setattr(sys, "stdout", closed_pipe)
    code = main(["results", "--workspace", str(tmp_path), "--list", "--format", "json"])
    closed_pipe.close()

    assert code == 1
    assert "BrokenPipeError" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "results"])
def test_workspace_under_file_named(tmp_path, capsys, command):
    blocker = tmp_path / "afile"
    blocker.write_text("kept")
    code = main([command, "--workspace", str(blocker / "sub")])

    err = capsys.readouterr().err
    assert code == 2
    assert f"workspace {blocker / 'sub'} is inside {blocker}, which is a file, not a folder" in err
    assert "Traceback" not in err
    assert blocker.read_text() == "kept"


def test_run_unwritable_workspace_named(open_tmp, deny_writes, capsys):
    folder = open_tmp / "readonly"
    folder.mkdir()
    deny_writes(folder)
    code = main(["run", "--workspace", str(folder), "--epochs", "1", "--quiet"])

    err = capsys.readouterr().err
    assert code == 2
    assert f"workspace {folder} is not writable by this user" in err
    assert "choose a folder you can write to" in err
    assert list(folder.iterdir()) == []


def test_results_unwritable_workspace_read_only(open_tmp, deny_writes, capsys):
    from curator import runs
    from curator.config import RunConfig

    store = Store(Workspace(open_tmp))
    runs.insert_run(store, "run-1", RunConfig(), "fingerprint")
    deny_writes(store.path, open_tmp / "runs", open_tmp)
    code = main(["results", "--workspace", str(open_tmp), "--list", "--format", "json"])

    captured = capsys.readouterr()
    assert code == 0
    assert '"run_id":"run-1"' in captured.out
    assert "damaged" not in captured.err


def _store_with_run(folder) -> Store:
    """Return the store of a workspace in ``folder`` that contains one run record, ``run-1``."""
    from curator import runs
    from curator.config import RunConfig

    store = Store(Workspace(folder))
    runs.insert_run(store, "run-1", RunConfig(), "fingerprint")
    return store


@pytest.mark.parametrize("format_option", [["--format", "csv"], []])
def test_export_to_folder_named(tmp_path, capsys, format_option):
    _store_with_run(tmp_path)
    target = tmp_path / "exports"
    target.mkdir()
    code = main(["export", "--workspace", str(tmp_path), "--run", "run-1", "--output", str(target), *format_option])

    err = capsys.readouterr().err
    assert code == 2
    assert f"export output {target} is a folder; give a file path such as {target / 'curated.csv'}" in err
    assert list(tmp_path.glob(".*.tmp")) == []
    assert list(target.iterdir()) == []


def test_export_under_file_named(tmp_path, capsys):
    _store_with_run(tmp_path)
    blocker = tmp_path / "afile"
    blocker.write_text("kept")
    code = main(["export", "--workspace", str(tmp_path), "--run", "run-1", "--output", str(blocker / "x.csv")])

    err = capsys.readouterr().err
    assert code == 2
    assert f"export folder {blocker} is a file, not a folder" in err
    assert blocker.read_text() == "kept"


def test_export_failed_write_keeps_old_file(tmp_path, capsys):
    import pandas as pd

    store = _store_with_run(tmp_path)
    drop_set = tmp_path / "drop_set.parquet"
    pd.DataFrame({"index": [1, 0], "sample_id": ["b", "a"], "label": [0, 1], "influence": [0.5, -0.5],
                  "decision": ["drop", "keep"], "true_label": [None, None]}).to_parquet(drop_set)
    store.execute("INSERT INTO approvals (run_id, rule, n_drop, n_total, path, created_at)"
                  " VALUES ('run-1', '{}', 1, 2, ?, now())", [str(drop_set)])
    output = tmp_path / "curated.csv"
    assert main(["export", "--workspace", str(tmp_path), "--run", "run-1", "--output", str(output)]) == 0
    exported = output.read_text()
    (tmp_path / ".curated.csv.tmp").mkdir()  # the temporary file cannot be written, so the export fails
    code = main(["export", "--workspace", str(tmp_path), "--run", "run-1", "--output", str(output)])

    err = capsys.readouterr().err
    assert exported.splitlines() == ["index,sample_id,label,influence,decision", "0,a,1,-0.5,keep", "1,b,0,0.5,drop"]
    assert code == 2
    assert f"writing the export to {output} failed" in err
    assert output.read_text() == exported


def test_relative_data_dir_stored_absolute(tmp_path, monkeypatch):
    from curator import runs
    from curator.pipeline import RunContext
    from tests.dataset_writers import labelled_images

    (tmp_path / "data").mkdir()
    images, labels = labelled_images(60, 3, size=12)
    np.savez(tmp_path / "data" / "d.npz", x=images, y=labels)
    monkeypatch.chdir(tmp_path)
    code = main(["run", "--workspace", "ws", "--dataset", "npz", "--data-dir", "data/d.npz", "--model", "logreg",
                 "--epochs", "1", "--params", "last_layer", "--no-round2", "--quiet"])
    store = Store(Workspace(tmp_path / "ws"))
    run_id = runs.latest_run_id(store)
    config = runs.get_run(store, run_id)["config"]

    assert code == 0
    assert config["data_dir"] == str(tmp_path / "data" / "d.npz")
    # Another working folder, as the app and a later resume have, still finds the data.
    monkeypatch.chdir(tmp_path / "data")
    assert len(RunContext(Workspace(tmp_path / "ws"), store, run_id).splits.train) > 0


def test_denoise_zero_sigma_rejected(tmp_path, capsys):
    code = main(["run", "--workspace", str(tmp_path), "--task", "denoise", "--sigma", "0", "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err

    assert code == 2
    assert "sigma 0.0 must be > 0" in err
    assert list(tmp_path.glob("runs/*")) == []


@pytest.mark.parametrize("options, message", [
    (["--noise-pairs", "3:5"], "noise pairs [[3, 5]] flip labels only with a label noise rate above 0"),
    (["--drop-rule", "top_k", "--drop-value", "0.5"], "top_k needs a whole count >= 0, got 0.5"),
    (["--drop-alpha", "2"], "(on the command line, --drop-alpha 0)"),
    (["--sigma", "5"], "--sigma apply only to denoising; add --task denoise"),
])
def test_run_option_conflicts_named(tmp_path, capsys, options, message):
    code = main(["run", "--workspace", str(tmp_path), "--epochs", "1", "--quiet", *options])
    err = capsys.readouterr().err

    assert code != 0
    assert message in err
    assert list(tmp_path.glob("runs/*")) == []


def test_export_unknown_run_named(tmp_path, capsys):
    Store(Workspace(tmp_path))
    code = main(["export", "--workspace", str(tmp_path), "--run", "nosuch", "--output", str(tmp_path / "a.csv")])

    assert code == 2
    assert "run 'nosuch' not found" in capsys.readouterr().err


def test_run_summary_names_augmentation_change(tmp_path, capsys):
    _tiny_run(tmp_path, "--params", "last_layer")
    out = capsys.readouterr().out

    assert "round 2 test error" in out
    assert "round 2 also changes augmentation (none -> translate1)" in out


def test_moved_workspace_exports_own_approval(tmp_path, capsys):
    import shutil

    import pandas as pd

    from curator import decisions

    first = tmp_path / "first"
    store = _store_with_run(first)
    folder = Workspace(first).run_dir("run-1") / "approvals"
    folder.mkdir()
    pd.DataFrame({"index": [0, 1], "sample_id": ["a", "b"], "label": [1, 0], "influence": [-0.5, 0.5],
                  "decision": ["keep", "drop"], "true_label": [None, None]}).to_parquet(folder / "approval-1.parquet")
    # One approval as stored now (relative to the run folder), one as older versions stored it.
    store.execute("INSERT INTO approvals (run_id, rule, n_drop, n_total, path, created_at) VALUES "
                  "('run-1', '{}', 1, 2, 'approvals/approval-1.parquet', now()), "
                  "('run-1', '{}', 1, 2, ?, now())", [str(folder / "approval-1.parquet")])
    shutil.move(first, tmp_path / "second")
    moved = Store(Workspace(tmp_path / "second", create=False))

    for approval_id in moved.query("SELECT approval_id FROM approvals")["approval_id"].tolist():
        approval, frame = decisions.read_approval(moved, "run-1", int(approval_id))
        assert approval["path"] == tmp_path / "second" / "runs" / "run-1" / "approvals" / "approval-1.parquet"
        assert frame["decision"].tolist() == ["keep", "drop"]
    approval["path"].unlink()
    code = main(["export", "--workspace", str(tmp_path / "second"), "--run", "run-1", "--output",
                 str(tmp_path / "out.csv")])
    assert code == 2
    assert "the file of approved drop set" in capsys.readouterr().err


def test_app_port_out_of_range_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["app", "--port", "99999"])

    assert "port '99999' must be a whole number from 1 to 65535" in capsys.readouterr().err
