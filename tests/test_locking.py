"""One writer per output folder: a second trainer, ``fourm data shapes`` or ``fourm tokenize`` on a
locked folder is refused with the holder's pid; the lock of a killed process is taken over."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from fourm.cli import main
from fourm.locking import LOCK_NAME, FolderLock, FolderLockedError, read_holder
from fourm.training.fourm_config import load_train_config
from fourm.training.fourm_task import FourMTask
from fourm.training.trainer import Trainer

TINY = REPO / "configs" / "fm" / "shapes_tiny.yaml"
HOLD = ("import sys; from fourm.locking import FolderLock; lock = FolderLock(sys.argv[1], 'a test holder').acquire(); "
        "print('locked', flush=True); sys.stdin.read()")


def _shapes(out: Path, *extra: str) -> int:
    return main(["data", "shapes", "--out", str(out), "--num-samples", "2", "--shard-size", "2", "--image-size", "32",
                 *extra])


def test_the_lock_refuses_a_second_holder_and_is_removed_on_release(tmp_path):
    with FolderLock(tmp_path / "out", "first") as lock:
        assert read_holder(tmp_path / "out")["pid"] == os.getpid() and lock.held
        with pytest.raises(FolderLockedError, match=f"locked by another writer: pid {os.getpid()} .*choose another "
                                                    "output folder"):
            FolderLock(tmp_path / "out", "second").acquire()
    assert not (tmp_path / "out" / LOCK_NAME).exists()
    FolderLock(tmp_path / "out", "third").acquire().release()  # free again


def test_a_second_trainer_and_a_second_data_writer_are_refused_and_a_dead_holder_is_taken_over(tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        cfg = load_train_config(TINY, [f"out_dir={out}", "data.train.shapes.shards=unused", "logging.progress=false"])
        with pytest.raises(FolderLockedError, match=f"{out} is locked by another writer: pid {holder.pid} .*out_dir"):
            Trainer(FourMTask(cfg))
        assert _shapes(out) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {out} is locked by another writer: pid {holder.pid}")
        assert "--out" in err[0] and not list(out.glob("*.tar")), "the second writer wrote nothing"
    finally:
        holder.kill()  # SIGKILL: no clean-up, the lock file stays behind with a dead pid
        holder.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid
    assert _shapes(out) == 0  # the stale lock is taken over
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "shard-00000.tar"]


def test_tokenize_locks_its_output_folder(tmp_path):
    from fourm.data.pretokenize import tokenize_shards
    from fourm.vq.text import TextTokenizer

    assert _shapes(tmp_path / "raw") == 0
    text = TextTokenizer.from_pretrained(REPO / "tokenizers" / "shapes64" / "text")
    with FolderLock(tmp_path / "tok", "a holder"):
        with pytest.raises(FolderLockedError, match=f"pid {os.getpid()}.*--output"):
            tokenize_shards(tmp_path / "raw", tmp_path / "tok", {"text": text}, progress=False)
    assert tokenize_shards(tmp_path / "raw", tmp_path / "tok", {"text": text}, progress=False)["samples"] == 2
