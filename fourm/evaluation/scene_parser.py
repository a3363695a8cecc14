"""The analytic ShapesWorld scene parser: objects read from an RGB image with no learning.

It relies on three facts of the world (``fourm.data.shapes_world``):
1. Backgrounds are pale (saturation < 0.35) and objects are saturated palette colours; shading
   scales a colour, which keeps its chromaticity, so ``rgb / max(rgb)`` names the colour.
2. Every silhouette (circle, square, triangle, diamond) fills a square box and touches all four
   of its sides, and nearer objects stand lower in the image, so an object's occluders are the
   touching objects whose visible bottom is lower than its own.
3. ``side / (base row - horizon row)`` is the physical size over the camera height, which tells
   small from large whatever the distance.

Steps: classify pixels by colour, group touching object pixels into blobs, split each blob by
colour, then fit the four silhouettes (the very ones the generator draws) to each object's visible
pixels, treating pixels of its occluders as unknown, and keep the best fit.

    objs = parse_scene(sample["rgb"])       # [ParsedObject(colour="red", shape="circle", size="small", box=...)]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fourm.data.shapes_world import COLOURS, HORIZON, SHAPE_CLASSES, SIZE_THRESHOLD, silhouette_sdf

_PALETTE = np.asarray(list(COLOURS.values()), np.float32)
_CHROMA = _PALETTE / _PALETTE.max(axis=1, keepdims=True)  # (C, 3) colours at full value
_NAMES = tuple(COLOURS)
MIN_SATURATION = 0.45  # backgrounds stay below 0.35, palette colours are above 0.75
MAX_CHROMA_DISTANCE = 0.45
MIN_VALUE = 0.12  # darker pixels carry too little colour to name


@dataclass(frozen=True)
class ParsedObject:
    """One object read from an image.

    Attributes:
        colour: palette name.
        shape: one of ``SHAPE_CLASSES``.
        size: ``"small"`` or ``"large"``.
        box: visible extent ``(xmin, ymin, xmax, ymax)`` in [0, 1].
        score: IoU of the best silhouette fit on the pixels that are not hidden (1 = perfect).
        pixels: number of visible pixels.
    """

    colour: str
    shape: str
    size: str
    box: tuple[float, float, float, float]
    score: float
    pixels: int


def colour_map(rgb: np.ndarray) -> np.ndarray:
    """Palette index of every object pixel, -1 for background.

    Args:
        rgb: (H, W, 3) uint8 image.

    Returns:
        (H, W) int16 indices into ``COLOURS``.
    """
    x = rgb.astype(np.float32) / 255.0
    mx = x.max(axis=2)  # (H, W)
    sat = (mx - x.min(axis=2)) / np.maximum(mx, 1e-6)
    chroma = x / np.maximum(mx, 1e-6)[..., None]  # (H, W, 3)
    dist = np.linalg.norm(chroma[:, :, None, :] - _CHROMA, axis=-1)  # (H, W, C)
    nearest = dist.argmin(axis=2)
    ok = (sat > MIN_SATURATION) & (mx > MIN_VALUE) & (dist.min(axis=2) < MAX_CHROMA_DISTANCE)
    return np.where(ok, nearest, -1).astype(np.int16)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a boolean mask by label propagation with pointer jumping.

    Returns:
        (H, W) int32 labels (-1 outside the mask, 0..K-1 inside) and K.
    """
    h, w = mask.shape
    big = h * w
    lab = np.where(mask, np.arange(big).reshape(h, w), big)
    flat = np.append(lab.ravel(), big)  # (HW + 1,) sentinel for "outside"
    while True:
        cur = flat[:-1].reshape(h, w)
        new = cur.copy()
        np.minimum(new[1:], cur[:-1], out=new[1:], where=mask[1:] & mask[:-1])
        np.minimum(new[:-1], cur[1:], out=new[:-1], where=mask[1:] & mask[:-1])
        np.minimum(new[:, 1:], cur[:, :-1], out=new[:, 1:], where=mask[:, 1:] & mask[:, :-1])
        np.minimum(new[:, :-1], cur[:, 1:], out=new[:, :-1], where=mask[:, 1:] & mask[:, :-1])
        nf = np.append(new.ravel(), big)
        nf = nf[nf]  # pointer jumping: a label is a pixel index whose own label is no larger
        if np.array_equal(nf, flat):
            break
        flat = nf
    lab = flat[:-1].reshape(h, w)
    uniq, inv = np.unique(lab, return_inverse=True)
    inv = inv.reshape(h, w).astype(np.int32)
    k = len(uniq) - int(uniq[-1] == big)
    return np.where(mask, inv, -1), k


def _side_candidates(lo: int, hi: int, lo_free: bool, hi_free: bool, s: float, limit: tuple[float, float]) -> np.ndarray:
    """Start positions of a box of side ``s`` along one axis given the visible extent [lo, hi)."""
    if lo_free and hi_free:
        c = (lo + hi - s) / 2
        return np.array([c - 0.25, c + 0.25])
    if lo_free:
        return lo - np.array([1.0, 0.5, 0.0])
    if hi_free:
        return hi - s + np.array([0.0, 0.5, 1.0])
    a, b = min(hi - s, lo), max(hi - s, lo)
    a, b = max(a, limit[0] - 0.5), min(b, limit[1] - s + 0.5)
    n = int(np.clip(np.ceil((b - a) / 0.75), 0, 12)) + 1
    return np.linspace(a, max(a, b), n)


def _fit(mine: np.ndarray, hidden: np.ndarray, ext: tuple[int, int, int, int],
         free: tuple[bool, bool, bool, bool], smax: float) -> tuple[str, float, float, float]:
    """Best silhouette for one object.

    Args:
        mine: (H, W) visible pixels of the object.
        hidden: (H, W) pixels where it may continue unseen (its occluders).
        ext: visible extent in pixels (x0, y0, x1, y1), end exclusive.
        free: whether the left, top, right, bottom sides of the extent are real silhouette sides.
        smax: largest side to try, in pixels.

    Returns:
        (shape, side, box top, score) in pixels.
    """
    x0, y0, x1, y1 = ext
    w, h = x1 - x0, y1 - y0
    if free[0] and free[2] and free[1] and free[3]:
        sides = max(w, h) + np.array([-0.5, 0.0, 0.5, 1.0, 1.5])
    elif free[0] and free[2]:
        sides = w + np.array([-0.5, 0.0, 0.5, 1.0, 1.5])
    elif free[1] and free[3]:
        sides = h + np.array([-0.5, 0.0, 0.5, 1.0, 1.5])
    else:
        sides = np.linspace(max(w, h) - 0.5, max(smax, max(w, h)) + 1.0, 14)
    cands = []  # (bx, by, s)
    for s in sides:
        for bx in _side_candidates(x0, x1, free[0], free[2], s, (0, mine.shape[1])):
            for by in _side_candidates(y0, y1, free[1], free[3], s, (0, mine.shape[0])):
                cands.append((bx, by, s))
    c = np.asarray(cands, np.float32)  # (K, 3)
    c[:, :2] += 1e-3  # candidates sit on a half-pixel grid; keep pixel centres off template edges
    pr0, pc0 = max(int(np.floor(c[:, 1].min())), 0), max(int(np.floor(c[:, 0].min())), 0)
    pr1 = min(int(np.ceil((c[:, 1] + c[:, 2]).max())) + 1, mine.shape[0])
    pc1 = min(int(np.ceil((c[:, 0] + c[:, 2]).max())) + 1, mine.shape[1])
    m = mine[pr0:pr1, pc0:pc1]
    known = ~hidden[pr0:pr1, pc0:pc1] | m
    half = c[:, 2, None, None] / 2  # (K, 1, 1)
    v = ((np.arange(pr0, pr1, dtype=np.float32) + 0.5)[None, :, None] - c[:, 1, None, None] - half) / half  # (K, h, 1)
    u = ((np.arange(pc0, pc1, dtype=np.float32) + 0.5)[None, None, :] - c[:, 0, None, None] - half) / half  # (K, 1, w)
    best = ("circle", 0.0, 0.0, -1.0)
    for shape in SHAPE_CLASSES:
        t = silhouette_sdf(shape, u, v) <= 0  # (K, h, w)
        inter = (t & m).sum(axis=(1, 2))
        union = ((t | m) & known).sum(axis=(1, 2))
        score = inter / np.maximum(union, 1)
        k = int(score.argmax())
        if score[k] > best[3] + 1e-6:
            best = (shape, float(c[k, 2]), float(c[k, 1]), float(score[k]))
    return best


def parse_scene(rgb: np.ndarray, min_area: int | None = None) -> list[ParsedObject]:
    """Read the objects of a ShapesWorld image.

    Args:
        rgb: (H, W, 3) uint8 image, ground truth or generated, square, any size.
        min_area: fewest pixels an object needs; default 0.15% of the image (6 px at 64 x 64).

    Returns:
        objects sorted left to right by box centre.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be an (H, W, 3) uint8 array, got shape {rgb.shape} and dtype {rgb.dtype}")
    n_rows, n_cols = rgb.shape[:2]
    min_area = max(4, round(0.0015 * n_rows * n_cols)) if min_area is None else min_area
    min_piece = max(3, min_area // 2)
    cmap = colour_map(rgb)
    blobs, n_blobs = label_components(cmap >= 0)
    out: list[ParsedObject] = []
    for b in range(n_blobs):
        in_blob = blobs == b
        rows, cols = np.nonzero(in_blob)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        sub = np.where(in_blob[r0:r1, c0:c1], cmap[r0:r1, c0:c1], -1)  # (h, w) colours in this blob
        # Specks of a colour (noise, or a hue that drifted on an edge) are not part of that colour's
        # object; they are marked -2 and handed to a touching object below.
        for k in np.unique(sub[sub >= 0]):
            pieces, n_pieces = label_components(sub == k)
            sizes = np.bincount(pieces[pieces >= 0].ravel(), minlength=n_pieces)
            if (sizes < min_piece).any():
                sub[np.isin(pieces, np.nonzero(sizes < min_piece)[0])] = -2
        counts = np.bincount(sub[sub >= 0].ravel(), minlength=len(_NAMES))
        # An object has pixels whose four neighbours share its colour; the one-pixel fringe where an
        # anti-aliased edge blends into the background towards another hue has none.
        padded = np.pad(sub, 1, constant_values=-1)
        interior = ((padded[:-2, 1:-1] == sub) & (padded[2:, 1:-1] == sub)
                    & (padded[1:-1, :-2] == sub) & (padded[1:-1, 2:] == sub) & (sub >= 0))
        core = np.bincount(sub[interior].ravel(), minlength=len(_NAMES))
        members = [k for k in range(len(_NAMES)) if counts[k] >= min_area and core[k] >= max(2, min_area // 3)]
        # Nearer objects stand lower; a tie counts both ways.
        bottoms = {k: int(np.nonzero((sub == k).any(axis=1))[0].max()) for k in members}
        sub = _absorb_fringe(sub, members)
        for k in members:
            mine_sub = sub == k
            hidden_sub = np.isin(sub, [j for j in members if j != k and bottoms[j] >= bottoms[k]])
            out.append(_parse_object(k, mine_sub, hidden_sub, (r0, c0), (n_rows, n_cols)))
    return sorted(out, key=lambda o: (o.box[0] + o.box[2], o.box[1]))


def _parse_object(k: int, mine_sub: np.ndarray, hidden_sub: np.ndarray, origin: tuple[int, int],
                  image_shape: tuple[int, int]) -> ParsedObject:
    """Fit one colour region of a blob; arrays are blob crops placed at ``origin`` in the image."""
    n_rows, n_cols = image_shape
    ys, xs = np.nonzero(mine_sub)
    x0, y0 = int(xs.min()), int(ys.min())
    x1, y1 = int(xs.max()) + 1, int(ys.max()) + 1
    hid = np.pad(hidden_sub, 1)  # one pixel of margin so the sides just outside the extent exist
    hid = hid | np.roll(hid, 1, 0) | np.roll(hid, -1, 0) | np.roll(hid, 1, 1) | np.roll(hid, -1, 1)  # dilate by 1
    # A side is free (a real silhouette side) when nothing that hides this object touches the row or
    # column just outside it, and the image does not end there.
    ro, co = origin
    rows, cols = slice(y0, y1 + 2), slice(x0, x1 + 2)  # the extent plus one pixel each way, padded coordinates
    free = (
        not hid[rows, x0].any() and co + x0 > 0,
        not hid[y0, cols].any() and ro + y0 > 0,
        not hid[rows, x1 + 1].any() and co + x1 < n_cols,
        not hid[y1 + 1, cols].any() and ro + y1 < n_rows,
    )
    # Work on a window that leaves room for the hidden part of the object.
    pad = max(x1 - x0, y1 - y0) + 2
    hc, wc = mine_sub.shape
    wr0, wc0 = max(min(ro, ro + y0 - pad), 0), max(min(co, co + x0 - pad), 0)
    wr1, wc1 = min(max(ro + hc, ro + y1 + pad), n_rows), min(max(co + wc, co + x1 + pad), n_cols)
    mine = np.zeros((wr1 - wr0, wc1 - wc0), bool)
    hidden = np.zeros_like(mine)
    sl = (slice(ro - wr0, ro - wr0 + hc), slice(co - wc0, co - wc0 + wc))
    mine[sl], hidden[sl] = mine_sub, hidden_sub
    if any(not f for f in free):
        hy, hx = np.nonzero(hidden | mine)
        # at least 40% of an object is visible, so its side is at most 2.5 times the visible extent
        smax = float(min(max(hx.max() - hx.min(), hy.max() - hy.min()) + 1, 2.5 * max(x1 - x0, y1 - y0)))
    else:
        smax = float(max(x1 - x0, y1 - y0))
    ext = (co + x0 - wc0, ro + y0 - wr0, co + x1 - wc0, ro + y1 - wr0)
    shape, side, top, score = _fit(mine, hidden, ext, free, smax)
    base = wr0 + top + side
    ratio = side / max(base - HORIZON * n_rows, 1.0)
    box = (float(co + x0) / n_cols, float(ro + y0) / n_rows, float(co + x1) / n_cols, float(ro + y1) / n_rows)
    return ParsedObject(_NAMES[k], shape, "large" if ratio > SIZE_THRESHOLD else "small", box, score, int(mine_sub.sum()))


def _absorb_fringe(sub: np.ndarray, members: list[int]) -> np.ndarray:
    """Give pixels of colours too small to be objects to a touching object (their hue drifted on an edge)."""
    sub = np.where(np.isin(sub, members) | (sub < 0), sub, -2)  # -2 (also on input): fringe to place
    for _ in range(2):
        fringe = sub == -2
        if not fringe.any():
            break
        padded = np.pad(sub, 1, constant_values=-1)
        for nb in (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]):
            take = fringe & (nb >= 0)
            sub = np.where(take, nb, sub)
            fringe &= ~take
    return np.where(sub == -2, -1, sub)
