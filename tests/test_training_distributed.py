"""Two training processes on the CPU through ``accelerate launch`` (gloo), against one process.

One process with batch 8 and two processes with batch 4 each see the same global batch: the same
samples (each exactly once per epoch, split between the ranks) with the same masks, because order
and masks are functions of (seed, epoch, global sample slot). The losses are then equal up to the
grouping of the per-modality means: the model's loss is a mean over modalities of per-modality
token means, computed per process and averaged across processes, whereas one process computes it
over all 8 samples at once. That regrouping changes values by a fraction of a percent here, and the
weights follow almost the same path, so the check is 2% relative per step; an error in data
sharding, masking or gradient averaging moves the losses by more (and the key checks are exact).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from fourm.training.fourm_config import load_train_config
from fourm.training.fourm_task import train
from fourm.training.synthetic import write_synthetic_token_shards

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "fm" / "shapes_tiny.yaml"
STEPS = 8  # 64 samples: 8 global batches of 8 = exactly one epoch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_two_cpu_processes_match_one_and_split_the_data(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    assert accelerate, "the accelerate launcher must be installed next to the interpreter"
    tok = tmp_path / "tok"
    common = [f"data.train.shapes.shards={tok}", f"steps={STEPS}", "threads=1", "logging.every=1",
              "logging.sample_keys=true", "logging.progress=false", "optim.warmup_steps=1"]
    cfg = load_train_config(TINY, [f"out_dir={tmp_path / 'one'}", "data.batch_size=8", *common])
    write_synthetic_token_shards(tok, cfg.registry(), num_samples=64, shard_size=16, seed=3)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "fourm.training.commands", str(TINY), f"out_dir={tmp_path / 'two'}", "data.batch_size=4",
           *common, "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])  # printed by the main process only
    assert result["step"] == STEPS and len(proc.stdout.strip().splitlines()) == 1

    one = train(cfg)
    assert one.step == STEPS
    m1, m2 = _lines(tmp_path / "one" / "metrics.jsonl"), _lines(tmp_path / "two" / "metrics.jsonl")
    assert [x["step"] for x in m1] == [x["step"] for x in m2] == list(range(1, STEPS + 1))
    # the same samples with the same masks: identical token counts at every step
    assert [x["tokens_seen"] for x in m1] == [x["tokens_seen"] for x in m2]
    for a, b in zip(m1, m2):
        assert abs(a["loss"] - b["loss"]) <= 0.02 * a["loss"], (a["step"], a["loss"], b["loss"])

    keys1 = _lines(tmp_path / "one" / "samples" / "rank0.jsonl")
    keys2 = [_lines(tmp_path / "two" / "samples" / f"rank{r}.jsonl") for r in (0, 1)]
    for step in range(STEPS):
        r0, r1 = keys2[0][step]["keys"], keys2[1][step]["keys"]
        assert len(r0) == len(r1) == 4 and not set(r0) & set(r1)
        assert sorted(r0 + r1) == sorted(keys1[step]["keys"])  # the same global batch
    seen = [k for rank in keys2 for line in rank for k in line["keys"]]
    assert all(line["epoch"] == 0 for rank in keys2 for line in rank)
    assert len(seen) == len(set(seen)) == 64  # one epoch: every sample exactly once across both ranks
