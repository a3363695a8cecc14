"""The checkpoint format of the single trainer: tensors in safetensors, the rest JSON, no pickle;
round trips of optimizer and RNG state; checkpoints of an older format refused by name."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from conftest import REPO
from fourm.config import ConfigError, load_config
from fourm.training import checkpoint as ckpt
from fourm.training.fourm_config import load_train_config
from fourm.training.fourm_task import FourMTask
from fourm.training.tokenizer_task import TokenizerTrainConfig, train_tokenizer
from fourm.training.trainer import Trainer


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = load_config(TokenizerTrainConfig, REPO / "configs" / "tokenizers" / "rgb_tiny.yaml",
                      overrides=[f"out_dir={out}", "steps=4", "checkpoint.every=2", "val=null", "logging.progress=false"])
    train_tokenizer(cfg, until_step=2)
    return out


def test_a_checkpoint_holds_safetensors_and_json_only(tokenizer_run):
    folder = ckpt.latest_checkpoint(tokenizer_run)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == ["meta.json", "model/README.md", "model/config.json", "model/model.safetensors", "optimizer.json",
                     "optimizer.safetensors", "rng.safetensors", "task_state.safetensors", "train_config.json",
                     "trainer_state.json"]
    meta = ckpt.read_meta(folder)
    assert (meta["format_version"], meta["step"], meta["task"], meta["world_size"]) == (2, 2, "tokenizer", 1)
    for p in folder.rglob("*.json"):
        json.loads(p.read_text())  # plain JSON, nothing to execute


def test_optimizer_state_round_trips_with_index_and_name_keys():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW([{"params": list(model[0].parameters()), "weight_decay": 0.1},
                             {"params": list(model[1].parameters()), "weight_decay": 0.0}], betas=(0.9, 0.95))
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    state = opt.state_dict()
    tensors, meta = ckpt.optimizer_to_files(state)
    back = ckpt.optimizer_from_files(tensors, json.loads(json.dumps(meta)))
    assert back["param_groups"] == state["param_groups"] and back["param_groups"][0]["betas"] == (0.9, 0.95)
    assert state["state"].keys() == back["state"].keys()
    for k, fields in state["state"].items():
        assert all(torch.equal(v, back["state"][k][n]) for n, v in fields.items())
    named = {"state": {"0.weight": state["state"][0]}, "param_groups": [{"params": ["0.weight"], "lr": 0.1}]}
    tensors, meta = ckpt.optimizer_to_files(named)  # FSDP's full state dicts key by parameter name
    assert torch.equal(ckpt.optimizer_from_files(tensors, json.loads(json.dumps(meta)))["state"]["0.weight"]["exp_avg"],
                       state["state"][0]["exp_avg"])
    fresh = torch.optim.AdamW([{"params": list(model[0].parameters())}, {"params": list(model[1].parameters())}])
    fresh.load_state_dict(back)  # what a resume does
    assert fresh.param_groups[0]["weight_decay"] == 0.1 and fresh.param_groups[0]["betas"] == (0.9, 0.95)


def test_rng_states_round_trip_exactly():
    tensors, values = ckpt.rng_state()
    values = json.loads(json.dumps(values))
    draws = (random.random(), np.random.rand(), torch.rand(3))
    ckpt.set_rng_state(tensors, values)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert draws[:2] == again[:2] and torch.equal(draws[2], again[2])


def test_older_formats_and_other_tasks_are_refused_by_name(tmp_path, tokenizer_run):
    old = tmp_path / "a" / "checkpoints" / "step-00000010"
    old.mkdir(parents=True)
    (old / ckpt.META_NAME).write_text(json.dumps({"format": ckpt.FORMAT_NAME, "format_version": 1, "step": 10}))
    with pytest.raises(ValueError, match="version 1 .*pickled its trainer state.*reads 'fourm.training.checkpoint' "
                                         "version 2"):
        ckpt.read_meta(old)
    legacy = tmp_path / "b" / "checkpoints" / "step_0000500"  # the tokenizer trainer's old layout
    legacy.mkdir(parents=True)
    with pytest.raises(ValueError, match="step_0000500: format version 1"):
        ckpt.latest_checkpoint(tmp_path / "b")
    cfg = load_train_config(REPO / "configs" / "fm" / "shapes_tiny.yaml",
                            [f"out_dir={tokenizer_run}", "data.train.shapes.shards=unused"])
    with pytest.raises(ConfigError, match="is a 'tokenizer' checkpoint; this run trains 'fourm'"):
        Trainer(FourMTask(cfg), resume="auto")
