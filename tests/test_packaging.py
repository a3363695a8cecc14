"""The top-level tokenizers/ folder holds assets only and must never shadow Hugging Face's package."""
from __future__ import annotations

from pathlib import Path

import tokenizers

from conftest import REPO


def test_import_tokenizers_is_hugging_face():
    origin = Path(tokenizers.__file__).resolve()
    assert REPO / "tokenizers" not in origin.parents, f"tokenizers resolved to the repo: {origin}"
    assert hasattr(tokenizers, "Tokenizer") and hasattr(tokenizers.models, "WordPiece")


def test_no_python_in_tokenizer_assets():
    assets = REPO / "tokenizers"
    assert not list(assets.rglob("*.py")), "tokenizers/ must hold assets only (no .py files)"


def test_cli_help_lists_commands(capsys):
    from fourm.cli import main
    import pytest

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("data", "tokenizer", "tokenize", "train", "generate", "demo"):
        assert f"    {command} " in out or f"    {command}\n" in out, f"fourm --help does not list {command!r}"


def test_cli_reports_user_errors_in_one_line(tmp_path, capsys):
    from fourm.cli import main

    rc = main(["train", str(tmp_path / "missing.yaml")])
    err = capsys.readouterr().err
    assert rc == 2 and "missing.yaml" in err and "Traceback" not in err
