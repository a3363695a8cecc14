"""Training: config strictness, optimizer groups and schedule, exact resume, faults, checkpoints.

Everything runs the tiny config (configs/fm/shapes_tiny.yaml) on synthetic token shards written
here with ShardWriter, in one CPU process; the multi-process test is in test_training_distributed.py.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fourm.config import ConfigError
from fourm.data.shard_reader import CorruptSampleError, ShardDataset
from fourm.data.shards import ShardWriter, encode_sample
from fourm.masking import UnifiedMasking
from fourm.generation import Sampler, Target
from fourm.modalities import ModalitySpec
from fourm.models import FourM
from fourm.config import load_yaml
from fourm.models import Block, DecoderBlock
from fourm.training import checkpoint as ckpt
from fourm.training.data import MixtureStream, count_slots
from fourm.training.distributed import apply_activation_checkpointing
from fourm.training.fourm_config import load_train_config
from fourm.training.fourm_task import FourMTask, load_initial_weights, no_decay_names, train
from fourm.training.optim import WarmupCosine, clean_name, param_groups
from fourm.training.synthetic import synthetic_sample, truncate_file, write_synthetic_token_shards
from fourm.training.trainer import NonFiniteLossError, Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "fm" / "shapes_tiny.yaml"
STEPS = 40  # 96 samples / batch 8 = 12 micro-batches per epoch: the runs cross three epochs


def tiny(out: Path, tok: Path, *overrides: str, drop: tuple[str, ...] = ()):
    """The tiny run; ``drop``: modalities removed from its ``modalities`` section."""
    base = load_yaml(TINY)
    for name in drop:
        del base["modalities"][name]
    return load_train_config(None, [f"out_dir={out}", f"data.train.shapes.shards={tok}", "threads=1",
                                    "logging.progress=false", *overrides], base=base)


def trainer_of(cfg, resume: str | None = None) -> Trainer:
    return Trainer(FourMTask(cfg), resume=resume)


def registry():
    return load_train_config(TINY, ["data.train.shapes.shards=unused"]).registry()


def metrics(out: Path, split: str = "train") -> list[dict]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x["split"] == split]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    write_synthetic_token_shards(d, registry(), num_samples=96, shard_size=32, seed=0)
    return d


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tok) -> Path:
    """An uninterrupted run of STEPS steps (the reference for the resume tests)."""
    out = tmp_path_factory.mktemp("straight")
    summary = train(tiny(out, tok, f"steps={STEPS}", "checkpoint.every=100"))
    assert summary.step == STEPS and summary.stopped_by is None
    return out


# ---- config ---------------------------------------------------------------------------------------

def test_config_rejects_unknown_keys_and_bad_combinations(tmp_path, tok):
    with pytest.raises(ConfigError, match=r"TrainConfig\.optim: unknown key\(s\) \['lrr'\]"):
        tiny(tmp_path, tok, "optim.lrr=1.0")
    with pytest.raises(ConfigError, match=r"TrainConfig\.data\.train\.shapes: unknown key\(s\) \['shardz'\]"):
        tiny(tmp_path, tok, "data.train.shapes.shardz=x")
    with pytest.raises(ConfigError, match="unknown key"):
        tiny(tmp_path, tok, "masking.components=[{name: a, input_alpha: {tok_rgb: 1.0}}]")
    with pytest.raises(ConfigError, match="masking.modalities: 'det' is not a model modality"):
        tiny(tmp_path, tok, drop=("det",))
    with pytest.raises(ConfigError, match="warmup_steps=50 exceeds steps=20"):
        tiny(tmp_path, tok, "optim.warmup_steps=50")
    with pytest.raises(ConfigError, match="batch_size=0"):
        tiny(tmp_path, tok, "data.batch_size=0")
    cfg = tiny(tmp_path, tok, "optim.lr=3e-4", "data.train.shapes.weight=2")
    assert cfg.optim.lr == 3e-4 and cfg.data.train["shapes"].weight == 2.0
    # the token shards' metadata.json says tok_rgb has 1024 codes: a smaller model vocabulary is refused
    with pytest.raises(ConfigError, match=r"set modalities.tok_rgb.vocab_size=1024"):
        trainer_of(tiny(tmp_path, tok, "modalities.tok_rgb.vocab_size=512"))


def test_rgb_pixel_input_trains_from_token_shards(tmp_path):
    """The bundled config's shape: rgb pixels stored in the token shards feed the patch embedding."""
    pixel_cfg = ["modalities={rgb: {kind: pixels, grid: [8, 8], patch_size: 8, decoder: false}, "
                 "tok_rgb: {kind: image, vocab_size: 1024, grid: [8, 8]}, tok_depth: {kind: image, vocab_size: 512, "
                 "grid: [8, 8]}, tok_semseg: {kind: image, vocab_size: 256, grid: [8, 8]}, caption: {kind: sequence, "
                 "vocab_size: 4096, max_length: 32}, det: {kind: sequence, vocab_size: 4096, max_length: 32}}",
                 "masking={modalities: [rgb, tok_rgb, tok_depth, tok_semseg, caption, det], num_input_tokens: 32, "
                 "num_target_tokens: 32, components: [{name: rgb2all, input_alphas: {rgb: 1000.0}, "
                 "target_alphas: {tok_depth: 0.5, tok_semseg: 0.5, caption: 0.5, det: 0.5}}]}"]
    shards = tmp_path / "tok"
    reg = load_train_config(TINY, ["data.train.shapes.shards=unused", *pixel_cfg]).registry()
    write_synthetic_token_shards(shards, reg, num_samples=16, shard_size=16, seed=0)
    sample = next(iter(ShardDataset(shards)))
    assert sample["rgb"].dtype == torch.uint8 and tuple(sample["rgb"].shape) == (3, 64, 64)
    run = tmp_path / "run"
    summary = train(tiny(run, shards, "steps=3", "checkpoint.every=1", "checkpoint.keep_last=3", *pixel_cfg))
    assert summary.step == 3 and summary.skipped_samples == 0 and math.isfinite(summary.last["loss"])
    first, last = (weights(path / "model") for _, path in ckpt.list_checkpoints(run)[::2])  # steps 1 and 3
    patch = [k for k in last if k.startswith("encoder_embeddings.rgb.")]
    assert patch and any(not torch.equal(first[k], last[k]) for k in patch)  # gradients reached the patch embedding


def test_cli_reports_config_errors(tmp_path, tok, capsys):
    from fourm.training.commands import main

    assert main([str(TINY), f"out_dir={tmp_path}", f"data.train.shapes.shards={tok}", "stepz=3"]) == 2
    assert "unknown key(s) ['stepz']" in capsys.readouterr().err


# ---- optimizer ------------------------------------------------------------------------------------

def test_param_groups_and_schedule():
    model = FourM(tiny(Path("x"), Path("y")).model.fourm_config(registry()))
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = param_groups(model, 0.05, no_decay_names(model))
    assert {g["name"] for g in (decay, no_decay)} == {"decay", "no_decay"}
    no = {names[id(p)] for p in no_decay["params"]}
    yes = {names[id(p)] for p in decay["params"]}
    assert "mask_token" in no and any(n.endswith("mod_emb") for n in no)
    assert any(n.endswith("norm1.weight") for n in no) and any(n.endswith("decoder_proj_context.bias") for n in no)
    assert any(n.endswith("attn.qkv.weight") for n in yes) and any(n.endswith("token_emb.weight") for n in yes)
    assert len(no) + len(yes) == len(list(model.parameters()))  # every parameter once
    _, no2 = param_groups(model, 0.05, no_decay_names(model, decay_embeddings=False))
    assert any(names[id(p)].endswith("token_emb.weight") for p in no2["params"])
    # wrapped blocks (names gain a segment; FSDP would also flatten shapes): same groups from the bare names
    bare = no_decay_names(model)
    apply_activation_checkpointing(model, (Block, DecoderBlock))
    assert any("_checkpoint_wrapped_module" in n for n, _ in model.named_parameters())
    _, no3 = param_groups(model, 0.05, bare)
    assert {clean_name(n) for n, p in model.named_parameters() if any(p is q for q in no3["params"])} == no

    f = WarmupCosine(total_steps=100, warmup_steps=10, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(99) == pytest.approx(0.1)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 89)))
    assert all(f(s) >= f(s + 1) for s in range(10, 99))


# ---- exact resume ---------------------------------------------------------------------------------

def test_exact_resume_is_bitwise(tmp_path, tok, straight):
    half = STEPS // 2 + 3  # mid-epoch (12 micro-batches per epoch)
    first = train(tiny(tmp_path, tok, f"steps={STEPS}", "checkpoint.every=100"), until_step=half)
    assert first.stopped_by == "until_step" and first.step == half
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [half]
    with pytest.raises(FileExistsError, match="--resume auto"):
        trainer_of(tiny(tmp_path, tok, f"steps={STEPS}", "checkpoint.every=100"))
    # the second half with DataLoader workers: masks and order must not depend on them
    second = train(tiny(tmp_path, tok, f"steps={STEPS}", "checkpoint.every=100", "data.num_workers=2"),
                   resume="auto")
    assert second.start_step == half and second.step == STEPS
    assert_same_weights(weights(straight / "model"), weights(tmp_path / "model"))
    a, b = metrics(straight), metrics(tmp_path)
    assert [x["step"] for x in b] == list(range(1, STEPS + 1))
    assert [x["loss"] for x in a] == [x["loss"] for x in b]
    assert [x["tokens_seen"] for x in a] == [x["tokens_seen"] for x in b]
    opt_a = ckpt.load_optimizer_state(straight / "checkpoints" / ckpt.checkpoint_name(STEPS))["state"]
    opt_b = ckpt.load_optimizer_state(tmp_path / "checkpoints" / ckpt.checkpoint_name(STEPS))["state"]
    assert all(torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]) for i in opt_a)
    assert a[-1]["loss"] < a[0]["loss"]  # it learns something
    model = FourM.from_pretrained(tmp_path / "model")  # the exported model loads
    assert model.config.dim == 32


def test_sigterm_then_resume_loses_no_step(tmp_path, tok, straight):
    cmd = [sys.executable, "-m", "fourm.training.commands", str(TINY), f"out_dir={tmp_path}",
           f"data.train.shapes.shards={tok}", "threads=1", f"steps={STEPS}", "checkpoint.every=100", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"run ended before the signal: {proc.communicate()}"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    stopped = json.loads(out.strip().splitlines()[-1])
    assert stopped["stopped_by"] == "SIGTERM" and 2 <= stopped["step"] < STEPS
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [stopped["step"]]
    assert [x["step"] for x in metrics(tmp_path)] == list(range(1, stopped["step"] + 1))
    done = train(tiny(tmp_path, tok, f"steps={STEPS}", "checkpoint.every=100"), resume="auto")
    assert done.start_step == stopped["step"] and done.step == STEPS
    assert [x["step"] for x in metrics(tmp_path)] == list(range(1, STEPS + 1))
    assert [x["loss"] for x in metrics(tmp_path)] == [x["loss"] for x in metrics(straight)]
    assert_same_weights(weights(straight / "model"), weights(tmp_path / "model"))


# ---- faults ---------------------------------------------------------------------------------------

def _inject_nan(trainer: Trainer, bad_steps: set[int]) -> None:
    original = trainer.compute_loss

    def compute_loss(batch):
        out = original(batch)
        if trainer.step + 1 in bad_steps:
            out.objective = out.objective * float("nan")
            out.metrics["loss"] = out.metrics["loss"] * float("nan")
        return out

    trainer.compute_loss = compute_loss


def test_nonfinite_step_is_skipped_and_counted(tmp_path, tok):
    trainer = trainer_of(tiny(tmp_path, tok, "steps=6", "max_nonfinite_steps=2"))
    _inject_nan(trainer, {3})
    at_start: dict[int, dict[str, torch.Tensor]] = {}  # weights before step s + 1, by s

    def snapshot(batch, _orig=trainer.compute_loss):
        at_start.setdefault(trainer.step, {n: p.detach().clone() for n, p in trainer.model.named_parameters()})
        return _orig(batch)

    trainer.compute_loss = snapshot
    summary = trainer.fit()
    trainer.close()
    assert summary.step == 6 and summary.nonfinite_steps == 1
    lines = metrics(tmp_path)
    assert [x["nonfinite_steps"] for x in lines] == [0, 0, 1, 1, 1, 1]
    assert all(math.isfinite(x["loss"]) for x in lines if x["step"] != 3)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert_same_weights(at_start[2], at_start[3])  # step 3 was skipped: no update
    assert not all(torch.equal(at_start[1][n], at_start[2][n]) for n in at_start[1])  # step 2 was not
    assert not all(torch.equal(at_start[3][n], at_start[4][n]) for n in at_start[3])  # training goes on
    assert {int(st["step"]) for st in trainer.optimizer.state_dict()["state"].values()} == {5}


def test_nonfinite_steps_in_a_row_abort_with_batch_saved(tmp_path, tok):
    trainer = trainer_of(tiny(tmp_path, tok, "steps=8", "max_nonfinite_steps=3"))
    _inject_nan(trainer, {2, 4, 5, 6})
    with pytest.raises(NonFiniteLossError, match="3 non-finite steps in a row"):
        trainer.fit()
    trainer.close()
    assert trainer.nonfinite_steps == 4  # step 2 alone was skipped, 4-6 in a row aborted
    saved = sorted((tmp_path / "debug").iterdir())
    assert [p.name for p in saved] == ["nonfinite-step-00000006-rank0.json", "nonfinite-step-00000006-rank0.safetensors"]
    dump, batches = json.loads(saved[0].read_text()), load_file(str(saved[1]))  # no pickle
    assert dump["step"] == 6 and len(dump["keys"][0]) == 8
    assert {k.split(".")[1] for k in batches if k.startswith("micro0.")} == {"tok_rgb", "tok_depth", "tok_semseg",
                                                                             "caption", "det"}
    assert batches["micro0.tok_rgb.tokens"].shape == (8, 64)


def test_truncated_shard_and_invalid_sample_are_skipped_and_counted(tmp_path):
    data = tmp_path / "tok"
    reg = registry()
    write_synthetic_token_shards(data, reg, num_samples=48, shard_size=16, seed=1)
    truncate_file(data / "shard-00000.tar", 0.5)  # an interrupted copy: its last readable sample is cut
    bad = synthetic_sample(reg, np.random.default_rng(0))
    bad["tok_rgb"] = bad["tok_rgb"][:4]  # a (4, 8) grid: cannot be masked as tok_rgb
    with ShardWriter(data, prefix="zbad", shard_size=4) as w:
        w.write("bad000", encode_sample(bad))
    slots = count_slots(str(data))
    assert 1 + 16 + 16 + 1 <= slots <= 48  # the truncated shard keeps its first samples
    # one full epoch with batch 1 and two workers: every slot is consumed once
    summary = train(tiny(tmp_path / "run", data, f"steps={slots}", "data.batch_size=1", "data.num_workers=2",
                         "logging.every=100", "checkpoint.every=1000", "optim.warmup_steps=1"))
    assert summary.step == slots
    assert summary.skipped_samples == 1 and summary.invalid_samples == 1
    assert metrics(tmp_path / "run")[-1]["skipped_samples"] == 1
    with pytest.raises(CorruptSampleError, match="truncated"):
        train(tiny(tmp_path / "strict", data, f"steps={slots}", "data.batch_size=1", "data.strict=true",
                   "data.shuffle=false"))


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tok):
    # 2 x 4 samples accumulated and one batch of 8 are the same 8 samples with the same masks; the
    # first step starts from the same weights, so loss and gradient norm agree up to the grouping of
    # the per-modality means (an unscaled sum of micro-batch gradients would double the norm)
    train(tiny(tmp_path / "big", tok, "steps=3", "data.batch_size=8"))
    train(tiny(tmp_path / "acc", tok, "steps=3", "data.batch_size=4", "optim.grad_accum=2"))
    big, acc = metrics(tmp_path / "big"), metrics(tmp_path / "acc")
    assert [x["tokens_seen"] for x in big] == [x["tokens_seen"] for x in acc]
    assert acc[0]["loss"] == pytest.approx(big[0]["loss"], rel=0.01)
    assert acc[0]["grad_norm"] == pytest.approx(big[0]["grad_norm"], rel=0.25)  # regrouping: ~7% here


# ---- checkpoints ----------------------------------------------------------------------------------

def test_checkpoints_keep_last_k_and_are_atomic(tmp_path, tok, monkeypatch):
    train(tiny(tmp_path, tok, "steps=12", "checkpoint.every=2", "checkpoint.keep_last=2"), until_step=8)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [6, 8]
    meta = ckpt.read_meta(tmp_path / "checkpoints" / ckpt.checkpoint_name(8))
    assert meta["format_version"] == ckpt.FORMAT_VERSION and meta["step"] == 8
    state = ckpt.load_trainer_state(tmp_path / "checkpoints" / ckpt.checkpoint_name(8))
    assert state["config"]["steps"] == 12 and state["data"]["sources"][0] == {"epoch": 0, "next_chunk": 8}
    assert {"python", "numpy"} <= set(state["ranks"][0]["rng"])
    assert {"torch", "numpy"} <= set(ckpt.load_rng_tensors(tmp_path / "checkpoints" / ckpt.checkpoint_name(8), 0))
    # a crash while writing step 10 leaves no step-10 folder and keeps step 8 as the newest
    stale = tmp_path / "checkpoints" / ".step-00000009.123.abcd.tmp"
    stale.mkdir()
    (stale / "optimizer.pt").write_bytes(b"partial")
    real_save = ckpt.CheckpointWriter.save_json

    def crash(self, name, obj):
        if self.step == 10 and name == ckpt.STATE_NAME:
            raise OSError("disk full")
        real_save(self, name, obj)

    monkeypatch.setattr(ckpt.CheckpointWriter, "save_json", crash)
    with pytest.raises(OSError, match="disk full"):
        train(tiny(tmp_path, tok, "steps=12", "checkpoint.every=2", "checkpoint.keep_last=2"), resume="auto")
    assert ckpt.latest_checkpoint(tmp_path).name == ckpt.checkpoint_name(8)
    assert not any(p.name.startswith(".step-00000010") for p in (tmp_path / "checkpoints").iterdir())
    monkeypatch.undo()
    done = train(tiny(tmp_path, tok, "steps=12", "checkpoint.every=2", "checkpoint.keep_last=2"), resume="auto")
    assert done.start_step == 8 and done.step == 12
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000010", "step-00000012"]
    with pytest.raises(ConfigError, match="cannot resume: .*data.batch_size"):
        trainer_of(tiny(tmp_path, tok, "steps=12", "data.batch_size=4"), resume="auto")
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        trainer_of(tiny(tmp_path, tok, "steps=12"), resume=str(tmp_path / "nowhere"))


# ---- your own modalities --------------------------------------------------------------------------

OWN = ["modalities={tok_rgb: {kind: image, vocab_size: 1024, grid: [8, 8]}, caption: {kind: sequence, "
       "vocab_size: 4096, max_length: 32}, tok_normal: {kind: image, vocab_size: 64, grid: [8, 8]}, "
       "tags: {kind: sequence, vocab_size: 4096, max_length: 8}}",
       "masking={modalities: [tok_rgb, caption, tok_normal, tags], num_input_tokens: 32, num_target_tokens: 32, "
       "components: [{input_alphas: {tok_rgb: 1.0, caption: 1.0, tok_normal: 1.0, tags: 1.0}, "
       "target_alphas: {tok_rgb: 1.0, caption: 1.0, tok_normal: 1.0, tags: 1.0}}]}"]


def test_own_modalities_from_the_config_train_and_generate(tmp_path):
    """The modalities section registers any specs: token shards with their fields train a model
    that knows them after saving, and the sampler generates them."""
    reg = load_train_config(TINY, ["data.train.shapes.shards=unused", *OWN]).registry()
    assert reg.names() == ["tok_rgb", "caption", "tok_normal", "tags"]
    assert reg["tok_normal"] == ModalitySpec("tok_normal", "image", vocab_size=64, grid=(8, 8))
    assert (reg["tok_normal"].tokenizer, reg["tok_normal"].raw_field, reg["tags"].token_field) == ("normal", "normal",
                                                                                                   "tok_tags")
    shards = tmp_path / "tok"
    write_synthetic_token_shards(shards, reg, num_samples=16, shard_size=16, seed=0)
    assert {"tok_normal", "tok_tags"} <= set(next(iter(ShardDataset(shards))))  # default fields
    run = tmp_path / "run"
    summary = train(tiny(run, shards, "steps=3", *OWN))
    assert summary.step == 3 and summary.skipped_samples == 0
    logged = set().union(*metrics(run))
    assert {"loss/tok_normal", "loss/tags"} <= logged
    model = FourM.from_pretrained(run / "model")
    assert model.specs["tok_normal"] == reg["tok_normal"] and model.specs["tags"] == reg["tags"]
    out = Sampler(model).generate({"tok_rgb": torch.zeros(2, 64, dtype=torch.long)},
                                  [Target("tok_normal", steps=2), Target("tags", max_tokens=4)], seed=0)
    normal = out.tokens("tok_normal")
    assert normal.shape == (2, 64) and int(normal.max()) < 64 and int(normal.min()) >= 0
    assert len(out.sequences("tags")) == 2


def test_a_spec_names_its_own_shard_field(tmp_path):
    """token_field in the config: the trainer reads that field, no other code spells it."""
    reg = load_train_config(TINY, ["data.train.shapes.shards=unused", *OWN]).registry()
    shards = tmp_path / "tok"
    write_synthetic_token_shards(shards, reg, num_samples=16, shard_size=16, seed=0)  # writes tok_normal
    with pytest.raises(CorruptSampleError, match=r"missing required field\(s\) \['normals_v2'\]"):
        train(tiny(tmp_path / "a", shards, "steps=2", "data.strict=true", *OWN,
                   "modalities.tok_normal.token_field=normals_v2"))
    renamed = load_train_config(TINY, ["data.train.shapes.shards=unused", *OWN, "modalities.tok_normal.token_field=tok_normal"])
    assert renamed.registry()["tok_normal"] == reg["tok_normal"]


def test_own_modality_config_errors_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match=r"modalities\.tok_normal: modality 'tok_normal': unknown kind 'imag'; "
                                          r"allowed: image"):
        load_train_config(TINY, ["modalities.tok_normal={kind: imag, vocab_size: 64, grid: [8, 8]}"])
    with pytest.raises(ConfigError, match=r"modalities\.tok_normal: modality spec 'tok_normal': unknown keys \['grids'\]"):
        load_train_config(TINY, ["modalities.tok_normal={kind: image, vocab_size: 64, grids: [8, 8]}"])
    with pytest.raises(ConfigError, match=r"modalities\.image_size: expected the fields of a modality"):
        load_train_config(TINY, ["modalities.image_size=64"])  # the schema before modalities listed specs
    with pytest.raises(ConfigError, match=r"modalities\.tok_normal: modality 'tok_normal': token_field='a/b'; must be"):
        load_train_config(TINY, ["modalities.tok_normal={kind: image, vocab_size: 64, grid: [8, 8], token_field: a/b}"])


def test_the_bundled_config_describes_the_bundled_model():
    """configs/fm/shapes_bundled*.yaml list their modalities spec by spec: the architecture they build
    is the committed model's, field for field (raw_field, token_field and tokenizer included)."""
    saved = FourM.from_pretrained(REPO / "models" / "shapes_bundled").config.to_dict()
    for name in ("shapes_bundled.yaml", "shapes_bundled_captions.yaml"):
        cfg = load_train_config(REPO / "configs" / "fm" / name)
        assert cfg.model.fourm_config(cfg.registry()).to_dict() == saved, name


# ---- data -----------------------------------------------------------------------------------------

def test_mixture_of_two_shard_sets_with_own_masking(tmp_path, tok):
    other = tmp_path / "img_only"
    write_synthetic_token_shards(other, registry().subset(["tok_rgb", "tok_depth"]), num_samples=32,
                                 shard_size=32, seed=5)
    img_masking = ("{modalities: [tok_rgb, tok_depth], num_input_tokens: 16, num_target_tokens: 16, components: "
                   "[{input_alphas: {tok_rgb: 1.0, tok_depth: 1.0}, target_alphas: {tok_rgb: 1.0, tok_depth: 1.0}}]}")
    cfg = tiny(tmp_path / "run", tok, "steps=8", "logging.sample_keys=true", "data.train.shapes.weight=1",
               f"data.train.images={{shards: {other}, weight: 3, masking: {img_masking}}}")
    summary = train(cfg)
    assert summary.step == 8
    logged = [json.loads(x) for x in (tmp_path / "run" / "samples" / "rank0.jsonl").read_text().splitlines()]
    trainer_sources = [x["source"] for x in logged]  # sorted names: 0 = images, 1 = shapes
    stream = MixtureStream([None, None], [3.0, 1.0], seed=cfg.seed)  # type: ignore[list-item]
    assert trainer_sources == [stream.choose(k) for k in range(8)]
    draws = [stream.choose(k) for k in range(4000)]
    assert abs(draws.count(0) / 4000 - 0.75) < 0.03
    logged_losses = set().union(*metrics(tmp_path / "run"))
    assert {"loss/tok_rgb", "loss/caption"} <= logged_losses


def test_validation_is_deterministic_and_logged(tmp_path, tok):
    val = tmp_path / "val"
    write_synthetic_token_shards(val, registry(), num_samples=24, shard_size=24, seed=9)
    trainer = trainer_of(tiny(tmp_path / "run", tok, "steps=4", f"val={{shards: {val}, every: 2, max_batches: 2}}"))
    first, again = trainer.validate(), trainer.validate()
    assert first == again and first["batches"] == 2
    assert set(first) >= {"loss/tok_rgb", "loss/tok_depth", "loss/tok_semseg", "loss/caption", "loss/det"}
    summary = trainer.fit()
    trainer.close()
    assert [x["step"] for x in metrics(tmp_path / "run", "val")] == [2, 4]
    assert summary.val["loss"] != first["loss"]


def test_activation_checkpointing_gives_the_same_gradients(tok):
    cfg = tiny(Path("unused"), tok)
    reg = cfg.registry()
    plain, wrapped = FourM(cfg.model.fourm_config(reg), seed=3), FourM(cfg.model.fourm_config(reg), seed=3)
    apply_activation_checkpointing(wrapped, (Block, DecoderBlock))
    assert plain.state_dict().keys() == wrapped.state_dict().keys()  # checkpoints stay loadable
    rng = np.random.default_rng(0)
    samples = [synthetic_sample(reg, rng) for _ in range(4)]
    raw = {s.name: [x[s.token_field] for x in samples] for s in reg}
    raw = {n: (np.stack(v) if reg[n].kind == "image" else v) for n, v in raw.items()}
    batch = UnifiedMasking(cfg.masking, reg).mask_batch(raw, 0)
    for model in (plain, wrapped):
        model(batch, 32, 32).loss.backward()
    grads = {n: p.grad for n, p in plain.named_parameters()}
    for n, p in wrapped.named_parameters():
        key = n.replace("._checkpoint_wrapped_module", "")
        assert (p.grad is None) == (grads[key] is None), key
        if p.grad is not None:
            torch.testing.assert_close(p.grad, grads[key], rtol=1e-5, atol=1e-7)


# ---- init_from (a second stage / fine-tuning) -----------------------------------------------------

def test_init_from_starts_from_a_saved_model(tmp_path, tok, straight):
    start = weights(straight / "model")
    trainer = trainer_of(tiny(tmp_path / "a", tok, "steps=2", f"init_from={straight / 'model'}"))
    assert_same_weights(start, {k: v.detach() for k, v in trainer.model.state_dict().items()})
    assert trainer.step == 0  # optimizer, schedule and data start fresh
    fresh = {k: v.detach() for k, v in trainer_of(tiny(tmp_path / "b", tok, "steps=2")).model.state_dict().items()}
    assert any(not torch.equal(fresh[k], start[k]) for k in start)  # without it: a random start
    with pytest.raises(ConfigError, match=r"init_from=.*architecture differs.*dim: 32 there, 48 here"):
        trainer_of(tiny(tmp_path / "c", tok, "steps=2", "model.dim=48", f"init_from={straight / 'model'}"))
    with pytest.raises(FileNotFoundError, match=r"init_from=.*not a model folder"):
        trainer_of(tiny(tmp_path / "d", tok, "steps=2", f"init_from={tmp_path}"))


def test_init_from_names_the_modality_fields_that_differ(tmp_path, tok, straight):
    """A modality difference is named field by field, not as two whole modality lists."""
    with pytest.raises(ConfigError) as err:
        trainer_of(tiny(tmp_path / "a", tok, "steps=2", "modalities.tok_rgb.vocab_size=512",
                     f"init_from={straight / 'model'}"))
    msg = str(err.value)
    assert "modalities.tok_rgb.vocab_size: 1024 there, 512 here" in msg
    assert "tok_depth" not in msg  # the modalities that agree are not listed
    saved = FourM.from_pretrained(straight / "model")
    keep = tuple(m for m in saved.config.modalities if m.name in ("tok_rgb", "caption"))
    fewer = dataclasses.replace(saved.config, modalities=keep)
    with pytest.raises(ConfigError, match=r"architecture differs[^;]*: modality 'det' there, not here; .*"
                                          r"modality 'tok_semseg' there, not here$"):
        load_initial_weights(FourM(fewer), str(straight / "model"))
    reordered = dataclasses.replace(saved.config, modalities=tuple(reversed(saved.config.modalities)))
    with pytest.raises(ConfigError, match=r"modality order: \['tok_rgb', .*\] there, \['det', .*\] here$"):
        load_initial_weights(FourM(reordered), str(straight / "model"))


def test_bundled_stage2_starts_from_stage1():
    """configs/fm/shapes_bundled_captions.yaml fine-tunes stage 1's exported model: same
    architecture and modalities (init_from checks them at run time, this test before a 1.5 h run)."""
    one = load_train_config(REPO / "configs" / "fm" / "shapes_bundled.yaml")
    two = load_train_config(REPO / "configs" / "fm" / "shapes_bundled_captions.yaml")
    assert two.init_from == f"{one.out_dir}/model" and two.out_dir != one.out_dir
    assert two.model == one.model and two.modalities == one.modalities
    assert two.data.train == one.data.train and two.val.shards == one.val.shards  # the same token shards
    names = {c.name for c in two.masking.components}
    assert {"rgb2caption", "caption2rgb"} <= names and {c.name for c in one.masking.components} < names


def test_transcribe_diagnostic_starts_from_the_bundled_model():
    """experiments/configs/shapes_bundled_transcribe.yaml (a diagnostic) fine-tunes models/shapes_bundled on
    pixels -> tok_rgb alone: the bundled model's architecture and modalities, one component."""
    two = load_train_config(REPO / "configs" / "fm" / "shapes_bundled_captions.yaml")  # made the bundled model
    diag = load_train_config(REPO / "experiments" / "configs" / "shapes_bundled_transcribe.yaml")
    assert diag.init_from == "models/shapes_bundled" and (REPO / diag.init_from / "config.json").is_file()
    assert diag.model == two.model and diag.modalities == two.modalities and diag.data.train == two.data.train
    (comp,) = diag.masking.components
    assert set(comp.input_alphas) == {"rgb"} and set(comp.target_alphas) == {"tok_rgb"}


def test_loss_weights_weigh_the_objective(tmp_path, tok):
    trainer = trainer_of(tiny(tmp_path, tok, "steps=2", "loss_weights={caption: 3.0, det: 0.5}"))
    batch = trainer.data.next().batch
    out = trainer.task.forward(trainer.model, batch)
    assert {"caption", "det"} <= out.mod_losses.keys()
    w = {n: {"caption": 3.0, "det": 0.5}.get(n, 1.0) for n in out.mod_losses}
    expected = sum(w[n] * v for n, v in out.mod_losses.items()) / sum(w.values())
    objective = trainer.task.objective(out)
    assert torch.allclose(objective, expected) and not torch.allclose(objective, out.loss)
    assert torch.equal(trainer.compute_loss(batch).objective, objective)  # what the step minimises
    plain = trainer_of(tiny(tmp_path / "plain", tok, "steps=2"))
    assert plain.task.objective(out) is out.loss  # no weights: the model's mean over modalities
    with pytest.raises(ConfigError, match=r"loss_weights: 'dept' is not a model modality"):
        tiny(tmp_path, tok, "loss_weights={dept: 2}")
    with pytest.raises(ConfigError, match=r"loss_weights.det=0(\.0)?: must be a number > 0"):
        tiny(tmp_path, tok, "loss_weights={det: 0}")
