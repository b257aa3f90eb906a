"""Captioned shapes: a small image-text dataset, generated in code, on which a CLIP trains in minutes.

Every image is S×S pixels (32 by default): a dark, slightly noisy background with one or two flat
shapes. A shape (`Shape`) has a colour (`COLOURS`), a kind (`SHAPES`), a size (`SIZES`) and a place
(`PLACES`), and a caption says what the image shows, in one of several templates: "a small red circle
on the left", "a photo of a red circle", "a red circle left of a blue cross", ... Some templates leave
an attribute out ("a small circle at the top", "a red shape on the left"), so the words for colours
and for kinds also occur on their own. `caption(scene, 0)` is the complete description (size, colour,
kind and place of every shape), the one used for retrieval.

Compositional generalisation: `HELD_OUT` lists four colour-shape combinations (one per kind, each with
a different colour), and `SEEN` the other twenty-eight. A training set drawn with `combos=SEEN` contains no
held-out combination, neither alone nor in a pair, although every colour and every kind occurs; a test
set drawn with `combos=HELD_OUT` then asks whether a model can recognise "a red circle" having seen red
things and circles but never a red circle. There are eight colours, not fewer, for that reason: with more
colours per kind a model must recognise a kind across colours; in chapter 9 (exercise 4) a small CLIP
trained on the first five colours only recognised the held-out combinations less often.

Drawing: each shape is a signed distance d(p) from its outline (negative inside), and the pixel at p
is covered by clip(0.5 - d(p), 0, 1), which anti-aliases the edges over about one pixel. Colours, sizes
and places are jittered a little, so no two shapes are identical. `captioned_shapes(n, seed)` gives the
same images and captions for the same arguments (a NumPy Generator seeded with `seed`).

Shapes (in the comments): N images, S pixels per side, K shapes in a scene (1 or 2).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "COLOURS", "SHAPES", "SIZES", "PLACES", "CLASSES", "HELD_OUT", "SEEN", "ONE_SHAPE_TEMPLATES",
    "TWO_SHAPE_TEMPLATES", "Shape", "CaptionedShapes", "caption", "draw", "captioned_shapes",
]

COLOURS: dict[str, tuple[float, float, float]] = {  # RGB in [0, 1], before jitter
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.20, 0.35, 1.00),
    "yellow": (0.95, 0.85, 0.15),
    "purple": (0.65, 0.25, 0.85),
    "orange": (1.00, 0.55, 0.10),
    "cyan": (0.10, 0.85, 0.90),
    "white": (0.92, 0.92, 0.92),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = {"small": 0.12, "large": 0.21}  # the radius as a fraction of the image side, before jitter
PLACES = {  # the centre (x, y) as fractions of the side (y grows downwards), and how a caption says it
    "left": ((0.27, 0.50), "on the left"),
    "right": ((0.73, 0.50), "on the right"),
    "top": ((0.50, 0.27), "at the top"),
    "bottom": ((0.50, 0.73), "at the bottom"),
    "middle": ((0.50, 0.50), "in the middle"),
}
CLASSES = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)  # the 32 colour-shape classes, colour-major
HELD_OUT = (("red", "circle"), ("green", "square"), ("blue", "triangle"), ("yellow", "cross"))
SEEN = tuple((c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT)

ONE_SHAPE_TEMPLATES = (  # {size} {colour} {shape} {where}; the first is the complete description
    "a {size} {colour} {shape} {where}",
    "a {colour} {shape} {where}",
    "a {size} {colour} {shape}",
    "a {colour} {shape}",
    "a photo of a {colour} {shape}",
    "a {size} {shape} {where}",  # no colour
    "a {colour} shape {where}",  # no kind
)
TWO_SHAPE_TEMPLATES = (  # shape 0 is left of (or above) shape 1; the first is the complete description
    "a {size0} {colour0} {shape0} {where0} and a {size1} {colour1} {shape1} {where1}",
    "a {colour0} {shape0} and a {colour1} {shape1}",
    "a {colour1} {shape1} and a {colour0} {shape0}",
    "a {colour0} {shape0} {relation} a {colour1} {shape1}",
)

_JITTER = {"colour": 0.07, "size": 0.08, "place": 0.05, "pair_place": 0.03}  # uniform ± (fractions)


@dataclass(frozen=True)
class Shape:
    """One shape of a scene: colour, kind ("circle", ...), size ("small"/"large") and place ("left", ...)."""

    colour: str
    kind: str
    size: str
    place: str

    def __post_init__(self) -> None:
        for name, value, allowed in (("colour", self.colour, COLOURS), ("kind", self.kind, SHAPES),
                                     ("size", self.size, SIZES), ("place", self.place, PLACES)):
            if value not in allowed:
                raise ValueError(f"Shape: unknown {name} {value!r}; choose one of {list(allowed)}")

    @property
    def name(self) -> str:
        """"red circle": the colour-shape class."""
        return f"{self.colour} {self.kind}"


def caption(scene: Sequence[Shape], template: int = 0) -> str:
    """The caption of a scene (one or two shapes) in template number `template` of ONE_SHAPE_TEMPLATES or
    TWO_SHAPE_TEMPLATES; template 0 describes everything. Two shapes are named as "shape 0 left of (or
    above) shape 1", so a pair must be placed left/right or top/bottom."""
    scene = tuple(scene)
    templates = ONE_SHAPE_TEMPLATES if len(scene) == 1 else TWO_SHAPE_TEMPLATES if len(scene) == 2 else None
    if templates is None:
        raise ValueError(f"caption: a scene has one or two shapes, got {len(scene)}")
    if not isinstance(template, int) or not 0 <= template < len(templates):
        raise ValueError(f"caption: template must be an int in [0, {len(templates)}) for a {len(scene)}-shape "
                         f"scene, got {template!r}")
    if len(scene) == 1:
        s = scene[0]
        return templates[template].format(size=s.size, colour=s.colour, shape=s.kind, where=PLACES[s.place][1])
    a, b = scene
    relation = {("left", "right"): "left of", ("top", "bottom"): "above"}.get((a.place, b.place))
    if relation is None:
        raise ValueError(f"caption: the two shapes of a scene stand left/right or top/bottom, in that order; got "
                         f"{a.place}/{b.place}")
    fields = {f"{k}{i}": v for i, s in enumerate((a, b)) for k, v in
              (("size", s.size), ("colour", s.colour), ("shape", s.kind), ("where", PLACES[s.place][1]))}
    return templates[template].format(relation=relation, **fields)


@dataclass
class CaptionedShapes:
    """Images (N, 3, S, S) uint8 and their scenes; `captions` and `random_captions` put them in words."""

    images: Tensor  # (N, 3, S, S) uint8
    scenes: list[tuple[Shape, ...]]

    def __len__(self) -> int:
        return len(self.scenes)

    def pixels(self, index: Tensor | Sequence[int] | slice | None = None) -> Tensor:
        """Images `index` (all by default) as floats in [-1, 1], (N, 3, S, S) float32: what a model reads."""
        x = self.images if index is None else self.images[index]
        return x.float().div(127.5).sub(1.0)

    def captions(self, template: int = 0) -> list[str]:
        """Every image's caption in template number `template` (0: the complete description)."""
        return [caption(scene, template) for scene in self.scenes]

    def random_captions(self, index: Sequence[int] | Tensor, generator: np.random.Generator) -> list[str]:
        """A caption for each image of `index`, in a template drawn uniformly by `generator`."""
        out = []
        for i in (index.tolist() if isinstance(index, Tensor) else index):
            scene = self.scenes[i]
            n = len(ONE_SHAPE_TEMPLATES if len(scene) == 1 else TWO_SHAPE_TEMPLATES)
            out.append(caption(scene, int(generator.integers(n))))
        return out

    @property
    def labels(self) -> Tensor:
        """(N,) int64: the index in CLASSES of a one-shape image's colour-shape class, -1 for a pair."""
        return torch.tensor([CLASSES.index(s[0].name) if len(s) == 1 else -1 for s in self.scenes])


def _distance(kind: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) from the outline of a `kind` of radius r centred at 0."""
    if kind == "circle":
        return np.hypot(x, y) - r
    if kind == "square":  # half-side 0.85 r: about the circle's area
        return np.maximum(np.abs(x), np.abs(y)) - 0.85 * r
    if kind == "triangle":  # equilateral, pointing up, circumradius 1.2 r: three half-planes
        R = 1.2 * r
        return np.maximum(y, math.sqrt(3) / 2 * np.abs(x) - y / 2) - R / 2
    if kind == "cross":  # a plus sign: two bars of half-length r and half-width 0.35 r
        return np.minimum(np.maximum(np.abs(x) - r, np.abs(y) - 0.35 * r),
                          np.maximum(np.abs(y) - r, np.abs(x) - 0.35 * r))
    raise ValueError(f"unknown shape kind {kind!r}; choose one of {list(SHAPES)}")


def _check_size(size: int, who: str) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise ValueError(f"{who}: size must be an int ≥ 8 (pixels per side), got {size!r}")


def draw(scene: Sequence[Shape], size: int = 32, rng: np.random.Generator | None = None) -> np.ndarray:
    """One scene as an image (S, S, 3), floats in [0, 1]: the background, then each shape, every colour,
    size and place jittered a little by `rng` (default: a Generator seeded with 0)."""
    S, scene = size, tuple(scene)
    if not scene or not all(isinstance(s, Shape) for s in scene):
        raise ValueError(f"draw: scene must be a non-empty sequence of Shape, got {scene!r}")
    _check_size(size, "draw")
    rng = np.random.default_rng(0) if rng is None else rng
    image = rng.uniform(0.05, 0.2) + rng.normal(0.0, 0.03, (S, S, 1))  # (S, S, 1) dark grey with noise
    image = np.repeat(image, 3, axis=2)  # (S, S, 3)
    yy, xx = np.mgrid[0:S, 0:S] + 0.5  # (S, S) pixel centres
    jitter = _JITTER["place" if len(scene) == 1 else "pair_place"]
    for s in scene:
        (cx, cy), _ = PLACES[s.place]
        cx, cy = (cx + rng.uniform(-jitter, jitter)) * S, (cy + rng.uniform(-jitter, jitter)) * S
        r = SIZES[s.size] * (1 + rng.uniform(-_JITTER["size"], _JITTER["size"])) * S
        colour = np.clip(np.array(COLOURS[s.colour]) + rng.uniform(-_JITTER["colour"], _JITTER["colour"], 3), 0, 1)
        cover = np.clip(0.5 - _distance(s.kind, xx - cx, yy - cy, r), 0.0, 1.0)[..., None]  # (S, S, 1)
        image = image * (1 - cover) + colour * cover  # (S, S, 3)
    return np.clip(image, 0.0, 1.0)


def captioned_shapes(n: int, seed: int = 0, size: int = 32, combos: Sequence[tuple[str, str]] = SEEN,
                     pairs: float = 0.25) -> CaptionedShapes:
    """`n` random scenes drawn as size×size images: each has one shape, or with probability `pairs` two
    (left/right or top/bottom, distinct colour-shape combinations). Every shape's (colour, kind) comes from
    `combos` (default `SEEN`: no held-out combination), its size and place uniformly. Same arguments → same
    dataset."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"captioned_shapes: n must be a non-negative int, got {n!r}")
    _check_size(size, "captioned_shapes")
    if not 0.0 <= pairs <= 1.0:
        raise ValueError(f"captioned_shapes: pairs is a probability in [0, 1], got {pairs}")
    combos = [tuple(c) for c in combos]
    bad = [c for c in combos if len(c) != 2 or c[0] not in COLOURS or c[1] not in SHAPES]
    if not combos or bad:
        raise ValueError(f"captioned_shapes: combos must be (colour, shape) pairs from COLOURS × SHAPES, got "
                         f"{bad or 'none'}")
    if pairs > 0 and len(set(combos)) < 2:
        raise ValueError("captioned_shapes: a pair needs two distinct combinations; pass more combos or pairs=0")
    rng = np.random.default_rng(seed)
    sizes, places = list(SIZES), list(PLACES)
    scenes, images = [], np.empty((n, size, size, 3), dtype=np.uint8)  # (N, S, S, 3)
    for i in range(n):
        if rng.random() < pairs:
            first, second = rng.choice(len(combos), size=2, replace=False)
            where = ("left", "right") if rng.random() < 0.5 else ("top", "bottom")
            scene = tuple(Shape(*combos[k], sizes[rng.integers(2)], p) for k, p in zip((first, second), where))
        else:
            scene = (Shape(*combos[rng.integers(len(combos))], sizes[rng.integers(2)],
                           places[rng.integers(len(places))]),)
        scenes.append(scene)
        images[i] = np.round(draw(scene, size, rng) * 255)
    return CaptionedShapes(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), scenes)  # (N, 3, S, S)
