"""Experiment trackers through accelerate (logging.trackers), beside metrics.jsonl; CLI logging levels."""
from __future__ import annotations

import logging

import pytest

from fourm.cli import main
from fourm.config import ConfigError
from fourm.training.config import DistributedConfig, LoggingConfig, tracker_names
from fourm.training.distributed import build_accelerator
from fourm.training.fourm_task import train
from fourm.training.tokenizer_task import train_tokenizer
from test_training import metrics, tiny, tok  # noqa: F401 - tok: the token-shard fixture
from test_vq import tiny_train_config


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard event in ``folder``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_fourm_run_logs_to_tensorboard_what_metrics_jsonl_holds(tmp_path, tok):
    pytest.importorskip("tensorboard")  # in fourm[dev] and fourm[tracking]
    run = tmp_path / "run"
    train(tiny(run, tok, "steps=3", "logging.trackers=[tensorboard]", "logging.project=tiny"))
    lines = metrics(run)
    assert [x["step"] for x in lines] == [1, 2, 3]  # the metrics file is still written
    got = scalars(run / "trackers" / "tiny")
    assert got["train/loss"] == [(x["step"], pytest.approx(x["loss"], rel=1e-6)) for x in lines]
    assert {"train/lr", "train/grad_norm", "train/tokens_per_s"} <= set(got)
    hparams = next((run / "trackers" / "tiny").glob("*/hparams.yml")).read_text()
    assert "optim.lr:" in hparams and "logging.trackers:" in hparams  # the run config, flattened


def test_tokenizer_run_logs_to_the_same_trackers(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = tiny_train_config("depth", tmp_path / "tok", steps=2, **{"logging.every": 1, "logging.trackers": "[tensorboard]"})
    train_tokenizer(cfg, progress=False)
    assert [s for s, _ in scalars(tmp_path / "tok" / "trackers" / "tok")["train/loss"]] == [1, 2]


def test_tracker_settings_are_checked_by_name(monkeypatch):
    assert LoggingConfig(tensorboard=True).trackers == ("tensorboard",)  # the older spelling
    assert {"tensorboard", "wandb", "mlflow"} <= set(tracker_names())
    with pytest.raises(ValueError, match="'wandbb' is not an accelerate tracker; known: .*wandb"):
        LoggingConfig(trackers=("wandbb",))
    with pytest.raises(ValueError, match="give a list"):
        LoggingConfig(trackers="wandb")
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    with pytest.raises(ConfigError, match=r"logging.trackers: 'wandb' not installed .* pip install wandb"):
        build_accelerator("fp32", DistributedConfig(), trackers=("wandb",))


@pytest.mark.parametrize("flags,fourm_level,root_level", [
    ([], logging.INFO, logging.WARNING), (["-v"], logging.DEBUG, logging.INFO), (["-v", "-v"], logging.DEBUG, logging.DEBUG),
    (["-q"], logging.ERROR, logging.ERROR)])
@pytest.mark.parametrize("where", ["before", "after"])
def test_cli_configures_logging(flags, fourm_level, root_level, where, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a fresh process
    monkeypatch.setattr(logging.getLogger(), "level", logging.getLogger().level)
    monkeypatch.setattr(logging.getLogger("fourm"), "level", logging.getLogger("fourm").level)
    command = ["train", str(tmp_path / "missing.yaml")]
    assert main([*flags, *command] if where == "before" else [*command, *flags]) == 2
    assert logging.getLogger("fourm").getEffectiveLevel() == fourm_level
    assert logging.getLogger().level == root_level
    logging.getLogger("fourm.data.shard_reader").info("a library message")
    logged = "INFO fourm.data.shard_reader: a library message" in capsys.readouterr().err
    assert logged == (fourm_level <= logging.INFO)
