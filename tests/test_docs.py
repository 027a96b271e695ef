"""docs/cli.md is generated from --help; this fails when someone changes the CLI and not the docs."""

from __future__ import annotations

import importlib.util

from conftest import REPO


def test_cli_md_matches_help() -> None:
    spec = importlib.util.spec_from_file_location("generate_cli_md", REPO / "docs" / "generate_cli_md.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (REPO / "docs" / "cli.md").read_text() == module.render(), "run: python docs/generate_cli_md.py"
