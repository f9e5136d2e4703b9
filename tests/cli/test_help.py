"""`--help` works for `simdex` and every command and sub-command (an unescaped % in one help text once made
`simdex --help` raise ValueError)."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from simdex.cli.main import build_parser, main


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of `parser`, sub-commands included (("serve",), ("heads", "train"), ...)."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append(path + (name,))
                out.extend(_commands(sub, path + (name,)))
    return out


COMMANDS = _commands(build_parser())


def test_the_commands_are_found():
    assert ("serve",) in COMMANDS and ("eval-seq2seq",) in COMMANDS and len(COMMANDS) > 15
    assert any(len(c) == 2 for c in COMMANDS)  # the sub-commands of a group


@pytest.mark.parametrize("command", [()] + COMMANDS, ids=lambda c: " ".join(c) or "simdex")
def test_help_prints_usage_and_exits_0(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: simdex {' '.join(command)}".rstrip()), out[:200]


def test_the_installed_entry_point_lists_every_command():
    r = subprocess.run([sys.executable, "-m", "simdex.cli.main", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert all(c[0] in r.stdout for c in COMMANDS if len(c) == 1)
