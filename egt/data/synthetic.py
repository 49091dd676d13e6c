"""Synthetic multimodal preference pairs whose images, and only their images, decide the better response.

The demo needs data a tiny model can learn in minutes and a teacher can judge offline, with known
noise so curation can be checked against the truth. Each pair asks about the colours of a small PNG:

- ``colour``: "What colour is this image?" over a solid, slightly noisy fill;
- ``majority``: "Which colour covers more of the image?" over two colour blocks of unequal size.

The two responses share one templated phrasing and differ only in the colour they name, so reading
the text alone gives no hint; the response order is random, so labels are ~50/50 (no position prior).

Noise kinds, recorded in the diagnostics-only ``truth_kind`` / ``truth_label`` columns:

- ``clean``: one response is right; ``label`` names it;
- ``ambiguous``: the image is striped exactly half/half in the two named colours, so neither is
  right; ``label`` is random and ``truth_label`` is None;
- ``flipped``: a clean pair whose ``label`` names the wrong response (annotation noise).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from egt.judge import swap_label

# Well separated in RGB (the closest pair, orange/yellow, is 78 apart), so a pixel plus its jitter
# and noise (at most 18 per channel, 31 in all) stays nearest to its own colour.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 50),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
_NAMES = tuple(COLOURS)
_COLOUR_JITTER = 12  # per image, per colour block
_PIXEL_NOISE = 6

QUERIES = {
    "colour": (
        "What colour is this image?",
        "What is the main colour of the image?",
        "Which colour fills the picture?",
    ),
    "majority": (
        "Which colour covers more of the image?",
        "Which of the two colours takes up more of the picture?",
        "What colour is the larger area?",
    ),
}
# Every answer template is six Qwen tokens with the colour (" red", one token) fifth: in every pair
# the two colours sit at the same distance from the end of the prompt, so a judge can find each
# response's colour by position alone (a tiny model learns that in a few hundred steps; a model that
# must first learn where a variable-length response puts its colour does not; docs/demo.md).
ANSWERS = {
    "colour": ("The main colour is {}.", "The whole image is {}.", "The picture is all {}."),
    "majority": ("The larger area is {}.", "Most of it is {}.", "The bigger part is {}."),
}
COLOUR_TOKEN_INDEX = 4  # the colour's position among an answer's six tokens
# The dominant block of a clean "majority" image covers this share of it, so it is never a near tie:
# at 112 pixels (4×4 image tokens) the smallest majority is 3 token rows against an ambiguous image's 2.
_MAJORITY_SHARE = (0.7, 0.9)


def _render(rng: np.random.Generator, size: int, first: str, second: str, cut: int) -> Image.Image:
    """``first`` fills the first ``cut`` rows or columns (random axis), ``second`` the rest."""
    pixels = np.empty((size, size, 3), dtype=np.int16)
    pixels[:] = np.array(COLOURS[second]) + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, 3)
    block = np.array(COLOURS[first]) + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, 3)
    if rng.integers(2):
        pixels[:cut] = block
    else:
        pixels[:, :cut] = block
    pixels += rng.integers(-_PIXEL_NOISE, _PIXEL_NOISE + 1, pixels.shape, dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _render_striped(rng: np.random.Generator, size: int, first: str, second: str) -> Image.Image:
    """One-pixel stripes (random axis) of the two colours: each covers exactly half the image.

    Stripes rather than two half blocks: then every image patch shows the split, and a tiny model can
    see that no colour wins (with two blocks at 4×4 image tokens it could not tell 50/50 from 70/30
    in the demo's training budget; docs/demo.md).
    """
    pixels = np.empty((size, size, 3), dtype=np.int16)
    pixels[:] = np.array(COLOURS[second]) + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, 3)
    stripe = np.array(COLOURS[first]) + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, 3)
    if rng.integers(2):
        pixels[::2] = stripe
    else:
        pixels[:, ::2] = stripe
    pixels += rng.integers(-_PIXEL_NOISE, _PIXEL_NOISE + 1, pixels.shape, dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _pair(rng: np.random.Generator, kind: str, size: int) -> tuple[str, Image.Image, str, str]:
    """The category, the image and the two colours the responses will name.

    For a clean pair the first colour is the right one; for an ambiguous pair the image holds both
    colours in equal stripes. A wrong "colour" answer names a colour absent from the image; a wrong
    "majority" answer names the smaller block, which is there too: seeing a colour is not enough.
    """
    category = str(rng.choice(list(QUERIES)))
    right, wrong = (str(name) for name in rng.choice(_NAMES, size=2, replace=False))
    if kind == "ambiguous":
        return category, _render_striped(rng, size, right, wrong), right, wrong
    if category == "colour":
        return category, _render(rng, size, right, right, size), right, wrong
    cut = round(rng.uniform(*_MAJORITY_SHARE) * size)
    # The dominant block goes first or last at random, so its position carries no signal.
    if rng.integers(2):
        return category, _render(rng, size, right, wrong, cut), right, wrong
    return category, _render(rng, size, wrong, right, size - cut), right, wrong


def _kinds(n: int, ambiguous_fraction: float, flipped_fraction: float, seed: int) -> list[str]:
    """Exactly round(n·fraction) ambiguous and flipped pairs, at positions shuffled with ``seed``."""
    for name, value in (("ambiguous_fraction", ambiguous_fraction), ("flipped_fraction", flipped_fraction)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if ambiguous_fraction + flipped_fraction > 1:
        raise ValueError(
            f"ambiguous_fraction + flipped_fraction must be at most 1, got "
            f"{ambiguous_fraction} + {flipped_fraction}"
        )
    n_ambiguous = round(n * ambiguous_fraction)
    # Rounding both up can overshoot n by one (n=3, 0.5 + 0.5); the flipped count gives way.
    n_flipped = min(round(n * flipped_fraction), n - n_ambiguous)
    kinds = ["ambiguous"] * n_ambiguous + ["flipped"] * n_flipped + ["clean"] * (n - n_ambiguous - n_flipped)
    np.random.default_rng(seed).shuffle(kinds)
    return kinds


def generate_split(
    out_dir: Path,
    split: str,
    n: int,
    seed: int,
    ambiguous_fraction: float = 0.0,
    flipped_fraction: float = 0.0,
    image_size: int = 56,
) -> list[dict]:
    """Write ``n`` pairs' PNGs under ``out_dir/images/`` and return their records (the caller writes them).

    Deterministic for (split, n, seed, fractions, image_size): the same records and byte-identical
    PNGs. Each pair draws from its own generator seeded by (seed, split, index), so two splits made
    with one seed still differ.
    """
    if image_size < 2 or image_size % 2:
        raise ValueError(
            f"image_size must be even and at least 2 (ambiguous images are split in halves), got {image_size}"
        )
    kinds = _kinds(n, ambiguous_fraction, flipped_fraction, seed)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    split_key = zlib.crc32(split.encode())
    records = []
    for index, kind in enumerate(kinds):
        rng = np.random.default_rng([seed, split_key, index])
        category, image, right, wrong = _pair(rng, kind, image_size)
        record_id = f"{split}-{index:06d}"
        relative = f"images/{record_id}.png"
        image.save(out_dir / relative, format="PNG")
        template = str(rng.choice(ANSWERS[category]))
        truth_label = None if kind == "ambiguous" else int(rng.integers(1, 3))
        first, second = (wrong, right) if truth_label == 2 else (right, wrong)
        if truth_label is None:
            label = int(rng.integers(1, 3))
        else:
            label = swap_label(truth_label) if kind == "flipped" else truth_label
        records.append(
            {
                "id": record_id,
                "images": [relative],
                "query": str(rng.choice(QUERIES[category])),
                "response_1": template.format(first),
                "response_2": template.format(second),
                "label": label,
                "category": category,
                "source": "synthetic",
                "truth_kind": kind,
                "truth_label": truth_label,
            }
        )
    return records
