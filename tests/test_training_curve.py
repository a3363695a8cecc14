"""fourm curve: reading metrics.jsonl (resumed runs included) and plotting it."""
import json
import subprocess
import sys

import pytest

from fourm.training.curve import plot_curve, read_metrics


def write_run(path, records):
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def rec(step, loss, wall, split="train"):
    r = {"step": step, "split": split, "loss": loss, "loss/caption": loss + 1, "loss/tok_rgb": loss - 1}
    if split == "train":
        r.update(wall_s=wall, tokens_seen=100 * step)
    return r


def test_resumed_steps_keep_the_last_record_and_final_figures(tmp_path):
    # steps 10, 20, 30; a resume from step 20 repeats step 30 with other values
    run = write_run(tmp_path / "run", [rec(10, 5.0, 1.0), rec(20, 4.0, 2.0), rec(30, 3.5, 3.0),
                                       rec(20, 4.1, 2.0, "val"), rec(30, 3.0, 4.0), rec(30, 3.2, 4.0, "val")])
    m = read_metrics(run)
    assert [r["step"] for r in m.train] == [10, 20, 30]
    assert m.train[-1]["loss"] == 3.0 and [r["step"] for r in m.val] == [20, 30]
    assert m.modalities == ["caption", "tok_rgb"]
    fin = m.final()
    assert fin["step"] == 30 and fin["wall_s"] == 4.0 and fin["mean_tokens_per_s"] == pytest.approx(3000 / 4.0)
    assert fin["val_loss"] == {"caption": 4.2, "tok_rgb": 2.2} and fin["val_loss_total"] == 3.2


def test_cli_writes_png_and_reports_errors(tmp_path):
    run = write_run(tmp_path / "run", [rec(s, 6.0 - s / 10, s) for s in range(1, 11)] + [rec(10, 5.0, 0, "val")])
    out = tmp_path / "plots" / "curve.png"
    r = subprocess.run([sys.executable, "-m", "fourm.cli", "curve", str(run), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(r.stdout)["step"] == 10
    missing = subprocess.run([sys.executable, "-m", "fourm.cli", "curve", str(tmp_path / "nope"), "--out", str(out)],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "metrics.jsonl" in missing.stderr


def test_bad_input_names_the_problem(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(bad)
    only_val = read_metrics(write_run(tmp_path / "v", [rec(5, 1.0, 0, "val")]))
    with pytest.raises(ValueError, match="no training records"):
        plot_curve(only_val, tmp_path / "x.png")
    ok = read_metrics(write_run(tmp_path / "ok", [rec(1, 1.0, 1.0)]))
    with pytest.raises(ValueError, match="smooth=0"):
        plot_curve(ok, tmp_path / "x.png", smooth=0)
