"""The notebooks run headless, top to bottom, on tiny settings (FOURM_NOTEBOOK_TINY=1), and the
committed notebooks hold their outputs but no progress-bar frames, warnings or absolute paths.

Each notebook runs in a fresh kernel of this interpreter with the working directory notebooks/
(the notebooks find the repo from there) and writes its files under FOURM_NOTEBOOK_OUT, so
nothing lands in the checkout. A cell error fails the test with the cell's traceback.
"""
from __future__ import annotations

import json
import math
import re
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
    out = tmp_path / "out"
    monkeypatch.setenv("FOURM_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("FOURM_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    default_out = REPO / "out" / "notebooks"
    before = [sorted(d.rglob("*")) if d.exists() else [] for d in (default_out, NOTEBOOKS)]
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    after = [sorted(d.rglob("*")) if d.exists() else [] for d in (default_out, NOTEBOOKS)]
    assert after == before, f"{name} wrote into the checkout instead of FOURM_NOTEBOOK_OUT"
    assert hygiene_problems(nb) == [], f"{name} would be saved with noise in its outputs"
    return nb, out


# An absolute path of the machine that ran a notebook: a POSIX root folder or a Windows drive.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~$])/(?:home|root|work|tmp|Users|usr|opt|var|mnt|private|data)/|\b[A-Za-z]:\\\w")


def output_texts(nb: nbformat.NotebookNode) -> list[tuple[int, str, str]]:
    """(cell index, kind, text) of every output: streams by name, other outputs' text/plain, errors."""
    found = []
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                found.append((i, o["name"], o["text"]))
            elif o.get("output_type") == "error":
                found.append((i, "error", "\n".join(o.get("traceback", []))))
            else:
                found.append((i, o.get("output_type", "?"), o.get("data", {}).get("text/plain", "")))
    return found


def hygiene_problems(nb: nbformat.NotebookNode) -> list[str]:
    """What must not be saved in a notebook: progress-bar frames (carriage returns, tqdm bars),
    warnings, errors, absolute paths (also in the metadata)."""
    problems = []
    for i, kind, text in output_texts(nb):
        if "\r" in text or re.search(r"\d+%\|", text):
            problems.append(f"cell {i}: progress-bar frames in {kind}")
        if re.search(r"\w*Warning\b|warnings\.warn", text):
            problems.append(f"cell {i}: a warning in {kind}: {text[:120]!r}")
        if kind == "error":
            problems.append(f"cell {i}: an error")
        if ABSOLUTE_PATH.search(text) or str(REPO) in text:
            problems.append(f"cell {i}: an absolute path in {kind}: {ABSOLUTE_PATH.search(text) or str(REPO)}")
    meta = json.dumps(nb.metadata)
    if ABSOLUTE_PATH.search(meta) or str(REPO) in meta:
        problems.append("an absolute path in the notebook's metadata")
    return problems


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


NAMES = ("generation.ipynb", "editing_chains.ipynb", "training.ipynb")


def test_notebooks_are_committed_runnable():
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        first = next(c for c in nb.cells if c.cell_type == "code")
        assert "FOURM_NOTEBOOK_TINY" in first.source, f"{name}: the first code cell must read FOURM_NOTEBOOK_TINY"


@pytest.mark.parametrize("name", NAMES)
def test_saved_notebooks_hold_outputs_without_noise(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{name} is saved unexecuted"
    assert outputs(nb, "image") and outputs(nb, "text"), f"{name} is saved without its outputs"
    assert "tiny: False" in "".join(outputs(nb, "text")), f"{name} is saved from a tiny run"
    assert hygiene_problems(nb) == []


def test_the_hygiene_check_finds_noise():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="\rtrain:  50%|#####     | 1/2"),
                    nbformat.v4.new_output("stream", name="stderr", text="tqdm/auto.py:21: TqdmWarning: IProgress not found"),
                    nbformat.v4.new_output("stream", name="stdout", text="writing to /home/me/fourm/out\n")]
    nb.cells.append(cell)
    assert len(hygiene_problems(nb)) == 3
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="writing to out/notebooks (1/2 done)\n")]
    assert hygiene_problems(nb) == []


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
