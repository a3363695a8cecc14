"""fourm.compat.ml4m against the 4M reference's recorded numbers (../shared/fixtures/ml4m)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from fourm.compat.ml4m import (
    build_on_meta,
    check_fixture,
    compare_layout,
    config_from_ml4m,
    load_ml4m,
    load_mod_dict,
    main,
    mod_dict_to_batch,
    released_config,
    run_ml4m,
    save_ml4m,
)

TOL = 1e-4


def _small(ml4m_fixtures):
    path = ml4m_fixtures / "small"
    cfg = json.loads((path / "config.json").read_text())
    return path, cfg, load_mod_dict(path / "inputs.safetensors", cfg["modality_order_in_mod_dict"])


def test_fixture_outputs_match_within_tolerance(ml4m_fixtures):
    results = check_fixture(ml4m_fixtures / "small")
    recorded = load_file(str(ml4m_fixtures / "small" / "outputs.safetensors"))
    assert [k for k, _ in results] == sorted(recorded)  # every recorded tensor is compared
    bad = {k: d for k, d in results if not d <= TOL}
    assert not bad, bad
    names = {k for k, _ in results}
    assert {"encoder.output", "decoder.context", "loss", "loss_token", "logits.caption"} <= names


def test_check_cli_exit_codes(ml4m_fixtures, tmp_path, capsys):
    assert main(["check", str(ml4m_fixtures / "small")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 67 and lines[-1].endswith("OK (tolerance 0.0001)")
    # a perturbed weight must fail the check
    bad = tmp_path / "bad"
    shutil.copytree(ml4m_fixtures / "small", bad)
    (bad / "model.safetensors").chmod(0o644)
    state = load_file(str(bad / "model.safetensors"))
    state["decoder.1.mlp.fc2.weight"] = state["decoder.1.mlp.fc2.weight"] * 1.01
    save_file(state, str(bad / "model.safetensors"))
    assert main(["check", str(bad)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_reference_losses_reproduced(ml4m_fixtures):
    path, cfg, mod_dict = _small(ml4m_fixtures)
    model = load_ml4m(path)
    recorded = load_file(str(path / "outputs.safetensors"))
    with torch.no_grad():
        loss, mod_losses = run_ml4m(model, mod_dict, 128, 128, "mod")
        loss_token, _ = run_ml4m(model, mod_dict, 128, 128, "token")
    assert abs(loss.item() - recorded["loss"].item()) < TOL
    assert abs(loss_token.item() - recorded["loss_token"].item()) < TOL
    assert len(mod_losses) == 7


def test_reference_counts_modalities_without_targets(ml4m_fixtures):
    path, _, mod_dict = _small(ml4m_fixtures)
    model = load_ml4m(path)
    mod_dict["det"] = dict(mod_dict["det"])
    mod_dict["det"]["target_mask"] = torch.ones_like(mod_dict["det"]["target_mask"])
    mod_dict["det"]["decoder_attention_mask"] = torch.zeros_like(mod_dict["det"]["decoder_attention_mask"])
    with torch.no_grad():
        loss, mod_losses = run_ml4m(model, mod_dict, 128, 128)
        fixed = model(mod_dict_to_batch(model, mod_dict), 128, 128)
    assert mod_losses["det"].item() == 0.0 and "det" not in fixed.mod_losses
    torch.testing.assert_close(loss, fixed.loss * 6 / 7)


def test_mod_dict_masks_are_inverted_and_patterns_checked(ml4m_fixtures):
    path, _, mod_dict = _small(ml4m_fixtures)
    model = load_ml4m(path)
    batch = mod_dict_to_batch(model, mod_dict)
    assert list(batch) == list(mod_dict)
    for name, d in mod_dict.items():
        assert torch.equal(batch[name]["is_input"], ~d["input_mask"])
        assert torch.equal(batch[name]["is_target"], ~d["target_mask"])
    bad = dict(mod_dict)
    bad["tok_rgb@224"] = dict(mod_dict["tok_rgb@224"])
    bad["tok_rgb@224"]["decoder_attention_mask"] = (~mod_dict["tok_rgb@224"]["target_mask"]).int()  # causal image
    with pytest.raises(ValueError, match="tok_rgb@224: decoder_attention_mask"):
        mod_dict_to_batch(model, bad)


def test_save_back_to_reference_layout_round_trips(ml4m_fixtures, tmp_path):
    path = ml4m_fixtures / "small"
    model = load_ml4m(path)
    save_ml4m(model, tmp_path / "out")
    original = load_file(str(path / "model.safetensors"))
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert saved.keys() == original.keys()
    assert all(torch.equal(saved[k], original[k]) for k in original)
    saved_cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    fixture_cfg = json.loads((path / "config.json").read_text())
    assert saved_cfg["vocab_override"] == fixture_cfg["vocab_override"]
    assert {k: v for k, v in saved_cfg.items() if k != "vocab_override"} == fixture_cfg["fm_config"]
    again = load_ml4m(tmp_path / "out")
    assert again.config == model.config


@pytest.mark.parametrize("size,name", [("B", "4m7_b"), ("L", "4m7_l"), ("XL", "4m7_xl")])
def test_released_shapes(ml4m_fixtures, size, name):
    expected = json.loads((ml4m_fixtures / "released_shapes" / f"{name}.json").read_text())
    assert released_config(size) == expected["fm_config"]
    model = build_on_meta(expected["fm_config"])
    assert model.mask_token.is_meta
    assert compare_layout(model, expected["state_dict"]) == []
    assert sum(p.numel() for p in model.parameters()) == expected["num_parameters_unique"]


def test_layout_comparison_reports_differences(ml4m_fixtures):
    expected = json.loads((ml4m_fixtures / "released_shapes" / "4m7_b.json").read_text())
    cfg = dict(expected["fm_config"], qk_norm=True)
    problems = compare_layout(build_on_meta(cfg), expected["state_dict"])
    assert any(p.startswith("extra in fourm: encoder.0.attn.q_norm.weight") for p in problems)


def test_reference_config_errors_name_the_key():
    base = released_config("B")
    with pytest.raises(ValueError, match="unknown keys \\['dpeth'\\]"):
        config_from_ml4m({**base, "dpeth": 3})
    with pytest.raises(ValueError, match="num_register_tokens=4"):
        config_from_ml4m({**base, "num_register_tokens": 4})
    with pytest.raises(ValueError, match="t5_caption"):
        config_from_ml4m({**base, "domains_in": base["domains_in"] + ["t5_caption"]})
    cfg = config_from_ml4m({"fm_config": base, "vocab_override": {"caption": 256}})
    assert {m.name: m.vocab_size for m in cfg.modalities}["caption"] == 256
