"""Image tokenizers: round trips, normalisation inside, save/load, 224 px, training via the CLI,
evaluation and pre-tokenisation of shards. All on the tiny configs (configs/tokenizers/*_tiny.yaml)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import REPO
from fourm.cli import main as cli
from fourm.config import ConfigError, from_dict, load_config
from fourm.data.shapes_world import FAR_DEPTH, SEMSEG_CLASSES, WorldConfig, render_scene
from fourm.data.shapes_modalities import shapes_world_modalities
from fourm.evaluation.reconstruction import evaluate_tokenizers, render_batch
from fourm.vq.normalize import DepthNormalizer, NormalizeConfig, RGBNormalizer
from fourm.training.tokenizer_task import TokenizerTrainConfig, evaluate_batch, train_tokenizer
from fourm.vq.config import NetConfig, TokenizerConfig
from fourm.vq.loading import load_tokenizers
from fourm.vq.vqvae import ImageTokenizer

MODALITIES = ("rgb", "depth", "semseg")
CONFIGS = REPO / "configs" / "tokenizers"


def tiny_train_config(modality: str, out_dir: Path, **overrides) -> TokenizerTrainConfig:
    items = [f"out_dir={out_dir}"] + [f"{k}={v}" for k, v in overrides.items()]
    return load_config(TokenizerTrainConfig, CONFIGS / f"{modality}_tiny.yaml", overrides=items)


def tiny_tokenizer(modality: str, seed: int = 0) -> ImageTokenizer:
    torch.manual_seed(seed)
    return ImageTokenizer(tiny_train_config(modality, Path("unused")).tokenizer)


def scenes(n: int = 3, size: int = 32, seed: int = 11) -> dict[str, torch.Tensor]:
    return render_batch(seed, range(n), size)


def assert_stored(modality: str, x: torch.Tensor, shape: tuple[int, ...], tok: ImageTokenizer) -> None:
    assert tuple(x.shape) == shape
    if modality == "rgb":
        assert x.dtype == torch.uint8
    elif modality == "depth":
        assert x.dtype == torch.float32 and torch.isfinite(x).all()
        n = tok.config.normalize
        assert float(x.min()) >= n.depth_near * (1 - 1e-5) and float(x.max()) <= n.depth_far * (1 + 1e-5)
    else:
        assert x.dtype == torch.uint8 and int(x.max()) < tok.config.normalize.num_classes


# --- round trips --------------------------------------------------------------------------------

@pytest.mark.parametrize("modality", MODALITIES)
def test_round_trip_shapes_dtypes_ranges(modality):
    tok = tiny_tokenizer(modality)
    batch = scenes()[modality]
    tokens = tok.encode(batch)
    assert tokens.dtype == torch.int64 and tokens.shape == (3, 4, 4)
    assert int(tokens.min()) >= 0 and int(tokens.max()) < tok.codebook_size
    out = tok.decode(tokens)
    assert_stored(modality, out, tuple(batch.shape), tok)
    # a single image (no batch dimension) round-trips to a single image, with the same tokens
    one = tok.encode(batch[1])
    assert one.shape == (4, 4) and torch.equal(one, tokens[1])
    assert_stored(modality, tok.decode(one), tuple(batch.shape[1:]), tok)
    # numpy input (as render_scene gives depth and semseg) works as well
    if modality != "rgb":
        assert torch.equal(tok.encode(batch.numpy()), tokens)


@pytest.mark.parametrize("modality", MODALITIES)
def test_every_parameter_gets_a_finite_gradient(modality):
    tok = tiny_tokenizer(modality).train()
    out = tok(scenes(2)[modality])
    out.loss.backward()
    for name, p in tok.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    assert torch.isfinite(out.loss)


def test_training_forward_under_bf16_autocast_keeps_quantisation_float32():
    tok = tiny_tokenizer("rgb").train()
    seen = {}
    hook = tok.quantizer.register_forward_hook(lambda m, i, o: seen.update(dtype=o.quantized.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tok(scenes(2)["rgb"])
    hook.remove()
    assert seen["dtype"] == torch.float32
    assert torch.isfinite(out.loss)


def test_224_px_gives_14_by_14_tokens():
    cfg = TokenizerConfig(
        modality="rgb", image_size=224, downsample=16,
        encoder=NetConfig(dim=4, dim_mult=(1, 1, 2, 2), depths=(0, 0, 0, 1)),
        decoder=NetConfig(dim=4, dim_mult=(1, 1, 2, 2), depths=(0, 0, 0, 1)),
    )
    tok = ImageTokenizer(cfg)
    rgb = torch.from_numpy(render_scene(0, 0, WorldConfig(image_size=224))["rgb"]).permute(2, 0, 1)
    tokens = tok.encode(rgb)
    assert tokens.shape == (14, 14)
    assert tok.decode(tokens).shape == (3, 224, 224)
    assert tok.token_grid(224, 224) == (14, 14)


def test_config_rejects_bad_combinations():
    with pytest.raises(ValueError, match="dim_mult has 3 entries but downsample=16 needs 4"):
        TokenizerConfig(modality="rgb", downsample=16)
    with pytest.raises(ValueError, match="power of two"):
        TokenizerConfig(modality="rgb", downsample=12)
    with pytest.raises(ValueError, match="'normal' is not one of rgb, depth, semseg; say how its images are stored "
                                         "with normalize.kind"):
        TokenizerConfig(modality="normal")
    assert TokenizerConfig(modality="normal", normalize=NormalizeConfig(kind="depth")).kind == "depth"
    with pytest.raises(ValueError, match="normalize.kind='normals'; allowed: rgb, depth, semseg"):
        NormalizeConfig(kind="normals")
    with pytest.raises(ValueError, match="cross_entropy"):
        from_dict(TokenizerConfig, {"modality": "semseg", "loss": {"l1": 1.0}})
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(TokenizerTrainConfig, {"tokenizer": {"modality": "rgb", "quantiser": {}}})
    with pytest.raises(ConfigError, match="activation_checkpointing are for FourM runs"):
        tiny_train_config("rgb", Path("unused"), **{"distributed.activation_checkpointing": "true"})
    with pytest.raises(ConfigError, match="val.seed=0 equals data.seed"):
        tiny_train_config("rgb", Path("unused"), **{"val.seed": 0})


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_match_the_modality_registry(path):
    cfg = load_config(TokenizerTrainConfig, path)
    t = cfg.tokenizer
    assert path.name.startswith(t.modality)
    if path.name.endswith("_64.yaml"):
        reg = shapes_world_modalities(image_size=64)
        spec = reg[f"tok_{t.modality}"]
        assert t.image_size == 64 and (t.image_size // t.downsample,) * 2 == spec.grid
        assert t.quantizer.codebook_size == spec.vocab_size
        if t.modality == "depth":
            assert t.normalize.depth_far == FAR_DEPTH
        if t.modality == "semseg":
            assert t.normalize.num_classes == len(SEMSEG_CLASSES)


# --- normalisation inside ------------------------------------------------------------------------

def test_wrong_inputs_raise_clear_errors():
    rgb, depth, semseg = tiny_tokenizer("rgb"), tiny_tokenizer("depth"), tiny_tokenizer("semseg")
    b = scenes(2)
    with pytest.raises(TypeError, match="rgb must be uint8.*got torch.float32; pass the image as stored"):
        rgb.encode(b["rgb"].float() / 255)
    with pytest.raises(ValueError, match="channels-last"):
        rgb.encode(b["rgb"].permute(0, 2, 3, 1).contiguous())
    with pytest.raises(ValueError, match="multiples of downsample=8"):
        rgb.encode(b["rgb"][..., :30])
    with pytest.raises(TypeError, match="depth must be float32 metres, got torch.int32"):
        depth.encode(b["depth"].int())
    with pytest.raises(ValueError, match="positive"):
        depth.encode(-b["depth"])
    with pytest.raises(ValueError, match="NaN"):
        depth.encode(torch.full((32, 32), float("nan")))
    with pytest.raises(TypeError, match="semseg must hold integer class ids"):
        semseg.encode(b["semseg"].float())
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 5\], got values in \[9, 9\]"):
        semseg.encode(torch.full((32, 32), 9, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 63\]"):
        rgb.decode(torch.full((4, 4), 64))
    with pytest.raises(TypeError, match="integer"):
        rgb.decode(torch.zeros(4, 4))


def test_normalisers_invert_exactly_in_range():
    n = RGBNormalizer()
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(1, 3, 16, 16)
    assert torch.equal(n.from_model(n.to_model(x)), x)
    d = DepthNormalizer(near=2.0, far=50.0)
    depth = torch.tensor([[2.0, 3.3, 10.0, 49.9, 50.0]])
    z = d.to_model(depth)
    assert float(z.min()) == pytest.approx(-1.0) and float(z.max()) == pytest.approx(1.0)
    torch.testing.assert_close(d.from_model(z), depth, rtol=1e-5, atol=0)
    # outside the range values are clamped to it
    torch.testing.assert_close(d.from_model(d.to_model(torch.tensor([[1.0, 80.0]]))), torch.tensor([[2.0, 50.0]]))
    with pytest.raises(ValueError, match="near < far"):
        NormalizeConfig(depth_near=5.0, depth_far=5.0)


# --- save / load ---------------------------------------------------------------------------------

@pytest.mark.parametrize("modality", MODALITIES)
def test_save_load_gives_identical_outputs(modality, tmp_path):
    tok = tiny_tokenizer(modality)
    # a few training steps so that codebook buffers differ from their initial values
    tok.train()
    for i in range(2):
        tok(scenes(2, seed=i)[modality]).loss.backward()
    tok.eval()
    tok.save_pretrained(tmp_path / modality)
    loaded = ImageTokenizer.from_pretrained(tmp_path / modality)
    batch = scenes()[modality]
    tokens = tok.encode(batch)
    assert torch.equal(loaded.encode(batch), tokens)
    assert torch.equal(loaded.decode(tokens), tok.decode(tokens))
    meta = json.loads((tmp_path / modality / "config.json").read_text())
    assert meta["format_version"] == 1 and meta["config"]["modality"] == modality
    assert not list((tmp_path / modality).glob(".*.tmp"))  # no temporary files left behind


def test_load_is_strict(tmp_path):
    tok = tiny_tokenizer("rgb")
    d = tok.save_pretrained(tmp_path / "rgb")
    meta_path = d / "config.json"
    meta = json.loads(meta_path.read_text())
    # weights that do not match the recorded hash (a torn save)
    other = tiny_tokenizer("rgb", seed=1)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, d / "model.safetensors")
    with pytest.raises(ValueError, match="does not match the hash"):
        ImageTokenizer.from_pretrained(d)
    # a future format version
    tok.save_pretrained(d)
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99"):
        ImageTokenizer.from_pretrained(d)
    # a config that does not fit the weights (strict key/shape check)
    meta["config"]["quantizer"]["codebook_size"] = 32
    meta["weights_sha256"] = None
    tok.save_pretrained(d)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(RuntimeError, match="size mismatch"):
        ImageTokenizer.from_pretrained(d)


def test_load_tokenizers_folder(tmp_path):
    for m in MODALITIES:
        tiny_tokenizer(m).save_pretrained(tmp_path / m)
    toks = load_tokenizers(tmp_path)
    assert sorted(toks) == sorted(MODALITIES)
    assert all(toks[m].modality == m for m in MODALITIES)
    with pytest.raises(FileNotFoundError, match="no tokenizer found"):
        load_tokenizers(tmp_path / "rgb")
    tiny_tokenizer("depth").save_pretrained(tmp_path / "wrong" / "rgb")
    with pytest.raises(ValueError, match="holds a 'depth' tokenizer"):
        load_tokenizers(tmp_path / "wrong")
    tiny_tokenizer("depth").save_pretrained(tmp_path / "wrong2" / "rgb_gen")
    with pytest.raises(ValueError, match="holds a 'depth' tokenizer"):
        load_tokenizers(tmp_path / "wrong2")


def test_a_second_tokenizer_of_a_modality_sits_in_a_variant_folder(tmp_path):
    """rgb_gen/ (a second rgb tokenizer, e.g. one made for generation) loads beside rgb/, reads the
    rgb field in tokenizer eval and in tokenize, and writes its own token field."""
    from fourm.data.pretokenize import plan_fields

    tiny_tokenizer("rgb", seed=0).save_pretrained(tmp_path / "rgb")
    tiny_tokenizer("rgb", seed=1).save_pretrained(tmp_path / "rgb_gen")
    toks = load_tokenizers(tmp_path)
    assert sorted(toks) == ["rgb", "rgb_gen"] and toks["rgb_gen"].modality == "rgb"
    res = evaluate_tokenizers(toks, seed=3, num_samples=2, parser=False, progress=False)
    assert res["skipped"] == [] and res["rgb"]["psnr"] != res["rgb_gen"]["psnr"]  # both scored, different weights
    plan = {f.tokenizer: f for f in plan_fields(toks)}
    assert (plan["rgb_gen"].raw_field, plan["rgb_gen"].token_field) == ("rgb", "tok_rgb_gen")


# --- training --------------------------------------------------------------------------------------

@pytest.mark.parametrize("modality,metric,better", [("rgb", "psnr", 1), ("depth", "abs_rel", -1), ("semseg", "miou", 1)])
def test_tiny_training_improves_reconstruction(modality, metric, better, tmp_path):
    cfg = tiny_train_config(modality, tmp_path / modality, steps=20, **{"checkpoint.every": 20, "logging.every": 10})
    torch.manual_seed(cfg.seed)  # the same initial weights train_tokenizer will draw
    held_out = render_batch(cfg.val.seed, range(cfg.val.samples), cfg.tokenizer.image_size)
    before = evaluate_batch(ImageTokenizer(cfg.tokenizer), held_out)[metric]
    summary = train_tokenizer(cfg, progress=False)
    after = summary.val[metric]
    assert better * (after - before) > 0, f"{metric}: {before:.4f} before, {after:.4f} after 20 steps"
    lines = [json.loads(l) for l in (tmp_path / modality / "metrics.jsonl").read_text().splitlines()]
    losses = [l["loss"] for l in lines if l["split"] == "train"]
    assert losses[-1] < losses[0]
    ImageTokenizer.from_pretrained(summary.model_dir)  # the final tokenizer loads


def test_cli_train_end_to_end_and_resume_equals_uninterrupted(tmp_path, capsys):
    cfg = str(CONFIGS / "rgb_tiny.yaml")
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli(["tokenizer", "train", cfg, f"out_dir={full}", "steps=6", "--no-progress"]) == 0
    assert cli(["tokenizer", "train", cfg, f"out_dir={part}", "--until-step", "3", "--no-progress"]) == 0
    # an out_dir with checkpoints is not overwritten by accident
    assert cli(["tokenizer", "train", cfg, f"out_dir={part}", "--no-progress"]) == 2
    assert "--resume auto" in capsys.readouterr().err
    assert cli(["tokenizer", "train", cfg, f"out_dir={part}", "--resume", "auto", "--no-progress"]) == 0
    assert "steps 3..6" in capsys.readouterr().out
    a = ImageTokenizer.from_pretrained(full / "tokenizer").state_dict()
    b = ImageTokenizer.from_pretrained(part / "tokenizer").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between resumed and uninterrupted training"
    assert len(list((part / "checkpoints").glob("step-*"))) == 2  # checkpoint.keep_last
    # the last figures resume exactly too (codebook usage and perplexity over their window, held-out scores)
    logs = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (full, part)]
    keys = ("loss", "recon", "quant", "usage", "perplexity", "grad_norm", "lr", "tokens_seen")
    assert [{k: x[k] for k in keys} for x in logs[0][-2:-1]] == [{k: x[k] for k in keys} for x in logs[1][-2:-1]]
    assert logs[0][-1]["split"] == "val" and logs[0][-1] == logs[1][-1]


# --- evaluation and pre-tokenisation -----------------------------------------------------------------

def test_eval_metrics_and_cli(tmp_path, capsys):
    for m in MODALITIES:
        tiny_tokenizer(m).save_pretrained(tmp_path / "toks" / m)
    out = tmp_path / "eval.json"
    assert cli(["tokenizer", "eval", "--tokenizers", str(tmp_path / "toks"), "--seed", "5", "--no-progress",
                "--num-samples", "5", "--batch-size", "2", "--predictability-samples", "6", "--json", str(out)]) == 0
    assert "scene/s" not in capsys.readouterr().err  # --no-progress: no bar in the log
    res = json.loads(out.read_text())
    assert res["num_samples"] == 5 and res["seed"] == 5 and res["image_size"] == 32
    assert 0 < res["rgb"]["psnr"] < 100 and res["depth"]["abs_rel"] >= 0 and 0 <= res["semseg"]["miou"] <= 1
    for m in MODALITIES:
        assert 0 < res[m]["codes_used"] <= 1
        stats = res["predictability"][m]
        assert set(stats) == {"all", "object", "background"}
        assert stats["all"]["tokens"] == 5 * 16 == stats["object"]["tokens"] + stats["background"]["tokens"]
        for group in stats.values():  # held-out cross-entropies: positive, at most a little over log K
            assert 0 < group["h_code_given_position"] < 2 * math.log(tiny_tokenizer(m).codebook_size)


def test_eval_metrics_are_perfect_for_an_identity_round_trip():
    class Identity(ImageTokenizer):  # decode(encode(x)) == x: the ceiling of every metric
        def encode(self, images):
            self._last = images
            return torch.zeros(images.shape[0], 4, 4, dtype=torch.long)

        def decode(self, tokens):
            return self._last

    toks = {m: Identity(tiny_tokenizer(m).config) for m in MODALITIES}
    res = evaluate_tokenizers(toks, seed=3, num_samples=4, batch_size=4, progress=False)
    assert res["rgb"]["psnr"] == 100.0 and res["depth"]["abs_rel"] == 0.0 and res["depth"]["delta1"] == 1.0
    assert res["semseg"]["miou"] == 1.0 and res["rgb"]["codes_used"] == 1 / 64


def _write_raw_shards(folder: Path, num_shards: int, per_shard: int) -> None:
    from fourm.data.shards import ShardWriter, encode_sample

    cfg = WorldConfig(image_size=32)
    with ShardWriter(folder, shard_size=per_shard) as w:
        for i in range(num_shards * per_shard):
            s = render_scene(0, i, cfg)
            w.write(f"{i:06d}", encode_sample({k: s[k] for k in ("rgb", "depth", "semseg", "det", "caption")}))


def test_tokenize_shards_cli_and_resume(tmp_path):
    from fourm.data.shard_reader import ShardDataset
    from fourm.vq.text import train_text_tokenizer
    from fourm.data.shapes_world import SHAPE_CLASSES

    raw, out, toks = tmp_path / "raw", tmp_path / "tok", tmp_path / "toks"
    _write_raw_shards(raw, num_shards=2, per_shard=3)
    for m in MODALITIES:
        tiny_tokenizer(m).save_pretrained(toks / m)
    captions = [render_scene(0, i)["caption"] for i in range(20)]
    text = train_text_tokenizer(captions, class_names=list(SHAPE_CLASSES), vocab_size=4400, show_progress=False)
    text.save_pretrained(toks / "text")
    args = ["tokenize", "--input", str(raw), "--output", str(out), "--tokenizers", str(toks),
            "--batch-size", "2", "--no-progress"]
    assert cli(args) == 0
    loaded = load_tokenizers(toks)
    tok_samples = {s["__key__"]: s for s in ShardDataset(out)}
    raw_samples = list(ShardDataset(raw))
    assert sorted(tok_samples) == sorted(s["__key__"] for s in raw_samples)
    for s in raw_samples:
        t = tok_samples[s["__key__"]]
        for m in MODALITIES:
            grid = t[f"tok_{m}"]
            assert grid.dtype == torch.int16 and grid.shape == (4, 4)
            assert torch.equal(grid.long(), loaded[m].encode(s[m]))
        assert t["tok_caption"].dtype == torch.int32
        assert t["tok_caption"].tolist() == loaded["text"].encode(s["caption"])
        assert len(t["tok_det"]) == 5 * len(s["det"])
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["kind"] == "token_shards" and meta["fields"]["tok_rgb"] == 64
    # resumable: a second run skips what exists; a deleted shard is rewritten
    first = sorted(out.glob("*.tar"))
    mtimes = {p: p.stat().st_mtime_ns for p in first}
    first[1].unlink()
    assert cli(args) == 0
    assert first[0].stat().st_mtime_ns == mtimes[first[0]] and first[1].exists()



def test_tokenize_keeps_raw_rgb_for_pixel_input(tmp_path):
    from fourm.data.shard_reader import ShardDataset
    from fourm.data.pretokenize import tokenize_shards

    raw, out = tmp_path / "raw", tmp_path / "tok"
    _write_raw_shards(raw, num_shards=1, per_shard=3)
    toks = {"depth": tiny_tokenizer("depth")}
    tokenize_shards(raw, out, toks, batch_size=2, keep=["rgb"], progress=False)
    kept = {s["__key__"]: s for s in ShardDataset(out)}
    for s in ShardDataset(raw):
        t = kept[s["__key__"]]
        assert t["rgb"].dtype == torch.uint8 and torch.equal(t["rgb"], s["rgb"])  # (3, H, W), bit for bit
        assert "tok_depth" in t and "tok_rgb" not in t
    assert json.loads((out / "metadata.json").read_text())["fields"]["rgb"] == "raw"
    with pytest.raises(ValueError, match=r"keep=\['rgbb'\]: 'rgbb' is not a raw field; allowed: caption, depth, det, rgb"):
        tokenize_shards(raw, tmp_path / "x", toks, keep=["rgbb"], progress=False)


@pytest.mark.slow
def test_two_process_training_resumes_exactly(tmp_path):
    """Two CPU processes (gloo, codebook statistics all-reduced): resumed equals uninterrupted."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "fourm.cli",
            "tokenizer", "train", str(CONFIGS / "rgb_tiny.yaml")]

    def run(*extra: str) -> str:
        out = subprocess.run(base + list(extra), env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    run(f"out_dir={tmp_path / 'full'}", "--no-progress")
    run(f"out_dir={tmp_path / 'part'}", "--until-step", "3", "--no-progress")
    assert "steps 3..6" in run(f"out_dir={tmp_path / 'part'}", "--resume", "auto", "--no-progress")
    a = ImageTokenizer.from_pretrained(tmp_path / "full" / "tokenizer").state_dict()
    b = ImageTokenizer.from_pretrained(tmp_path / "part" / "tokenizer").state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_local_encoder_codes_depend_on_their_own_patch_only(tmp_path):
    cfg = from_dict(TokenizerConfig, {"modality": "rgb", "encoder": {"local": True}}, "tokenizer")
    tok = ImageTokenizer(cfg).eval()
    x = tok.normalizer.to_model(render_batch(0, range(2), 64)["rgb"])
    changed = x.clone()
    changed[..., 16:, :] = changed.flip(0)[..., 16:, :]  # every patch below the second row of tokens
    with torch.no_grad():
        z, z_changed = tok.forward_encoder(x), tok.forward_encoder(changed)
    assert torch.equal(z[..., :2, :], z_changed[..., :2, :])  # the patches above: untouched
    assert not torch.allclose(z[..., 2:, :], z_changed[..., 2:, :])
    # the default conv encoder reaches across patches, and its GroupNorm across the image
    conv = ImageTokenizer(from_dict(TokenizerConfig, {"modality": "rgb"}, "tokenizer")).eval()
    with torch.no_grad():
        assert not torch.allclose(conv.forward_encoder(x)[..., :2, :], conv.forward_encoder(changed)[..., :2, :])
    tok.save_pretrained(tmp_path / "rgb")
    loaded = ImageTokenizer.from_pretrained(tmp_path / "rgb")
    assert loaded.config.encoder.local and torch.equal(loaded.encode(render_batch(0, range(2), 64)["rgb"]),
                                                       tok.encode(render_batch(0, range(2), 64)["rgb"]))


def test_local_is_an_encoder_option():
    with pytest.raises(ConfigError, match="local"):
        from_dict(TokenizerConfig, {"modality": "rgb", "decoder": {"local": True}}, "tokenizer")
