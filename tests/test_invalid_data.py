"""Token grids are validated like sequences; a run whose data do not fit stops with a named error.

Token shards are written here with ShardWriter (the layout of ``fourm tokenize``), the runs use the
tiny config (configs/fm/shapes_tiny.yaml) for a few steps on one CPU process.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from fourm.config import load_yaml
from fourm.data.shards import ShardWriter, encode_sample
from fourm.masking import check_image_tokens
from fourm.modalities import ModalitySpec
from fourm.training.data_guard import InvalidDataError
from fourm.training.fourm_config import load_train_config
from fourm.training.fourm_task import train
from fourm.training.synthetic import synthetic_sample

TINY = REPO / "configs" / "fm" / "shapes_tiny.yaml"
RGB = ModalitySpec("tok_rgb", kind="image", vocab_size=1024, grid=(8, 8))


def tiny(out: Path, shards: Path, *overrides: str):
    return load_train_config(None, [f"out_dir={out}", f"data.train.shapes.shards={shards}", "threads=1",
                                    "logging.progress=false", "data.batch_size=4", "optim.warmup_steps=1",
                                    "checkpoint.every=100", *overrides], base=load_yaml(TINY))


def write_shards(folder: Path, grids: list[np.ndarray | None], seed: int = 0) -> None:
    """One token shard of synthetic samples; ``grids[i]``, when given, replaces sample i's tok_rgb."""
    registry = tiny(folder, folder).registry()
    rng = np.random.default_rng(seed)
    with ShardWriter(folder, shard_size=len(grids)) as w:
        for i, grid in enumerate(grids):
            sample = synthetic_sample(registry, rng)
            if grid is not None:
                sample["tok_rgb"] = grid
            w.write(f"{i:06d}", encode_sample(sample))


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("grid,why", [
    (np.full((8, 8), 1024, np.int16), r"ids must lie in \[0, 1023\] \(vocab_size=1024\), got values in \[1024, 1024\]"),
    (np.full((8, 8), 5000, np.int16), r"got values in \[5000, 5000\]"),
    (np.full((8, 8), -3, np.int16), r"got values in \[-3, -3\]"),
    (np.ones((8, 8), bool), "expected integer tokens .* got torch.bool"),
    (np.ones((8, 8), np.float32), "expected integer tokens .* got torch.float32"),
    (np.ones((4, 8), np.int16), r"expected integer tokens of shape \(B, 64\) or \(B, 8, 8\), got torch.int16 \(1, 4, 8\)"),
])
def test_check_image_tokens_refuses_what_does_not_fit_the_vocabulary_or_grid(grid, why):
    with pytest.raises(ValueError, match=f"modality 'tok_rgb': .*{why}"):
        check_image_tokens(RGB, torch.as_tensor(grid)[None])
    good = check_image_tokens(RGB, torch.full((2, 8, 8), 1023, dtype=torch.int16))
    assert good.dtype == torch.int64 and good.shape == (2, 64)


def test_out_of_range_and_bool_image_tokens_are_dropped_and_counted(tmp_path):
    bad = [np.full((8, 8), 1024, np.int16), np.full((8, 8), 5000, np.int16), np.full((8, 8), -3, np.int16),
           np.ones((8, 8), bool)]
    write_shards(tmp_path / "tok", [g for b in bad for g in (b, None, None, None)])  # one in each micro-batch
    summary = train(tiny(tmp_path / "run", tmp_path / "tok", "steps=4", "data.shuffle=false"))
    assert summary.step == 4 and summary.invalid_samples == 4 and summary.skipped_samples == 0
    records = metrics(tmp_path / "run")
    assert [r["invalid_samples"] for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in records) and records[-1]["tokens_seen"] > 0
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_a_run_without_one_valid_sample_stops_with_the_named_error(tmp_path):
    write_shards(tmp_path / "tok", [None] * 16)  # 8 x 8 grids; the model below wants 3 x 3
    with pytest.raises(InvalidDataError, match=r"step 3: no valid sample in the last 3 micro-batches of the data "
                                               r"\(data_check.window=3\): 12 samples dropped as invalid, e.g. sample "
                                               r"'\d+' of 'shard-00000.tar': modality 'tok_rgb': expected integer "
                                               r"tokens of shape \(B, 9\)"):
        train(tiny(tmp_path / "a", tmp_path / "tok", "modalities.tok_rgb.grid=[3,3]", "steps=20",
                   "data_check.window=3"))
    # a run shorter than the window stops at its last step instead of saving a model trained on nothing
    with pytest.raises(InvalidDataError, match="step 2: the run ended without one valid sample in 2 micro-batches"):
        train(tiny(tmp_path / "b", tmp_path / "tok", "modalities.tok_rgb.grid=[3,3]", "steps=2"))
    assert not (tmp_path / "a" / "model").exists() and not (tmp_path / "b" / "model").exists()


def test_too_many_invalid_samples_stop_the_run_past_the_threshold(tmp_path):
    out_of_range = np.full((8, 8), 2000, np.int16)
    write_shards(tmp_path / "tok", [None, out_of_range, out_of_range, out_of_range] * 4)  # 3 in 4 invalid
    with pytest.raises(InvalidDataError, match=r"step 2: 6 of 8 samples \(75%\) read by the data were invalid, more "
                                               r"than data_check.max_invalid_fraction=0.5; e.g. sample .*2000"):
        train(tiny(tmp_path / "a", tmp_path / "tok", "steps=8", "data_check.window=2", "data.shuffle=false"))
    summary = train(tiny(tmp_path / "b", tmp_path / "tok", "steps=8", "data_check.window=2", "data.shuffle=false",
                         "data_check.max_invalid_fraction=0.8"))
    assert summary.step == 8 and summary.invalid_samples == 24
