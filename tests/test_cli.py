"""The curator command line: help, and clear errors for bad input."""

import pytest

from curator.cli import build_parser, main

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
    assert "damping -1.0 must be >= 0" in capsys.readouterr().err


def test_unknown_solver_option_named(tmp_path, capsys):
    code = main(["run", "--workspace", str(tmp_path), "--epochs", "1", "--solver-option", "depth=5", "--quiet"])

    assert code == 2
    assert "no option(s) ['depth']" in capsys.readouterr().err


def test_results_empty_workspace(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["results", "--workspace", str(tmp_path)])

    assert "no runs in this workspace yet" in str(exit_info.value)


def test_export_unknown_format(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export", "--workspace", str(tmp_path), "--format", "xlsx", "--output", str(tmp_path / "a.xlsx")])

    assert "invalid choice: 'xlsx'" in capsys.readouterr().err
