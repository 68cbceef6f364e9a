"""The README documents every config key, every CLI option and every SQL view."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from pipeline import cli, config, store

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("key", config.documented_keys())
def test_every_config_key_is_in_the_readme(key: str) -> None:
    """Each dotted config key appears in backticks in the README's configuration table."""
    assert f"`{key}`" in README, f"README does not document config key {key}"


def _leaf_commands(group: click.Group = cli.cli, prefix: str = ""):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _leaf_commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def _options() -> list[tuple[str, str]]:
    found = []
    for name, command in _leaf_commands():
        for param in command.params:
            if isinstance(param, click.Option):
                long = next(o for o in param.opts if o.startswith("--"))
                found.append((name, long))
    return found


@pytest.mark.parametrize(("command", "option"), _options())
def test_every_cli_option_is_in_the_readme(command: str, option: str) -> None:
    """Each option of each command is in that command's README section."""
    section = README.split(f"### `journeymap {command}`", 1)
    assert len(section) == 2, f"README has no section for journeymap {command}"
    body = section[1].split("\n### ", 1)[0]
    assert re.search(rf"`{re.escape(option)}\b", body), f"{command} {option} undocumented"


def test_the_two_commands_come_first() -> None:
    """`make demo` and `make test` are named before any other usage."""
    first_usage = README.index("## Usage")
    assert README.index("make demo") < first_usage
    assert README.index("make test") < first_usage


def test_every_sql_view_is_listed() -> None:
    """Each view file in sql/ is named in the README's view table, with its schema."""
    for layer in store.SQL_LAYERS:
        for path in (store.SQL_DIR / layer).glob("*.sql"):
            schema = "staging" if layer == "staging" else "marts"
            assert f"`{schema}.{path.stem}`" in README, f"{path} is not in the README"


def test_every_sql_file_states_its_grain() -> None:
    """Each SQL file starts with a comment naming its object, grain and columns."""
    for layer in store.SQL_LAYERS:
        for path in (store.SQL_DIR / layer).glob("*.sql"):
            head = path.read_text(encoding="utf-8").split("create", 1)[0]
            assert path.stem in head and "grain" in head and "Columns:" in head, path
