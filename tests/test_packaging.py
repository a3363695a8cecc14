"""Packaging: the tokenizers/ assets never shadow Hugging Face's package; pyproject dependencies match what
fourm/ imports; one version source; help on every verb and option; the wheel installed elsewhere runs."""
from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tokenizers

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli
    import tomli as tomllib

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


# ---- pyproject, imports, the command ------------------------------------------------------------
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# distribution name -> the module fourm imports, where they differ
MODULE_OF = {"pillow": "PIL", "pyyaml": "yaml", "vector-quantize-pytorch": "vector_quantize_pytorch",
             "scikit-image": "skimage"}
NOT_IMPORTED = {"ipykernel", "nbclient", "nbformat", "pytest", "setuptools", "tensorboard", "wandb", "mlflow",
                "tomli"}  # tools (tomli: the tests on Python 3.10), notebooks, trackers


def requirement_modules(requirements: list[str]) -> dict[str, str]:
    names = [re.split(r"[<>=\[; ]", r, maxsplit=1)[0].lower() for r in requirements]
    return {n: MODULE_OF.get(n, n.replace("-", "_")) for n in names if n != "fourm"}


def imported_modules() -> set[str]:
    out = set()
    for path in (REPO / "fourm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out.add(node.module.split(".")[0])
    return out - set(sys.stdlib_module_names) - {"fourm"}


def test_every_dependency_is_imported_and_every_import_is_declared():
    core = requirement_modules(PYPROJECT["project"]["dependencies"])
    extras = {n: m for reqs in PYPROJECT["project"]["optional-dependencies"].values()
              for n, m in requirement_modules(reqs).items()}
    imported = imported_modules()
    assert {n for n, m in core.items() if m not in imported} == set(), "a dependency nothing in fourm/ imports"
    assert {n for n, m in extras.items() if m not in imported} <= NOT_IMPORTED
    assert imported - set(core.values()) - set(extras.values()) == set(), "an import no dependency provides"
    assert "diffusers" not in core and "diffusers" in extras  # only the optional diffusion decoder needs it


def test_one_version_source_and_typed_package():
    import importlib.metadata

    import fourm

    assert PYPROJECT["project"]["dynamic"] == ["version"] and "version" not in PYPROJECT["project"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fourm.__version__"}
    assert importlib.metadata.version("fourm") == fourm.__version__
    assert (REPO / "fourm" / "py.typed").is_file() and PYPROJECT["tool"]["setuptools"]["package-data"]["fourm"] == ["py.typed"]


def test_python_m_fourm():
    out = subprocess.run([sys.executable, "-m", "fourm", "--version"], capture_output=True, text=True, timeout=120)
    import fourm

    assert out.returncode == 0 and out.stdout.strip() == f"fourm {fourm.__version__}"


def _parsers(parser: argparse.ArgumentParser, name: str = "fourm"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for verb, sub in action.choices.items():
                assert helps.get(verb), f"'{name} {verb}' has no help line"
                yield from _parsers(sub, f"{name} {verb}")


def test_every_verb_and_option_has_help():
    from fourm.cli import build_parser

    missing = []
    for name, parser in _parsers(build_parser()):
        if name != "fourm" and not parser.description:
            missing.append(f"{name}: no description")
        for action in parser._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_wheel_installs_and_runs_from_another_folder(tmp_path):
    """Build the wheel, install it (not editable) into a fresh target folder, and run the command
    from a folder that is not the checkout: --help, eval with explicit folders, eval without them."""
    dist, target, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-w", str(dist)], check=True,
                   timeout=600, cwd=tmp_path)
    (wheel,) = dist.glob("fourm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fourm/py.typed" in names and "fourm/__main__.py" in names and "fourm/hub.py" in names
    assert not [n for n in names if n.startswith(("tokenizers/", "models/", "tests/"))]
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, timeout=600)
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    script = str(target / "bin" / "fourm")

    def fourm(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([script, *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900)

    where = subprocess.run([sys.executable, "-c", "import fourm; print(fourm.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, timeout=120)
    assert where.stdout.strip() == str(target / "fourm" / "__init__.py")  # the wheel, not the checkout
    out = fourm("--help")
    assert out.returncode == 0 and "generate" in out.stdout and "eval" in out.stdout
    out = fourm("eval", "--model", str(REPO / "models" / "shapes_bundled"), "--tokenizers",
                str(REPO / "tokenizers" / "shapes64"), "--num-samples", "2", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "rgb -> semseg" in out.stdout and "caption -> rgb" in out.stdout  # the benchmark table
    out = fourm("eval", "--num-samples", "2")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "--model not given and ./models/shapes_bundled does not exist here" in out.stderr
    assert "pass --model FOLDER_OR_HUB_REPO_ID" in out.stderr
    shutil.rmtree(target)
