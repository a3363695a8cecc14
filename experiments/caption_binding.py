"""Does a model read what it names? Teacher-forced word accuracy of rgb -> caption, by word kind.

    .venv/bin/python experiments/caption_binding.py models/shapes_bundled [more models ...]

For ``--num-samples`` held-out ShapesWorld scenes (world seed ``--seed``), each model gets the rgb
pixels as its only input and the ground-truth caption as a teacher-forced target (the transfer
masking of evaluation). It prints, per word kind (colour, shape, size words, and every token),
the mean cross-entropy and the accuracy of the arg-max next token, for two inputs:

* ``image``: the scene's own pixels;
* ``shuffled``: another scene's pixels (what the model guesses from the caption prefix alone).

Chance for colour words is 1/6 (ShapesWorld's six colours).

A word kind whose ``image`` figures equal its ``shuffled`` ones is not read from the image. Last,
a linear probe (ridge regression, half the objects to fit, half to test) of each object's colour
from the encoder output at the patch under its box centre shows whether the encoder carries the
colour at all; the raw 8 x 8 x 3 patch is the baseline. The bundled model's stage 1
(configs/fm/shapes_bundled.yaml) named shapes and sizes but its colour words were at chance while
the probe read colours at 0.94: the decoder had not learned to look (stage 2,
configs/fm/shapes_bundled_captions.yaml, is the fix).
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fourm.data.shapes_world import COLOURS, SHAPE_SYNONYMS, SIZE_SYNONYMS, render_scene  # noqa: E402
from fourm.masking.unified import TransferMasking, count_tokens  # noqa: E402
from fourm.modalities import ModalityRegistry, pixels_to_float  # noqa: E402
from fourm.models import FourM  # noqa: E402
from fourm.data.image_sources import stored_image  # noqa: E402
from fourm.vq.loading import load_tokenizers  # noqa: E402


def word_ids(text) -> dict[str, set[int]]:
    """Token ids of each word kind (the words of the kind that encode to one token)."""
    words = {
        "colour": list(COLOURS),
        "shape": [w for names in SHAPE_SYNONYMS.values() for w in names],
        "size": [w for names in SIZE_SYNONYMS.values() for w in names],
    }
    return {kind: {ids[0] for ids in map(text.encode, ws) if len(ids) == 1} for kind, ws in words.items()}


def scores(model: FourM, batch: dict, registry: ModalityRegistry,
           kinds: dict[str, set[int]]) -> dict[str, tuple[float, float, int]]:
    """Per word kind (and ``all``): (mean cross-entropy, arg-max accuracy, number of tokens)."""
    counts = count_tokens(batch, registry)  # encoder and decoder slots sized to the batch
    with torch.no_grad():
        enc = model.forward_encoder(batch, int(counts.inputs.max()))
        dec = model.forward_decoder(batch, enc, int(counts.decoder_slots.max()))
        pred = model.decode_logits(dec, ["caption"])["caption"]
    nll = torch.nn.functional.cross_entropy(pred.logits.float(), pred.target_ids, reduction="none")
    hit = (pred.logits.argmax(-1) == pred.target_ids).float()
    out = {"all": (nll.mean().item(), hit.mean().item(), len(nll))}
    for kind, ids in kinds.items():
        sel = torch.tensor([int(t) in ids for t in pred.target_ids])
        if sel.any():
            out[kind] = (nll[sel].mean().item(), hit[sel].mean().item(), int(sel.sum()))
    return out


def colour_probe(model: FourM, scenes: list[dict], pixels: torch.Tensor, registry: ModalityRegistry,
                 colours: list[str]) -> tuple[float, float, int]:
    """Held-out accuracy of a ridge probe of object colour: (encoder output, raw patch, objects)."""
    masking = TransferMasking(["rgb"], [], registry)
    batch = masking.mask_batch({"rgb": pixels})
    with torch.no_grad():
        enc = model.forward_encoder(batch, registry["rgb"].num_tokens).output  # rgb patches only, in grid order
    rows, cols = registry["rgb"].grid
    patch = registry["rgb"].patch_size
    feats, raw, labels = [], [], []
    for i, s in enumerate(scenes):
        for o in s["objects"]:
            if o["visible_fraction"] < 0.5:
                continue
            x0, y0, x1, y1 = o["box"]
            r, c = min(int((y0 + y1) / 2 * rows), rows - 1), min(int((x0 + x1) / 2 * cols), cols - 1)
            feats.append(enc[i, r * cols + c].numpy())
            raw.append(pixels[i, :, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].reshape(-1).numpy())
            labels.append(colours.index(o["colour"]))
    y = np.asarray(labels)
    half = len(y) // 2

    def fit(x: np.ndarray) -> float:
        x = np.c_[np.asarray(x), np.ones(len(y))]
        target = np.eye(len(colours))[y]
        w = np.linalg.solve(x[:half].T @ x[:half] + 0.1 * np.eye(x.shape[1]), x[:half].T @ target[:half])
        return float((np.argmax(x[half:] @ w, 1) == y[half:]).mean())

    return fit(feats), fit(raw), len(y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--tokenizers", default="tokenizers/shapes64")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--num-samples", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    text = load_tokenizers(args.tokenizers)["text"]
    colours = list(COLOURS)
    kinds = word_ids(text)
    scenes = [render_scene(args.seed, i) for i in range(args.num_samples)]
    pixels = pixels_to_float(torch.stack([stored_image(s, "rgb") for s in scenes]))
    captions = [text.encode(s["caption"]) for s in scenes]
    print(f"{args.num_samples} scenes of world seed {args.seed}; rgb pixels in, the caption teacher-forced; "
          f"chance for colour words 1/{len(colours)} = {1 / len(colours):.3f}")
    for path in args.models:
        model = FourM.from_pretrained(path).eval()
        registry = ModalityRegistry({s.name: s for s in model.config.modalities})
        masking = TransferMasking(["rgb"], ["caption"], registry)
        own = scores(model, masking.mask_batch({"rgb": pixels, "caption": captions}), registry, kinds)
        other = scores(model, masking.mask_batch({"rgb": pixels.roll(1, 0), "caption": captions}), registry, kinds)
        print(f"\n{path}")
        print("| words | tokens | nll, image | nll, shuffled | acc., image | acc., shuffled |")
        print("|---|---|---|---|---|---|")
        for kind in ("colour", "shape", "size", "all"):
            if kind in own:
                print(f"| {kind} | {own[kind][2]} | {own[kind][0]:.3f} | {other[kind][0]:.3f} | "
                      f"{own[kind][1]:.3f} | {other[kind][1]:.3f} |")
        enc_acc, raw_acc, n = colour_probe(model, scenes, pixels, registry, colours)
        print(f"colour probe ({n} objects, half fitted): encoder output {enc_acc:.3f}, raw patch {raw_acc:.3f}")


if __name__ == "__main__":
    main()
