"""docs/cli.md is generated from --help; this fails when someone changes the CLI and not the docs."""

from __future__ import annotations

from conftest import REPO, load_script


def generator():
    return load_script("docs/generate_cli_md.py")


def test_cli_md_matches_help() -> None:
    assert (REPO / "docs" / "cli.md").read_text() == generator().render(), "run: python docs/generate_cli_md.py"


def test_cli_md_covers_every_subcommand() -> None:
    text = (REPO / "docs" / "cli.md").read_text()
    paths = generator().command_paths()
    assert ("corpus", "build") in paths and ("corpus", "check") in paths
    for path in paths:
        assert f"## `{' '.join(['promptmii', *path])}`" in text
