"""ShapesWorld generator: determinism, aligned modalities, geometry, captions and config checks."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fourm.data import shapes_world as sw
from fourm.data.shapes_world import (
    COLOURS, FAR_DEPTH, SEMSEG_CLASSES, SHAPE_CLASSES, SIZE_WORDS, WorldConfig, parse_caption, render_scene,
)

SCENES = [render_scene(11, i) for i in range(40)]


def _digest(sample: dict) -> str:
    h = hashlib.sha256()
    for k in ("rgb", "depth", "semseg"):
        h.update(sample[k].tobytes())
    h.update(json.dumps([sample["det"], sample["caption"], sample["objects"]], sort_keys=True).encode())
    return h.hexdigest()


def test_public_constants():
    assert len(SHAPE_CLASSES) >= 4 and {"circle", "square", "triangle"} <= set(SHAPE_CLASSES)
    assert SEMSEG_CLASSES == ("sky", "ground", *SHAPE_CLASSES)
    assert len(COLOURS) >= 6 and SIZE_WORDS == ("small", "large")
    rgb = np.array(list(COLOURS.values()), float)
    dist = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + np.eye(len(rgb)) * 1e9
    assert dist.min() > 100, "palette colours must be far apart in RGB"
    assert isinstance(sw.WORLD_VERSION, str) and WorldConfig().to_dict()["image_size"] == 64


def test_same_seed_index_is_identical_and_order_free():
    a = render_scene(3, 5)
    for i in range(4):
        render_scene(3, i)
    np.random.seed(123)  # global RNG must play no part
    state = np.random.get_state()[1].copy()
    b = render_scene(3, 5)
    assert np.array_equal(np.random.get_state()[1], state), "render_scene touched the global numpy RNG"
    assert _digest(a) == _digest(b)
    assert _digest(render_scene(3, 6)) != _digest(a)
    assert _digest(render_scene(4, 5)) != _digest(a)


def test_identical_in_another_process():
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from test_shapes_world import _digest; "
            "from fourm.data.shapes_world import render_scene; print(_digest(render_scene(3, 5)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == _digest(render_scene(3, 5))


def test_modalities_shapes_and_dtypes():
    for s in SCENES[:5]:
        assert s["rgb"].shape == (64, 64, 3) and s["rgb"].dtype == np.uint8
        assert s["depth"].shape == (64, 64) and s["depth"].dtype == np.float32
        assert s["semseg"].shape == (64, 64) and s["semseg"].dtype == np.uint8
        assert isinstance(s["caption"], str) and s["caption"]
        json.dumps([s["det"], s["objects"]])  # plain JSON types only


def test_sky_depth_and_layout():
    n = 64
    horizon_row = sw.HORIZON * n
    for s in SCENES:
        sky = s["semseg"] == 0
        assert np.all(s["depth"][sky] == FAR_DEPTH)
        assert np.all(s["depth"] > 0) and np.all(s["depth"] <= FAR_DEPTH)
        rows = np.nonzero(sky.any(axis=1))[0]
        assert rows.max() < horizon_row, "sky only above the horizon"
        assert np.all(s["semseg"][: int(horizon_row) - 1] != 1), "no ground above the horizon"
        assert s["semseg"].max() < len(SEMSEG_CLASSES)


def test_det_semseg_objects_agree():
    for s in SCENES:
        sem = s["semseg"]
        present = {SEMSEG_CLASSES[c] for c in np.unique(sem) if c >= 2}
        assert present == {d["class"] for d in s["det"]}
        assert [d["box"] for d in s["det"]] == [o["box"] for o in s["objects"]]
        assert [d["class"] for d in s["det"]] == [o["shape"] for o in s["objects"]]
        assert 1 <= len(s["det"]) <= 4
        assert len({o["colour"] for o in s["objects"]}) == len(s["objects"]), "colours are unique in a scene"
        for cls in present:
            c = SEMSEG_CLASSES.index(cls)
            covered = np.zeros_like(sem, bool)
            for d in s["det"]:
                if d["class"] != cls:
                    continue
                x0, y0, x1, y1 = (round(v * 64) for v in d["box"])
                assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
                inside = sem[y0:y1, x0:x1] == c
                # tight: every edge row and column of the box holds a pixel of the class
                assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
                covered[y0:y1, x0:x1] = True
            assert not np.any((sem == c) & ~covered), "every pixel of a class lies in one of its boxes"
        for o in s["objects"]:
            x0, y0, x1, y1 = (round(v * 64) for v in o["box"])
            mine = (sem[y0:y1, x0:x1] == o["semseg_id"]) & np.isclose(s["depth"][y0:y1, x0:x1], o["distance"])
            assert mine.sum() == o["visible_pixels"] >= max(6, round(sw.MIN_VISIBLE_AREA * 64 * 64))
            assert o["visible_fraction"] >= sw.MIN_VISIBLE_FRACTION


def test_perspective_and_sizes():
    for s in SCENES:
        for o in s["objects"]:
            x0, y0, x1, y1 = o["full_box"]
            base_below_horizon = y1 - sw.HORIZON
            assert base_below_horizon == pytest.approx(sw.FOCAL * sw.CAMERA_HEIGHT / o["distance"])
            assert y1 - y0 == pytest.approx(x1 - x0)
            assert y1 - y0 == pytest.approx(sw.FOCAL * o["height"] / o["distance"])  # apparent size
            lo, hi = sw.SIZE_RATIO[o["size"]]
            assert lo * sw.CAMERA_HEIGHT <= o["height"] <= hi * sw.CAMERA_HEIGHT
    small_px = [o["full_box"][2] - o["full_box"][0] for s in SCENES for o in s["objects"] if o["size"] == "small"]
    assert min(small_px) * 64 >= 7, "small objects stay big enough to see at 64 px"


def test_nearer_objects_occlude_farther_ones():
    occluded = 0
    for s in SCENES:
        for o in s["objects"]:
            if o["visible_fraction"] >= 1.0:
                continue
            occluded += 1
            x0, y0, x1, y1 = o["full_box"]
            half = (x1 - x0) / 2
            c = (np.arange(64) + 0.5) / 64
            u = (c[None, :] - (x0 + half)) / half
            v = (c[:, None] - (y0 + half)) / half
            silhouette = sw.silhouette_sdf(o["shape"], u, v) <= 0
            hidden = silhouette & ~np.isclose(s["depth"], o["distance"])
            assert hidden.any()
            assert np.all(s["depth"][hidden] < o["distance"]), "only nearer things may hide an object"
    assert occluded >= 3, "the test scenes should contain occlusions"


def test_objects_are_shaded_and_ground_is_smooth_texture():
    for s in SCENES[:10]:
        for o in s["objects"]:
            x0, y0, x1, y1 = (round(v * 64) for v in o["box"])
            px = s["rgb"][y0:y1, x0:x1][s["semseg"][y0:y1, x0:x1] == o["semseg_id"]]
            assert len(np.unique(px, axis=0)) > 3, "objects are shaded, not flat"
    grads, stds = [], []
    for s in SCENES:
        ground = s["semseg"] == 1
        x = s["rgb"].astype(float)
        both = ground[:, 1:] & ground[:, :-1]
        grads.append(np.abs(np.diff(x, axis=1)).sum(-1)[both].mean())
        stds.append(x[ground].std(axis=0).mean())
    assert np.mean(stds) > 5, "the ground is textured"
    assert np.mean(grads) < 12, "the ground texture is smooth, not per-pixel noise"


@pytest.mark.parametrize("size", list(range(32, 257, 16)))
def test_every_allowed_size(size):
    s = render_scene(2, 1, WorldConfig(image_size=size))
    assert s["rgb"].shape == (size, size, 3) and s["depth"].shape == s["semseg"].shape == (size, size)
    assert s["det"] and all(0 <= v <= 1 for d in s["det"] for v in d["box"])
    assert {SEMSEG_CLASSES[c] for c in np.unique(s["semseg"]) if c >= 2} == {d["class"] for d in s["det"]}


@pytest.mark.parametrize("size", [0, 16, 48 + 2, 272, 512, 64.0, True, "64"])
def test_bad_sizes_rejected(size):
    with pytest.raises(ValueError, match=r"image_size=.* is not allowed: use a multiple of 16 from 32 to 256"):
        WorldConfig(image_size=size)


def test_config_and_argument_errors():
    with pytest.raises(ValueError, match="min_objects=3 is larger than max_objects=2"):
        WorldConfig(min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="max_objects=7"):
        WorldConfig(max_objects=7)
    with pytest.raises(ValueError, match="seed=-1"):
        render_scene(-1, 0)
    with pytest.raises(ValueError, match="index=1.5"):
        render_scene(0, 1.5)
    many = [render_scene(0, i, WorldConfig(min_objects=3, max_objects=3)) for i in range(10)]
    assert all(1 <= len(s["objects"]) <= 3 for s in many) and max(len(s["objects"]) for s in many) == 3


def test_caption_round_trip():
    for s in SCENES:
        truth = [(o["size"], o["colour"], o["shape"]) for o in s["objects"]]
        parsed = parse_caption(s["caption"])
        assert sorted(parsed) == sorted(truth), s["caption"]


def test_captions_vary_in_form_and_words():
    openings = {" ".join(s["caption"].split()[:2]) for s in SCENES}
    words = {w for s in SCENES for w in re.findall(r"[a-z]+", s["caption"].lower())}
    assert len(openings) >= 4
    for synonyms in (*sw.SHAPE_SYNONYMS.values(), *sw.SIZE_SYNONYMS.values()):
        assert len(words & set(synonyms)) >= 2


_REL = {p: k for k, ps in sw.RELATIONS.items() for p in ps}
_NOUN = r"the (?:(\w+) )?(\w+) (\w+)"


def _find(objects, colour, word):
    shape = next(s for s, ws in sw.SHAPE_SYNONYMS.items() if word in ws)
    return next(o for o in objects if o["colour"] == colour and o["shape"] == shape)


def test_spatial_relations_are_true():
    checked = 0
    rels = "|".join(sorted(map(re.escape, _REL), key=len, reverse=True))
    for s in SCENES:
        for sentence in re.split(r"(?<=\.) ", s["caption"])[1:]:
            text = sentence.rstrip(".").lower()
            m = re.fullmatch(rf"{_NOUN} is ({rels}) {_NOUN}", text)
            if m:
                a, rel, b = _find(s["objects"], m[2], m[3]), _REL[m[4]], _find(s["objects"], m[6], m[7])
            else:
                m = re.fullmatch(rf"({rels}) {_NOUN} is {_NOUN}", text)
                assert m, f"unrecognised relation sentence: {sentence!r}"
                rel, b, a = _REL[m[1]], _find(s["objects"], m[3], m[4]), _find(s["objects"], m[6], m[7])
            ca, cb = (a["box"][0] + a["box"][2]) / 2, (b["box"][0] + b["box"][2]) / 2
            holds = {"left": ca < cb, "right": ca > cb, "front": a["distance"] < b["distance"],
                     "behind": a["distance"] > b["distance"]}[rel]
            assert holds, f"{sentence!r} is false in scene {s['objects']}"
            checked += 1
    assert checked >= 20


def test_parse_caption_synonyms_and_references():
    text = "A tiny red ball is left of the big blue cube. Behind the red ball is the blue cube, and a green cone."
    assert parse_caption(text) == [("small", "red", "circle"), ("large", "blue", "square"), (None, "green", "triangle")]
    assert parse_caption("the red sphere. A huge red sphere.") == [("large", "red", "circle")]
    assert parse_caption("nothing here") == []
