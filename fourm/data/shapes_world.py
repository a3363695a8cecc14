"""ShapesWorld: shapes standing on a ground plane, seen by a pinhole camera, in five aligned modalities.

A scene is a pure function of ``(seed, index)``: a camera at ``CAMERA_HEIGHT`` metres looks
horizontally at a flat ground. Above the horizon a sky gradient (hue per scene); below it a ground
texture (stripes, checks or smooth noise) laid out in world metres, so perspective shrinks it
towards the horizon, where it fades into haze. One to four objects stand on the ground, each with a
shape, a named colour, a size word and a position; where its base meets the ground decides its
distance and so its image row and apparent size; nearer objects are painted over farther ones.

    sample = render_scene(seed=0, index=7)                      # default 64 x 64
    sample["rgb"].shape, sample["caption"]                      # (64, 64, 3), "There are two objects: ..."
    parse_caption(sample["caption"])                            # [("small", "red", "circle"), ...]

Layout is sampled in resolution-free units (fractions of the image height), so one (seed, index)
gives the same scene at every image size. Two objects of one scene never share a colour, so a
caption can refer to "the red ball" without ambiguity and the scene parser can group pixels by colour.
"""
from __future__ import annotations

import colorsys
import functools
import math
import re
from dataclasses import asdict, dataclass

import numpy as np

WORLD_VERSION: str = "1.0"
SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
# Saturated colours with hues roughly 60 degrees apart; backgrounds stay below saturation 0.35, so a
# pixel's colour alone says "object" or "not object", whatever the shading.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "yellow": (235, 215, 40),
    "green": (40, 175, 60),
    "cyan": (40, 200, 215),
    "blue": (45, 75, 225),
    "magenta": (210, 50, 200),
}
SIZE_WORDS: tuple[str, ...] = ("small", "large")
SEMSEG_CLASSES: tuple[str, ...] = ("sky", "ground", *SHAPE_CLASSES)
FAR_DEPTH: float = 50.0  # metres; sky and the ground near the horizon

# Camera and layout. Image lengths are fractions of the image height (images are square).
HORIZON: float = 0.36  # horizon row
CAMERA_HEIGHT: float = 1.5  # metres
FOCAL: float = 1.0  # focal length in image heights (about 53 degrees field of view)
BASE_RANGE: tuple[float, float] = (0.30, 0.52)  # object base row minus horizon row
# Side of an object's square silhouette divided by (base row - horizon row) = physical size / camera height.
SIZE_RATIO: dict[str, tuple[float, float]] = {"small": (0.40, 0.48), "large": (0.66, 0.78)}
SIZE_THRESHOLD: float = 0.57  # between the two ranges above; the scene parser uses it
MIN_VISIBLE_FRACTION: float = 0.4  # objects hidden more than this are left out of the scene
MIN_VISIBLE_AREA: float = 0.0035  # and so are objects with fewer visible pixels than this share of the image
AMBIENT: float = 0.4  # darkest shading factor

SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "sphere", "disc"),
    "square": ("square", "cube", "box", "block"),
    "triangle": ("triangle", "cone", "pyramid"),
    "diamond": ("diamond", "rhombus"),
}
SIZE_SYNONYMS: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
RELATIONS: dict[str, tuple[str, ...]] = {
    "left": ("left of", "to the left of", "on the left of"),
    "right": ("right of", "to the right of", "on the right of"),
    "front": ("in front of", "closer than"),
    "behind": ("behind", "farther away than"),
}
_RNG_STREAM = 0x5357  # keeps this world's random stream apart from others seeded with (seed, index)
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
_GROUND_STYLES = ("stripes", "checks", "noise")


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the world.

    Args:
        image_size: height = width of every modality; a multiple of 16 from 32 to 256.
        min_objects: fewest objects placed (some may be left out when hidden).
        max_objects: most objects placed; at most ``len(COLOURS)`` since colours are unique per scene.
        shadows: draw a soft contact shadow under each object.
    """

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    shadows: bool = True

    def __post_init__(self) -> None:
        s = self.image_size
        if isinstance(s, bool) or not isinstance(s, int) or s % 16 or not 32 <= s <= 256:
            raise ValueError(f"image_size={s!r} is not allowed: use a multiple of 16 from 32 to 256")
        for name in ("min_objects", "max_objects"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= len(COLOURS):
                raise ValueError(f"{name}={v!r} is not allowed: use an integer from 1 to {len(COLOURS)}")
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects={self.min_objects} is larger than max_objects={self.max_objects}")
        if not isinstance(self.shadows, bool):
            raise ValueError(f"shadows={self.shadows!r} is not allowed: use true or false")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Object:
    shape: str
    colour: str
    size: str
    u: float  # horizontal centre, fraction of the width
    d: float  # base row minus horizon row, fraction of the height
    ratio: float  # side / d, see SIZE_RATIO

    @property
    def side(self) -> float:
        return self.ratio * self.d

    @property
    def distance(self) -> float:
        return FOCAL * CAMERA_HEIGHT / self.d

    def full_box(self) -> tuple[float, float, float, float]:
        h = self.side / 2
        return (self.u - h, HORIZON + self.d - self.side, self.u + h, HORIZON + self.d)


@dataclass(frozen=True)
class _Scene:
    sky_top: np.ndarray  # (3,) float32 in [0, 1]
    sky_horizon: np.ndarray
    ground: tuple[np.ndarray, np.ndarray]
    style: str
    texture: tuple[float, ...]  # style parameters
    haze: float  # metres
    light: tuple[float, float, float]  # unit vector towards the light; image y points down
    objects: tuple[_Object, ...]


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _box_overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def _sample_scene(rng: np.random.Generator, cfg: WorldConfig) -> _Scene:
    """Draw everything random about a scene, in resolution-free units and a fixed draw order."""
    hue = rng.random()
    sky_top = _hsv(hue, rng.uniform(0.18, 0.35), rng.uniform(0.70, 0.90))
    sky_horizon = _hsv(hue + rng.uniform(-0.05, 0.05), rng.uniform(0.04, 0.12), rng.uniform(0.88, 0.98))
    g_hue, g_sat, g_val = rng.random(), rng.uniform(0.08, 0.28), rng.uniform(0.35, 0.62)
    contrast = rng.uniform(0.12, 0.25)
    ground = (_hsv(g_hue, g_sat, g_val), _hsv(g_hue + rng.uniform(-0.06, 0.06), g_sat, g_val + contrast))
    style = _GROUND_STYLES[int(rng.integers(len(_GROUND_STYLES)))]
    if style == "stripes":  # period (m), angle, phase
        texture = (rng.uniform(0.6, 1.6), rng.uniform(0, math.pi), rng.uniform(0, 2 * math.pi))
    elif style == "checks":  # half period (m), two phases
        texture = (rng.uniform(0.7, 1.8), rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi))
    else:  # four waves: period (m), angle, phase, amplitude
        texture = tuple(float(v) for _ in range(4) for v in
                        (rng.uniform(2.0, 6.0), rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 1.0)))
    haze = rng.uniform(15.0, 30.0)
    light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.8, -0.4), 0.7])
    light = tuple(float(v) for v in light / np.linalg.norm(light))

    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    colours = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))[:n]]
    objects: list[_Object] = []
    for colour in colours:
        shape = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
        size = SIZE_WORDS[int(rng.integers(len(SIZE_WORDS)))]
        ratio = rng.uniform(*SIZE_RATIO[size])
        for _ in range(30):  # place without hiding much of anything: at most 45% of the farther box
            d = rng.uniform(*BASE_RANGE)
            side = ratio * d
            u = rng.uniform(side / 2 + 0.02, 1 - side / 2 - 0.02)
            obj = _Object(shape, colour, size, float(u), float(d), float(ratio))
            box = obj.full_box()
            if all(_box_overlap(box, o.full_box()) <= 0.45 * min(o.side, obj.side) ** 2 for o in objects):
                objects.append(obj)
                break
    return _Scene(sky_top, sky_horizon, ground, style, tuple(float(t) for t in texture), float(haze), light, tuple(objects))


@functools.lru_cache(maxsize=16)
def _ground_grid(n: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per image size: first ground row, and for ground rows world Z (Hg,1), X (Hg,W), metres per pixel."""
    c = (np.arange(n, dtype=np.float64) + 0.5) / n
    row0 = int(np.searchsorted(c, HORIZON, side="right"))
    d = c[row0:, None] - HORIZON  # (Hg, 1)
    z = FOCAL * CAMERA_HEIGHT / d  # (Hg, 1) metres along the optical axis
    x = (c[None, :] - 0.5) * z / FOCAL  # (Hg, W) metres to the right
    lateral_fp = z / (FOCAL * n)  # metres per pixel across
    depth_fp = z * z / (FOCAL * CAMERA_HEIGHT * n)  # metres per pixel along the ground
    arrays = [a.astype(np.float32) for a in (z, x, lateral_fp, depth_fp)]
    for a in arrays:
        a.flags.writeable = False
    return (row0, *arrays)


def _fade(pixels_per_period: np.ndarray) -> np.ndarray:
    """Texture contrast: full at >= 6 pixels per period, none at <= 3 (no aliasing into per-pixel noise)."""
    return np.clip((pixels_per_period - 3.0) / 3.0, 0.0, 1.0)


def _ground_texture(scene: _Scene, z: np.ndarray, x: np.ndarray, lat: np.ndarray, dep: np.ndarray) -> np.ndarray:
    """Mix weight in [0, 1] between the two ground colours. Shapes: (Hg, W)."""
    t = scene.texture
    if scene.style == "stripes":
        period, angle, phase = t
        ca, sa = math.cos(angle), math.sin(angle)
        wave = np.cos((x * ca + z * sa) * (2 * math.pi / period) + phase)
        fade = _fade(period / np.sqrt((ca * lat) ** 2 + (sa * dep) ** 2))
        k = 2.5
    elif scene.style == "checks":
        half, p1, p2 = t
        wave = np.sin(x * (math.pi / half) + p1) * np.sin(z * (math.pi / half) + p2)
        fade = _fade(2 * half / np.maximum(lat, dep))
        k = 4.0
    else:
        wave = np.zeros(np.broadcast_shapes(x.shape, z.shape), np.float32)
        total = 0.0
        for i in range(0, len(t), 4):
            period, angle, phase, amp = t[i:i + 4]
            wave += amp * np.sin((x * math.cos(angle) + z * math.sin(angle)) * (2 * math.pi / period) + phase)
            total += amp
        wave /= total
        fade = _fade(min(t[0::4]) / np.maximum(lat, dep))
        k = 1.5
    return 0.5 + 0.5 * fade * np.tanh(k * wave) / math.tanh(k)


def silhouette_sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) to a shape filling the box [-1, 1]^2, in box half-widths.

    ``v`` points down: the triangle's apex is at v = -1. Exact inside, close enough outside for
    one pixel of anti-aliasing. Shared with the scene parser, which fits these same silhouettes.
    """
    if shape == "circle":
        return np.sqrt(u * u + v * v) - 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 1.0
    if shape == "triangle":
        side = (2 * np.abs(u) - v - 1.0) / math.sqrt(5.0)
        return np.maximum(v - 1.0, side)
    if shape == "diamond":
        return (np.abs(u) + np.abs(v) - 1.0) / math.sqrt(2.0)
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPE_CLASSES)}")


def _shading(shape: str, u: np.ndarray, v: np.ndarray, light: tuple[float, float, float]) -> np.ndarray:
    """Lambert factor in [AMBIENT, 1] from a surface normal that suits each shape's 3D reading."""
    lx, ly, lz = light
    if shape == "circle":  # a sphere
        nz = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, 1.0))
        lam = u * lx + v * ly + nz * lz
    elif shape == "square":  # the front face of a cube, with a soft gradient across it
        lam = 0.85 * lz + 0.25 * (u * lx + v * ly)
    elif shape == "triangle":  # a cone: the normal turns with the position across each row
        t = np.clip(u / np.clip((v + 1.0) / 2.0, 0.05, None), -1.0, 1.0)
        lam = 0.9 * t * lx - 0.44 * ly + 0.9 * np.sqrt(1.0 - t * t) * lz
    else:  # an octahedron: four flat facets
        lam = 0.5 * np.sign(u) * lx + 0.5 * np.sign(v) * ly + 0.707 * lz
    return AMBIENT + (1.0 - AMBIENT) * np.clip(lam, 0.0, 1.0)


def _patch(obj: _Object, n: int) -> tuple[slice, slice, np.ndarray, np.ndarray, float]:
    """Pixel window around an object and its box coordinates (u across, v down) inside it."""
    x0, y0, x1, y1 = obj.full_box()
    r0, r1 = max(int(math.floor(y0 * n)) - 1, 0), min(int(math.ceil(y1 * n)) + 1, n)
    c0, c1 = max(int(math.floor(x0 * n)) - 1, 0), min(int(math.ceil(x1 * n)) + 1, n)
    half = obj.side / 2
    rows = (np.arange(r0, r1, dtype=np.float32) + 0.5) / n
    cols = (np.arange(c0, c1, dtype=np.float32) + 0.5) / n
    v = ((rows - (y1 - half)) / half)[:, None]  # (h, 1)
    u = ((cols - obj.u) / half)[None, :]  # (1, w)
    return slice(r0, r1), slice(c0, c1), u, v, half * n


def _paint_ids(n: int, masks: list[tuple[slice, slice, np.ndarray]], keep: list[int]) -> np.ndarray:
    """Instance map: index of the nearest object covering each pixel, -1 for none. Objects come far to near."""
    ids = np.full((n, n), -1, np.int16)
    for k in keep:
        rs, cs, inside = masks[k]
        ids[rs, cs][inside] = k
    return ids


def render_scene(seed: int, index: int, config: WorldConfig | None = None) -> dict:
    """Render sample ``index`` of the world ``seed``.

    Args:
        seed: world seed (non-negative int); different seeds give independent data sets.
        index: sample index (non-negative int).
        config: world knobs; ``WorldConfig()`` when None.

    Returns:
        dict with ``rgb`` (H, W, 3) uint8, ``depth`` (H, W) float32 metres (``FAR_DEPTH`` for sky),
        ``semseg`` (H, W) uint8 ids into ``SEMSEG_CLASSES``, ``det`` (list of {"box": [xmin, ymin,
        xmax, ymax] in [0, 1] of the visible pixels, "class": shape}), ``caption`` (str) and
        ``objects``: per object, in the order of ``det`` (left to right), a JSON-ready dict with
        shape, colour, size (word), box (as in det), full_box (the whole silhouette's square box,
        hidden parts included), distance (metres along the optical axis), lateral (metres right of
        the axis), height (metres), visible_pixels, visible_fraction, semseg_id, colour_rgb.
    """
    for name, v in (("seed", seed), ("index", index)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name}={v!r} is not allowed: use a non-negative integer")
    cfg = config if config is not None else WorldConfig()
    rng = np.random.default_rng([_RNG_STREAM, int(seed), int(index)])
    scene = _sample_scene(rng, cfg)
    n = cfg.image_size

    # Background: sky rows, then ground rows.
    row0, z, x, lat, dep = _ground_grid(n)
    rgb = np.empty((n, n, 3), np.float32)
    t = np.clip((np.arange(row0, dtype=np.float32) + 0.5) / (n * HORIZON), 0, 1)[:, None, None] ** 0.7
    rgb[:row0] = scene.sky_top + (scene.sky_horizon - scene.sky_top) * t  # (Hs, W, 3) by broadcast
    mix = _ground_texture(scene, z, x, lat, dep)[..., None]  # (Hg, W, 1)
    c1, c2 = scene.ground
    ground = c1 + (c2 - c1) * mix  # (Hg, W, 3)
    if cfg.shadows:
        for obj in scene.objects:
            _shadow(ground, obj, scene.light, n, row0)
    haze = (1.0 - np.exp(-z / scene.haze))[..., None]  # (Hg, 1, 1)
    rgb[row0:] = ground * (1.0 - haze) + scene.sky_horizon * haze
    depth = np.full((n, n), FAR_DEPTH, np.float32)
    depth[row0:] = np.minimum(z, FAR_DEPTH)
    semseg = np.zeros((n, n), np.uint8)
    semseg[row0:] = 1

    # Objects, far to near; those hidden below the visibility limits are dropped (nearest first,
    # since dropping one can only uncover farther ones) so that every modality shows the same set.
    objs = sorted(scene.objects, key=lambda o: (o.d, o.u))
    geo = [_patch(o, n) for o in objs]
    sdf_px = [silhouette_sdf(o.shape, u, v) * scale for o, (_, _, u, v, scale) in zip(objs, geo)]
    masks = [(rs, cs, s <= 0) for (rs, cs, _, _, _), s in zip(geo, sdf_px)]
    full = [int(m[2].sum()) for m in masks]
    keep = list(range(len(objs)))
    min_px = max(6, round(MIN_VISIBLE_AREA * n * n))
    while True:
        ids = _paint_ids(n, masks, keep)
        visible = np.bincount(ids[ids >= 0].ravel(), minlength=len(objs))
        bad = [k for k in keep if visible[k] < min_px or visible[k] < MIN_VISIBLE_FRACTION * full[k]]
        if not bad:
            break
        keep.remove(max(bad))

    painted = np.zeros((n, n), bool)
    for k in keep:
        obj, (rs, cs, u, v, _), inside = objs[k], geo[k], masks[k][2]
        colour = np.asarray(COLOURS[obj.colour], np.float32) / 255.0
        shaded = _shading(obj.shape, u, v, scene.light)[..., None] * colour  # (h, w, 3)
        # Anti-alias against the background only: blending two object colours would invent a third.
        alpha = np.where(painted[rs, cs], inside, np.clip(0.5 - sdf_px[k], 0.0, 1.0))[..., None]
        rgb[rs, cs] = rgb[rs, cs] * (1.0 - alpha) + shaded * alpha
        painted[rs, cs] |= inside
        semseg[rs, cs][inside] = 2 + SHAPE_CLASSES.index(obj.shape)
        depth[rs, cs][inside] = obj.distance

    records = []
    for k in keep:
        obj, (rs, cs, _, _, _) = objs[k], geo[k]
        rr, cc = np.nonzero(ids[rs, cs] == k)
        box = [(cs.start + int(cc.min())) / n, (rs.start + int(rr.min())) / n,
               (cs.start + int(cc.max()) + 1) / n, (rs.start + int(rr.max()) + 1) / n]
        records.append({
            "shape": obj.shape, "colour": obj.colour, "size": obj.size, "box": box,
            "full_box": [float(b) for b in obj.full_box()], "distance": obj.distance,
            "lateral": (obj.u - 0.5) * obj.distance / FOCAL, "height": obj.ratio * CAMERA_HEIGHT,
            "visible_pixels": int(visible[k]), "visible_fraction": float(visible[k] / full[k]),
            "semseg_id": 2 + SHAPE_CLASSES.index(obj.shape), "colour_rgb": list(COLOURS[obj.colour]),
        })
    records.sort(key=lambda r: (r["box"][0] + r["box"][2], r["distance"]))
    return {
        "rgb": np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8),
        "depth": depth,
        "semseg": semseg,
        "det": [{"box": list(r["box"]), "class": r["shape"]} for r in records],
        "caption": make_caption(records, rng),
        "objects": records,
    }


def _shadow(ground: np.ndarray, obj: _Object, light: tuple[float, float, float], n: int, row0: int) -> None:
    """Darken a soft ellipse on the ground at the object's base, pushed away from the light. In place."""
    s = obj.side
    cu, cv = obj.u - light[0] * 0.35 * s, HORIZON + obj.d
    rx, ry = 0.6 * s, 0.1 * s + 0.6 / n
    r0, r1 = max(int((cv - ry) * n) - 1, row0), min(int((cv + ry) * n) + 2, n)
    c0, c1 = max(int((cu - rx) * n) - 1, 0), min(int((cu + rx) * n) + 2, n)
    if r0 >= r1 or c0 >= c1:
        return
    yy = ((np.arange(r0, r1, dtype=np.float32) + 0.5) / n - cv)[:, None] / ry
    xx = ((np.arange(c0, c1, dtype=np.float32) + 0.5) / n - cu)[None, :] / rx
    strength = np.clip(2.0 * (1.0 - xx * xx - yy * yy), 0.0, 1.0)  # (h, w)
    ground[r0 - row0:r1 - row0, c0:c1] *= (1.0 - 0.45 * strength)[..., None]


# ----------------------------------------------------------------------------- captions

def make_caption(objects: list[dict], rng: np.random.Generator) -> str:
    """English caption: every object by size, colour and shape, then up to two spatial relations.

    Args:
        objects: ground-truth records as in ``render_scene(...)["objects"]`` (left to right).
        rng: the scene's generator; picks template, synonyms, order and relations.
    """
    nouns = [SHAPE_SYNONYMS[o["shape"]][int(rng.integers(len(SHAPE_SYNONYMS[o["shape"]])))] for o in objects]
    adjs = [SIZE_SYNONYMS[o["size"]][int(rng.integers(len(SIZE_SYNONYMS[o["size"]])))] for o in objects]
    phrase = [f"a {a} {o['colour']} {s}" for a, o, s in zip(adjs, objects, nouns)]
    n = len(objects)
    if n == 1:
        templates = ("There is one object: {}.", "A scene with {}.", "The picture shows {}.",
                     "Only {} stands on the ground.", "On the ground there is {}.")
        sentences = [templates[int(rng.integers(len(templates)))].format(phrase[0])]
    else:
        templates = ("There are {n} objects: {l}.", "{N} objects stand on the ground: {l}.", "A scene with {l}.",
                     "On the ground there are {l}.", "The picture shows {l}.", "From left to right: {l}.")
        tpl = templates[int(rng.integers(len(templates)))]
        order = range(n) if tpl.startswith("From left") else rng.permutation(n)
        items = [phrase[i] for i in order]
        listing = ", ".join(items[:-1]) + " and " + items[-1]
        sentences = [tpl.format(n=_NUMBERS[n], N=_NUMBERS[n].capitalize(), l=listing)]
    sentences += _relations(objects, nouns, adjs, rng)
    return " ".join(sentences)


def _relations(objects: list[dict], nouns: list[str], adjs: list[str], rng: np.random.Generator) -> list[str]:
    """Up to two sentences relating pairs whose relation is clear (left/right by image centre, front/behind by distance)."""
    def ref(i: int) -> str:
        size = f"{adjs[i]} " if rng.random() < 0.5 else ""
        return f"the {size}{objects[i]['colour']} {nouns[i]}"

    n = len(objects)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    out: list[str] = []
    for p in rng.permutation(len(pairs)) if pairs else []:
        if len(out) == 2:
            break
        i, j = pairs[p]
        if rng.random() < 0.5:
            i, j = j, i
        a, b = objects[i], objects[j]
        du = (a["box"][0] + a["box"][2]) / 2 - (b["box"][0] + b["box"][2]) / 2
        dz = a["distance"] - b["distance"]
        rels = ([] if abs(du) < 0.12 else ["left" if du < 0 else "right"]) + ([] if abs(dz) < 0.5 else ["front" if dz < 0 else "behind"])
        if not rels:
            continue
        words = RELATIONS[rels[int(rng.integers(len(rels)))]]
        rel = words[int(rng.integers(len(words)))]
        if rng.random() < 0.7:
            sentence = f"{ref(i)} is {rel} {ref(j)}."
        else:
            sentence = f"{rel} {ref(j)} is {ref(i)}."
        out.append(sentence[0].upper() + sentence[1:])
    return out


_SHAPE_WORD = {w: s for s, ws in SHAPE_SYNONYMS.items() for w in ws}
_SIZE_WORD = {w: s for s, ws in SIZE_SYNONYMS.items() for w in ws}


def parse_caption(text: str) -> list[tuple[str | None, str, str]]:
    """Read (size, colour, shape) triples back from a caption, in order of first mention.

    A mention is ``[size word] colour shape-word`` with any synonym of ``SHAPE_SYNONYMS`` /
    ``SIZE_SYNONYMS``; later mentions of a (colour, shape) already seen are references to it and
    add nothing (they fill in its size if the first mention had none). A mention never given a size
    keeps ``None`` in that slot.

    Args:
        text: a caption, generated or ground truth; case and punctuation are ignored.

    Returns:
        list of (size word or None, colour, shape class).
    """
    words = re.findall(r"[a-z]+", text.lower())
    found: dict[tuple[str, str], str | None] = {}
    for i in range(len(words) - 1):
        colour, shape = words[i], _SHAPE_WORD.get(words[i + 1])
        if colour not in COLOURS or shape is None:
            continue
        size = _SIZE_WORD.get(words[i - 1]) if i > 0 else None
        if found.get((colour, shape)) is None:
            found[(colour, shape)] = size
    return [(size, colour, shape) for (colour, shape), size in found.items()]
