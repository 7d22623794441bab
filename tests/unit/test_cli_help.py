"""Issue 13 section 5: every option of every command has help and shows its default;
the top-level CLI has --version and suggests the closest command."""

from __future__ import annotations

import argparse

import pytest
from mlrollout.services import cli


def _options(name: str) -> list[argparse.Action]:
    parser, _module = cli.command_parser(name)
    return [
        a
        for a in parser._actions
        if a.option_strings and not isinstance(a, argparse._HelpAction | argparse._VersionAction)
    ]


@pytest.mark.parametrize("name", list(cli.all_commands()))
def test_every_option_has_help_and_its_default(name: str) -> None:
    parser, _module = cli.command_parser(name)
    text = parser.format_help()
    for action in _options(name):
        flag = action.option_strings[-1]
        assert action.help, f"mlrollout {name} {flag} has no help"
        default = action.default
        if default not in (None, False, argparse.SUPPRESS) and not action.required:
            helped = parser._get_formatter()._expand_help(action)
            assert "default" in helped.lower(), f"mlrollout {name} {flag}: default not shown"
    assert "usage:" in text


def test_version_and_closest_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("mlrollout ")
    assert cli.main(["histroy"]) == 2
    assert "did you mean 'history'?" in capsys.readouterr().err
