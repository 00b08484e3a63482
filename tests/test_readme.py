"""The README documents every setting and shows the two commands CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

from zerorec.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_readme_table() -> None:
    table = README.split("<!-- settings-table", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"`(ZEROREC_[A-Z0-9_]+)`", table))
    expected = {f"ZEROREC_{name.upper()}" for name in Settings.model_fields}
    assert expected - listed == set(), "settings missing from the README table"
    assert listed - expected == set(), "README lists settings that do not exist"


def test_readme_shows_the_run_and_test_commands() -> None:
    assert "./local/task run" in README
    assert "./local/task test" in README
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text(encoding="utf-8")
    assert "./local/task test" in ci
