"""Loading by Hub repo id and revision, offline, from a local cache laid out as huggingface_hub lays
it out (tests/hub_cache.py); pushing; model cards."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch

from conftest import REPO
from hub_cache import publish
from test_model import tiny_config
from test_vq import tiny_tokenizer

from fourm.compat.ml4m import load_ml4m, save_ml4m
from fourm.hub import looks_like_repo_id, read_card_metadata
from fourm.modalities import ml4m_modalities
from fourm.models import FourM, FourMConfig
from fourm.vq.loading import load_tokenizers
from fourm.vq.text import TextTokenizer
from fourm.vq.vqvae import ImageTokenizer

TEXT = REPO / "tokenizers" / "shapes64" / "text"
SMALL_VOCAB = {"tok_rgb@224": 64, "tok_depth@224": 64, "tok_normal@224": 64, "tok_semseg@224": 64,
               "tok_clip@224": 64, "caption": 64, "det": 64}


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A Hub cache with a FourM (main and v1), a tokenizer set and a reference checkpoint."""
    root = tmp_path_factory.mktemp("hub")
    hub, staging = root / "cache", root / "staging"
    models = {seed: FourM(tiny_config(), seed=seed).eval() for seed in (0, 1)}
    models[0].save_pretrained(staging / "m0")
    models[1].save_pretrained(staging / "m1")
    commits = {"main": publish(hub, "fourm-test/tiny", staging / "m0"),
               "v1": publish(hub, "fourm-test/tiny", staging / "m1", ref="v1")}
    rgb = tiny_tokenizer("rgb")
    rgb.save_pretrained(staging / "toks" / "rgb")
    shutil.copytree(TEXT, staging / "toks" / "text")
    publish(hub, "fourm-test/tokenizers", staging / "toks")
    publish(hub, "fourm-test/rgb", staging / "toks" / "rgb")
    publish(hub, "fourm-test/text", staging / "toks" / "text")
    reference = FourM(FourMConfig(modalities=ml4m_modalities("4m7", SMALL_VOCAB), dim=32, encoder_depth=1,
                                  decoder_depth=1, num_heads=2, seq_pos_len=512), seed=3).eval()
    save_ml4m(reference, staging / "ref")
    publish(hub, "EPFL-VILAB/4M-7_B_CC12M", staging / "ref")
    mods21 = ml4m_modalities("4m21")
    mods21 = ml4m_modalities("4m21", {m.name: 32 for m in mods21 if m.vocab_size})
    reference21 = FourM(FourMConfig(modalities=mods21, dim=16, encoder_depth=1, decoder_depth=1, num_heads=2,
                                    seq_pos_len=512), seed=4).eval()
    save_ml4m(reference21, staging / "ref21")
    publish(hub, "EPFL-VILAB/4M-21_B", staging / "ref21")
    return {"dir": hub, "models": models, "commits": commits, "rgb": rgb, "reference": reference,
            "reference21": reference21}


@pytest.fixture
def offline(cache: dict, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE=<the test cache>, in the environment and in huggingface_hub's
    constants (it reads both once, at import)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache["dir"]))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache["dir"]))
    return cache["dir"]


def test_the_test_cache_is_what_huggingface_hub_reads(cache):
    info = huggingface_hub.scan_cache_dir(cache["dir"])
    repos = {r.repo_id: r for r in info.repos}
    assert set(repos) == {"fourm-test/tiny", "fourm-test/tokenizers", "fourm-test/rgb", "fourm-test/text",
                          "EPFL-VILAB/4M-7_B_CC12M", "EPFL-VILAB/4M-21_B"}
    tiny = repos["fourm-test/tiny"]
    assert {c for r in tiny.revisions for c in r.refs} == {"main", "v1"}
    assert {r.commit_hash for r in tiny.revisions} == set(cache["commits"].values())


def test_fourm_by_repo_id_and_revision_offline(cache, offline):
    models, commits = cache["models"], cache["commits"]
    assert same_weights(FourM.from_pretrained("fourm-test/tiny"), models[0])  # main, from HF_HUB_CACHE
    assert same_weights(FourM.from_pretrained("fourm-test/tiny", revision="v1"), models[1])
    assert same_weights(FourM.from_pretrained("fourm-test/tiny", revision=commits["v1"]), models[1])
    assert not same_weights(models[0], models[1])  # so the comparisons above can fail
    other = offline.parent / "elsewhere"  # cache_dir overrides HF_HUB_CACHE
    shutil.copytree(offline, other, symlinks=True)
    assert same_weights(FourM.from_pretrained("fourm-test/tiny", revision="v1", cache_dir=other), models[1])
    with pytest.raises(FileNotFoundError, match=r"Hub repo 'fourm-test/tiny' at revision 'v9' could not be loaded"):
        FourM.from_pretrained("fourm-test/tiny", revision="v9")
    with pytest.raises(FileNotFoundError, match=r"nobody/nothing: no such folder .*LocalEntryNotFoundError"):
        FourM.from_pretrained("nobody/nothing")


def test_tokenizers_by_repo_id_offline(cache, offline):
    toks = load_tokenizers("fourm-test/tokenizers")
    assert sorted(toks) == ["rgb", "text"]
    assert same_weights(toks["rgb"], cache["rgb"])
    text = TextTokenizer.from_pretrained(TEXT)
    caption = "a small red circle left of a large blue square"
    assert toks["text"].encode(caption) == text.encode(caption)
    assert same_weights(ImageTokenizer.from_pretrained("fourm-test/rgb", revision="main"), cache["rgb"])
    again = TextTokenizer.from_pretrained("fourm-test/text")
    assert again.encode(caption) == text.encode(caption) and again.model_max_length == text.model_max_length


def test_reference_checkpoint_by_release_name_and_repo_id_offline(cache, offline):
    loaded = [(load_ml4m("4M-7_B_CC12M"), cache["reference"]),  # read as EPFL-VILAB/4M-7_B_CC12M
              (load_ml4m("EPFL-VILAB/4M-7_B_CC12M", revision="main"), cache["reference"]),
              (load_ml4m("4M-21_B"), cache["reference21"])]
    for model, reference in loaded:
        mine, theirs = model.state_dict(), reference.state_dict()  # mine also holds the unused image-target tables
        assert model.config == reference.config and all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert "tok_dinov2@224" in loaded[2][0].specs and "tok_dinov2@224" not in loaded[0][0].specs
    with pytest.raises(FileNotFoundError, match="4M-21_XL"):
        load_ml4m("4M-21_XL")  # a released name that is not in this cache


def test_a_folder_wins_and_takes_no_revision(tmp_path, monkeypatch):
    model = FourM(tiny_config())
    model.save_pretrained(tmp_path / "fourm-test" / "tiny")
    monkeypatch.chdir(tmp_path)  # "fourm-test/tiny" is now also a folder here
    assert same_weights(FourM.from_pretrained("fourm-test/tiny"), model)
    with pytest.raises(ValueError, match="revision='v1' selects a version of a Hub repo, but 'fourm-test/tiny' is a local"):
        FourM.from_pretrained("fourm-test/tiny", revision="v1")
    with pytest.raises(FileNotFoundError, match="run: no such folder .*, and not a Hub repo id"):
        FourM.from_pretrained(tmp_path / "no" / "such" / "run")
    assert looks_like_repo_id("EPFL-VILAB/4M-21_XL") and looks_like_repo_id("bert-base-uncased")
    assert not looks_like_repo_id("out/fm/run/model") and not looks_like_repo_id("a--b/c")


def test_offline_in_a_fresh_process(cache, tmp_path):
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE as a user sets them, read by huggingface_hub at import."""
    code = ("from fourm.models import FourM; from fourm.vq.loading import load_tokenizers; "
            "m = FourM.from_pretrained('fourm-test/tiny', revision='v1'); "
            "print(sorted(load_tokenizers('fourm-test/tokenizers')), float(m.mask_token.sum()))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache["dir"]), "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["['rgb',", "'text']", str(float(cache["models"][1].mask_token.detach().sum()))]


class FakeApi:
    """Stands in for huggingface_hub.HfApi: records the calls and keeps a copy of the uploaded folder."""

    calls: list = []

    def __init__(self, token=None, library_name=None, library_version=None):
        FakeApi.calls.append(("init", library_name))

    def create_repo(self, repo_id, private=None, exist_ok=False):
        FakeApi.calls.append(("create_repo", repo_id, exist_ok))

    def create_branch(self, repo_id, branch, exist_ok=False):
        FakeApi.calls.append(("create_branch", repo_id, branch))

    def upload_folder(self, repo_id, folder_path, revision, create_pr, commit_message):
        FakeApi.uploaded = Path(FakeApi.target) / "upload"
        shutil.copytree(folder_path, FakeApi.uploaded)
        FakeApi.calls.append(("upload_folder", repo_id, revision, create_pr, commit_message))
        return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/abc",
                                          commit_message=commit_message, commit_description="", oid="abc")


def test_push_to_hub_uploads_what_from_pretrained_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.calls, FakeApi.target = [], tmp_path
    model = FourM(tiny_config(), seed=5)
    url = model.push_to_hub("me/tiny", branch="v2", commit_message="first")
    assert url == "https://huggingface.co/me/tiny/commit/abc"
    assert FakeApi.calls == [("init", "fourm"), ("create_repo", "me/tiny", True), ("create_branch", "me/tiny", "v2"),
                             ("upload_folder", "me/tiny", "v2", False, "first")]
    assert sorted(p.name for p in FakeApi.uploaded.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    commit = publish(tmp_path / "cache", "me/tiny", FakeApi.uploaded, ref="v2")
    back = FourM.from_pretrained("me/tiny", revision="v2", cache_dir=tmp_path / "cache", local_files_only=True)
    assert same_weights(back, model) and len(commit) == 40
    with pytest.raises(ValueError, match="repo_id='not a repo'"):
        model.push_to_hub("not a repo")


def test_model_cards_carry_front_matter(tmp_path):
    saved = {"fourm": FourM(tiny_config()).save_pretrained(tmp_path / "m"),
             "image": tiny_tokenizer("depth").save_pretrained(tmp_path / "depth"),
             "text": TextTokenizer.from_pretrained(TEXT).save_pretrained(tmp_path / "text")}
    pipelines = {"fourm": "any-to-any", "image": "image-feature-extraction", "text": "any-to-any"}
    for kind, folder in saved.items():
        meta = read_card_metadata(folder)
        assert meta["library_name"] == "fourm" and meta["license"] == "apache-2.0", kind
        assert meta["pipeline_tag"] == pipelines[kind] and "fourm" in meta["tags"], kind
    assert "depth" in read_card_metadata(saved["image"])["tags"]
    # a card written by hand is kept; one given to save_pretrained replaces it
    (saved["fourm"] / "README.md").write_text("# mine\n")
    model = FourM(tiny_config())
    model.save_pretrained(saved["fourm"])
    assert (saved["fourm"] / "README.md").read_text() == "# mine\n"
    from dataclasses import replace

    model.save_pretrained(saved["fourm"], card=replace(model.model_card(), datasets=("me/data",)))
    assert read_card_metadata(saved["fourm"])["datasets"] == ["me/data"]


@pytest.mark.parametrize("folder", ["models/shapes_bundled", "tokenizers/shapes64", "tokenizers/shapes64/text",
                                    "tokenizers/photos64/rgb"])
def test_committed_assets_have_model_cards(folder):
    meta = read_card_metadata(REPO / folder)
    assert meta.get("library_name") == "fourm" and meta.get("license") == "apache-2.0", folder
    assert meta.get("pipeline_tag") and "fourm" in meta.get("tags", []) and meta.get("datasets"), folder
