"""The notebooks run headless, top to bottom, on tiny settings (FOURM_NOTEBOOK_TINY=1).

Each notebook runs in a fresh kernel of this interpreter with the working directory in a temporary
folder (the notebooks find the repo themselves) and writes its files under FOURM_NOTEBOOK_OUT, so
nothing lands in the checkout. A cell error fails the test with the cell's traceback.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
CELL_TIMEOUT_S = 180


def run_notebook(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[nbformat.NotebookNode, Path]:
    """Execute ``notebooks/<name>`` in a temporary folder; returns the executed notebook and its
    output folder. The kernel inherits this process's environment."""
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("FOURM_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("FOURM_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    default_out = REPO / "out" / "notebooks"
    before = sorted(default_out.rglob("*")) if default_out.exists() else []
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    after = sorted(default_out.rglob("*")) if default_out.exists() else []
    assert after == before, f"{name} wrote into the checkout ({default_out}) instead of FOURM_NOTEBOOK_OUT"
    return nb, out


def outputs(nb: nbformat.NotebookNode, kind: str) -> list:
    """Every output of the code cells: ``kind="image"`` gives PNG images, ``"text"`` printed text."""
    found = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if kind == "image" and "image/png" in o.get("data", {}):
                found.append(o["data"]["image/png"])
            elif kind == "text" and o.get("output_type") == "stream" and o.get("name") == "stdout":
                found.append(o["text"])
    return found


def test_notebooks_are_committed_runnable():
    for name in ("generation.ipynb", "editing_chains.ipynb", "training.ipynb"):
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        first = next(c for c in nb.cells if c.cell_type == "code")
        assert "FOURM_NOTEBOOK_TINY" in first.source, f"{name}: the first code cell must read FOURM_NOTEBOOK_TINY"


def test_generation_notebook(tmp_path, monkeypatch):
    nb, out = run_notebook("generation.ipynb", tmp_path, monkeypatch)
    assert len(outputs(nb, "image")) >= 4  # scene, rgb -> all, all -> rgb, settings
    for png in ("scene.png", "rgb_to_all.png", "all_to_rgb.png", "settings.png"):
        assert (out / "generation" / png).stat().st_size > 0
    text = "".join(outputs(nb, "text"))
    assert "tiny: True" in text
    assert "#0 caption:" in text and "#0 boxes:" in text
    assert "from caption:" in text  # the scene parser's reading of the rgb generated from the caption


def test_editing_chains_notebook(tmp_path, monkeypatch):
    nb, out = run_notebook("editing_chains.ipynb", tmp_path, monkeypatch)
    assert len(outputs(nb, "image")) >= 4
    for png in ("caption_edit.png", "inpaint.png", "boxes.png"):
        assert (out / "editing_chains" / png).stat().st_size > 0
    text = "".join(outputs(nb, "text"))
    assert "none outside the mask" in text  # the notebook asserts that in-painting keeps the other tokens
    assert "+ circle:" in text and "- first box:" in text


def test_training_notebook(tmp_path, monkeypatch):
    nb, out = run_notebook("training.ipynb", tmp_path, monkeypatch)
    run = out / "training" / "run"
    records = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    steps = [r["step"] for r in train]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2
    losses = [r["loss"] for r in train]
    assert all(math.isfinite(x) and x > 0 for x in losses)
    assert min(losses[1:]) < losses[0], f"the loss never went below its first value: {losses}"
    assert val and all(math.isfinite(r["loss"]) for r in val)
    assert (run / "train" / "model" / "config.json").is_file()
    assert (out / "training" / "loss.png").stat().st_size > 0 and (out / "training" / "generated.png").is_file()
    assert len(outputs(nb, "image")) >= 2  # the loss curve and the generation grid
