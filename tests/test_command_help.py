"""``flashcore --help`` comes from the command table: every command, its true entry point and
its one-line summary; ``flashcore bench``'s backends come from the backend registry."""

from __future__ import annotations

import importlib

import pytest

from flashcore.app import cli


def test_help_lists_every_command_of_the_table_with_its_summary(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, command in cli.COMMANDS.items():
        (line,) = [ln for ln in out.splitlines() if ln.startswith(f"flashcore {name} ")]
        assert line.rstrip().endswith(command.summary), line
    assert "--verbose" in out


def test_no_arguments_prints_the_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "flashcore weights-table" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_points_at_a_function(name):
    module, _, attr = cli.COMMANDS[name].target.partition(":")
    assert callable(getattr(importlib.import_module(module), attr)), cli.COMMANDS[name]


def test_an_unknown_command_fails_and_lists_the_commands(capsys):
    assert cli.main(["no-such-command"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'no-such-command'" in err and "flashcore export" in err


def test_bench_backends_come_from_the_registry(capsys):
    from flashcore.conformance.adapters import BUILTIN

    assert cli.framework_backends() == ["torch", "jax", "tf"]
    assert set(cli.framework_backends()) < set(BUILTIN)
    with pytest.raises(SystemExit) as err:
        cli.main(["bench", "--backend", "numpy"])
    assert err.value.code == 2
    assert "--backend {torch,jax,tf}" in capsys.readouterr().err
