"""Every command-line mistake: exit status 2, one line ``error: ...`` that names the input or the
setting, no traceback (``FOURM_DEBUG=1`` adds it). One row per mistake, for every verb.

The rows run ``fourm.cli.main`` in this process (a second's work each; the real entry point is
checked once at the end). Rows marked ``logs`` may print the run's own warnings (dropped samples,
skipped checkpoints) before the error line, which must still be the last line.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import pytest

from conftest import REPO
from fourm.cli import main
from fourm.data import shapes_world as sw
from fourm.data.commands import write_shapes
from fourm.locking import FolderLock
from fourm.training.fourm_config import load_train_config
from fourm.training.fourm_task import train
from fourm.training.synthetic import truncate_file, write_synthetic_token_shards

TINY = "configs/fm/shapes_tiny.yaml"
TOK_TINY = "configs/tokenizers/rgb_tiny.yaml"
MODEL = "models/shapes_bundled"


class Case(NamedTuple):
    argv: Callable[[dict], list[str]]  # from the fixture paths
    names: tuple[str, ...]  # what the error line must contain
    logs: bool = False  # warnings may come before the error line


def fm(f: dict, *extra: str, shards: str = "tok") -> list[str]:
    return ["train", TINY, f"data.train.shapes.shards={f[shards]}", f"out_dir={f['tmp'] / 'run'}", "threads=1",
            "logging.progress=false", "steps=3", *extra]


def gen(*extra: str) -> list[str]:
    return ["generate", "--model", MODEL, *extra]


CASES: dict[str, Case] = {
    # fourm train
    "train: override that is not YAML": Case(lambda f: fm(f, "optim.lr=[1,2"), ("override 'optim.lr=[1,2'",)),
    "train: broken YAML file": Case(lambda f: ["train", str(f["broken"])], ("broken.yaml: not valid YAML", "line 2")),
    "train: missing config": Case(lambda f: ["train", str(f["tmp"] / "nope.yaml")], ("nope.yaml",)),
    "train: unknown key": Case(lambda f: fm(f, "optim.lrr=1"), ("optim", "'lrr'")),
    "train: value of the wrong type": Case(lambda f: fm(f, "steps=abc"), ("steps", "'abc'")),
    "train: override without =": Case(lambda f: fm(f, "steps"), ("override 'steps'",)),
    "train: image size of the tokenizer set": Case(lambda f: fm(f, "modalities.image_size=60"),
                                                   ("modalities.image_size", "got 60", "tok_rgb: {kind: image")),
    "train: no input tokens": Case(lambda f: fm(f, "masking.num_input_tokens=0"), ("masking.num_input_tokens=0",)),
    "train: grid of no shard": Case(lambda f: fm(f, "modalities.tok_rgb.grid=[3,3]", "data_check.window=2"),
                                    ("no valid sample", "data_check.window=2", "tok_rgb"), logs=True),
    "train: impossible grid": Case(lambda f: fm(f, "modalities.tok_rgb.grid=[0,8]"), ("tok_rgb", "grid")),
    "train: batch size 0": Case(lambda f: fm(f, "data.batch_size=0"), ("batch_size=0",)),
    "train: empty shard only": Case(lambda f: fm(f, shards="empty"), ("data.train.shapes", "empty.tar")),
    "train: garbage shard only": Case(lambda f: fm(f, shards="garbage"), ("data.train.shapes", "garbage.tar")),
    "train: missing shards": Case(lambda f: fm(f, shards="nowhere"), ("data.train.shapes.shards", "nowhere")),
    "train: strict reader": Case(lambda f: fm(f, "data.strict=true", "data.shuffle=false", shards="cut"),
                                 ("truncated", "set data.strict=false"), logs=True),
    "train: strict reader in a worker": Case(lambda f: fm(f, "data.strict=true", "data.num_workers=1",
                                                          "data.shuffle=false", shards="cut"),
                                             ("truncated", "set data.strict=false"), logs=True),
    "train: resume from nowhere": Case(lambda f: [*fm(f), "--resume", str(f["tmp"] / "nowhere")], ("--resume",)),
    "train: resume a corrupt checkpoint": Case(lambda f: [*fm(f, "steps=4"), "--resume", str(f["corrupt"])],
                                               ("--resume", "model.safetensors does not match its sha256")),
    "train: locked out_dir": Case(lambda f: fm(f, f"out_dir={f['locked']}"), ("is locked", f"pid {os.getpid()}",
                                                                               "out_dir")),
    "train: until-step not a number": Case(lambda f: [*fm(f), "--until-step", "abc"], ("--until-step", "'abc'")),
    # fourm tokenizer train | train-text | eval
    "tokenizer train: size not a multiple": Case(lambda f: ["tokenizer", "train", TOK_TINY, "tokenizer.image_size=60"],
                                                 ("image_size=60", "downsample")),
    "tokenizer train: lr not a number": Case(lambda f: ["tokenizer", "train", TOK_TINY, "optim.lr=abc"],
                                             ("optim.lr", "'abc'")),
    "tokenizer train: broken YAML": Case(lambda f: ["tokenizer", "train", str(f["broken"])], ("broken.yaml",)),
    "tokenizer train: locked out_dir": Case(lambda f: ["tokenizer", "train", TOK_TINY, f"out_dir={f['locked']}"],
                                            ("is locked", f"pid {os.getpid()}")),
    "tokenizer train-text: no samples": Case(lambda f: ["tokenizer", "train-text", "--out", str(f["tmp"] / "t"),
                                                        "--num-samples", "0"], ("--num-samples=0",)),
    "tokenizer eval: no samples": Case(lambda f: ["tokenizer", "eval", "--tokenizers", "tokenizers/shapes64",
                                                  "--seed", "5", "--num-samples", "0"], ("--num-samples 0",)),
    "tokenizer eval: negative predictability samples": Case(
        lambda f: ["tokenizer", "eval", "--tokenizers", "tokenizers/shapes64", "--seed", "5", "--predictability-samples", "-1"],
        ("--predictability-samples -1", ">= 0")),
    # fourm data shapes | show
    "data shapes: image size": Case(lambda f: ["data", "shapes", "--out", str(f["tmp"] / "s"), "--num-samples", "2",
                                               "--image-size", "60"], ("--image-size", "image_size=60")),
    "data shapes: no samples": Case(lambda f: ["data", "shapes", "--out", str(f["tmp"] / "s"), "--num-samples", "0"],
                                    ("--num-samples=0",)),
    "data shapes: out is a file": Case(lambda f: ["data", "shapes", "--out", str(f["broken"]), "--num-samples", "2"],
                                       ("--out", "not a folder")),
    "data shapes: existing data set": Case(lambda f: ["data", "shapes", "--out", str(f["shapes"]), "--num-samples",
                                                      "2", "--image-size", "32"], ("--out", "--overwrite")),
    "data shapes: locked folder": Case(lambda f: ["data", "shapes", "--out", str(f["locked"]), "--num-samples", "2",
                                                  "--image-size", "32"], ("is locked", f"pid {os.getpid()}", "--out")),
    "data show: missing shards": Case(lambda f: ["data", "show", str(f["tmp"] / "nowhere"), "--out",
                                                 str(f["tmp"] / "x.png")], ("nowhere",)),
    "data show: mixed folder": Case(lambda f: ["data", "show", str(f["mixed"]), "--out", str(f["tmp"] / "x.png")],
                                    ("shard-00000.tar", "metadata.json")),
    # fourm tokenize
    "tokenize: missing tokenizers": Case(lambda f: ["tokenize", "--input", str(f["shapes"]), "--output",
                                                    str(f["tmp"] / "t"), "--tokenizers", str(f["tmp"] / "nope")],
                                         ("nope",)),
    "tokenize: broken --config": Case(lambda f: ["tokenize", "--input", str(f["shapes"]), "--output",
                                                 str(f["tmp"] / "t"), "--tokenizers", "tokenizers/shapes64",
                                                 "--config", str(f["broken"])], ("--config", "not valid YAML")),
    "tokenize: unknown modality": Case(lambda f: ["tokenize", "--input", str(f["shapes"]), "--output",
                                                  str(f["tmp"] / "t"), "--tokenizers", "tokenizers/shapes64",
                                                  "--modalities", "rgbb"], ("--modalities", "'rgbb'")),
    "tokenize: garbage input": Case(lambda f: ["tokenize", "--input", str(f["garbage"]), "--output",
                                               str(f["tmp"] / "t"), "--tokenizers", "tokenizers/shapes64"],
                                    ("garbage.tar", "not a readable tar")),
    "tokenize: batch size 0": Case(lambda f: ["tokenize", "--input", str(f["shapes"]), "--output",
                                              str(f["tmp"] / "t"), "--tokenizers", "tokenizers/shapes64",
                                              "--batch-size", "0"], ("--batch-size 0",)),
    # fourm generate
    "generate: det not JSON": Case(lambda f: gen("--input", "det=not json", "--target", "caption"),
                                   ("--input det=not json", "not JSON")),
    "generate: steps not a number": Case(lambda f: gen("--index", "0", "--target", "caption:steps=abc"),
                                         ("caption:steps=abc", "steps='abc' is not an integer")),
    "generate: unknown setting": Case(lambda f: gen("--index", "0", "--target", "caption:foo=1"), ("'foo'",)),
    "generate: unknown target": Case(lambda f: gen("--index", "0", "--target", "nope"), ("'nope'",)),
    "generate: unknown input": Case(lambda f: gen("--input", "foo=1", "--target", "caption"), ("'foo'",)),
    "generate: image that is no image": Case(lambda f: gen("--input", f"rgb={f['broken']}", "--target", "caption"),
                                             ("--input rgb=", "not a readable image")),
    "generate: missing model": Case(lambda f: ["generate", "--model", str(f["tmp"] / "nomodel"), "--index", "0",
                                               "--target", "caption"], ("nomodel",)),
    # fourm eval, curve, demo
    "eval: unknown task": Case(lambda f: ["eval", "--tasks", "bogus"], ("'bogus'",)),
    "eval: no scenes": Case(lambda f: ["eval", "--num-samples", "0", "--tasks", "rgb2depth"], ("--num-samples 0",)),
    "curve: missing run": Case(lambda f: ["curve", str(f["tmp"] / "norun"), "--out", str(f["tmp"] / "c.png")],
                               ("norun",)),
    "demo: no world samples": Case(lambda f: ["demo", "--out", str(f["tmp"] / "demo"), "--world-samples", "0"],
                                   ("--world-samples 0",)),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("cli")
    registry = load_train_config(REPO / TINY, ["data.train.shapes.shards=x"]).registry()
    write_synthetic_token_shards(tmp / "tok", registry, num_samples=32, shard_size=16)
    shutil.copytree(tmp / "tok", tmp / "cut")
    truncate_file(tmp / "cut" / "shard-00000.tar", 0.5)
    (tmp / "broken.yaml").write_text("steps: [1,\n  x")
    for name, data in (("empty", b""), ("garbage", bytes(range(256)) * 12)):
        (tmp / name).mkdir()
        (tmp / name / f"{name}.tar").write_bytes(data)
    write_shapes(tmp / "shapes", 2, 0, sw.WorldConfig(image_size=32), shard_size=1, progress=False)
    write_shapes(tmp / "mixed", 2, 1, sw.WorldConfig(image_size=64), shard_size=1, progress=False)
    shutil.copy(tmp / "shapes" / "shard-00000.tar", tmp / "mixed" / "shard-00000.tar")
    cfg = load_train_config(REPO / TINY, [f"out_dir={tmp / 'ckpt'}", f"data.train.shapes.shards={tmp / 'tok'}",
                                          "steps=4", "checkpoint.every=2", "threads=1", "logging.progress=false"])
    train(cfg, until_step=2)
    corrupt = tmp / "ckpt" / "checkpoints" / "step-00000002"
    weights = corrupt / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x10
    weights.write_bytes(bytes(data))
    paths = {"tmp": tmp, "tok": tmp / "tok", "cut": tmp / "cut", "broken": tmp / "broken.yaml",
             "empty": tmp / "empty", "garbage": tmp / "garbage", "nowhere": tmp / "nowhere", "shapes": tmp / "shapes",
             "mixed": tmp / "mixed", "corrupt": corrupt, "locked": tmp / "locked"}
    with FolderLock(tmp / "locked", "the test"):
        yield paths


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    cwd = os.getcwd()
    os.chdir(REPO)  # the rows name repository paths (configs/, models/, tokenizers/)
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    finally:
        os.chdir(cwd)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("name", list(CASES))
def test_a_mistake_gives_one_named_error_line_and_status_2(name, inputs, capsys):
    case = CASES[name]
    rc, err = run_cli(case.argv(inputs), capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert "Traceback" not in err
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    assert case.logs or len(lines) == 1, lines
    missing = [s for s in case.names if s not in errors[0]]
    assert not missing, f"{errors[0]!r} does not name {missing}"


def test_the_table_covers_every_verb():
    verbs = {" ".join(c.argv({k: Path("x") for k in ("tmp", "tok", "cut", "broken", "empty", "garbage", "nowhere",
                                                     "shapes", "mixed", "corrupt", "locked")})[:2])
             for c in CASES.values()}
    firsts = {v.split()[0] for v in verbs}
    assert {"train", "tokenizer", "data", "tokenize", "generate", "eval", "curve", "demo"} <= firsts
    assert len(CASES) >= 25


def test_fourm_debug_adds_the_traceback(inputs, capsys, monkeypatch):
    monkeypatch.setenv("FOURM_DEBUG", "1")
    rc, err = run_cli(["train", str(inputs["broken"])], capsys)
    assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_the_installed_entry_point_prints_one_line(inputs):
    env = {k: v for k, v in os.environ.items() if k != "FOURM_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "fourm.cli", "train", str(inputs["broken"])], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert "broken.yaml: not valid YAML" in proc.stderr


def test_a_folder_the_user_may_not_write_is_a_named_error(tmp_path, capsys, monkeypatch):
    denied, real_mkdir = tmp_path / "denied", Path.mkdir

    def mkdir(self, *args, **kwargs):  # what a read-only folder answers a user who is not root
        if self == denied or denied in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    rc, err = run_cli(["data", "shapes", "--out", str(denied / "s"), "--num-samples", "2"], capsys)
    assert rc == 2 and err.strip().splitlines() == [f"error: [Errno 13] Permission denied: '{denied / 's'}'"]
