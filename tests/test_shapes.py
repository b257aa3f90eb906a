"""utils.shapes: the captioned-shapes dataset is reproducible, keeps the held-out combinations out, draws what
its captions say, and rejects bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.shapes import (CLASSES, COLOURS, HELD_OUT, ONE_SHAPE_TEMPLATES, PLACES, SEEN, SHAPES, SIZES,
                          TWO_SHAPE_TEMPLATES, CaptionedShapes, Shape, caption, captioned_shapes, draw)


def test_same_arguments_give_the_same_dataset():
    a, b = captioned_shapes(50, seed=3), captioned_shapes(50, seed=3)
    assert torch.equal(a.images, b.images) and a.scenes == b.scenes
    c = captioned_shapes(50, seed=4)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (50, 3, 32, 32) and a.images.dtype == torch.uint8
    assert captioned_shapes(3, size=48).images.shape == (3, 3, 48, 48)


def test_held_out_combinations_never_appear_in_training_data():
    assert len(CLASSES) == len(COLOURS) * len(SHAPES) and set(SEEN) | set(HELD_OUT) == {tuple(c.split()) for c in
                                                                                        CLASSES}
    assert not set(SEEN) & set(HELD_OUT)
    assert {c for c, _ in HELD_OUT} < set(COLOURS) and {s for _, s in HELD_OUT} == set(SHAPES)  # one per kind
    train = captioned_shapes(400, seed=0, pairs=0.5)
    shown = {(s.colour, s.kind) for scene in train.scenes for s in scene}
    assert shown == set(SEEN)  # every seen combination occurs, no held-out one, alone or in a pair
    assert any(len(scene) == 2 for scene in train.scenes) and any(len(scene) == 1 for scene in train.scenes)
    held = captioned_shapes(100, seed=1, combos=HELD_OUT, pairs=0.0)
    assert {(s[0].colour, s[0].kind) for s in held.scenes} == set(HELD_OUT)
    assert all(len(scene) == 1 for scene in held.scenes)


def test_pairs_stand_side_by_side_or_one_above_the_other():
    data = captioned_shapes(60, seed=2, pairs=1.0)
    for a, b in data.scenes:
        assert (a.place, b.place) in {("left", "right"), ("top", "bottom")} and (a.colour, a.kind) != (b.colour,
                                                                                                        b.kind)
    assert data.labels.tolist() == [-1] * 60


def test_captions_describe_the_scene():
    one = (Shape("red", "circle", "small", "left"),)
    assert caption(one) == "a small red circle on the left"
    assert [caption(one, t) for t in range(len(ONE_SHAPE_TEMPLATES))] == [
        "a small red circle on the left", "a red circle on the left", "a small red circle", "a red circle",
        "a photo of a red circle", "a small circle on the left", "a red shape on the left"]
    two = (Shape("blue", "square", "large", "top"), Shape("white", "cross", "small", "bottom"))
    assert [caption(two, t) for t in range(len(TWO_SHAPE_TEMPLATES))] == [
        "a large blue square at the top and a small white cross at the bottom", "a blue square and a white cross",
        "a white cross and a blue square", "a blue square above a white cross"]
    data = captioned_shapes(40, seed=5)
    assert data.captions() == [caption(s) for s in data.scenes]
    first = data.random_captions(range(40), np.random.default_rng(0))
    assert first == data.random_captions(torch.arange(40), np.random.default_rng(0))  # reproducible
    assert len(set(first)) > 20 and first != data.captions()  # several templates are used
    for scene, text in zip(data.scenes, first):
        named = set(text.split())
        assert named & set(COLOURS) <= {s.colour for s in scene} and named & set(SHAPES) <= {s.kind for s in scene}


def test_labels_and_pixels():
    data = captioned_shapes(30, seed=6, pairs=0.3)
    for scene, label in zip(data.scenes, data.labels.tolist()):
        assert label == (CLASSES.index(scene[0].name) if len(scene) == 1 else -1)
    x = data.pixels()
    assert x.shape == (30, 3, 32, 32) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(data.pixels([2, 5]), x[[2, 5]])
    assert len(data) == 30 and isinstance(data, CaptionedShapes)


@pytest.mark.parametrize("kind", SHAPES)
def test_draw_puts_the_colour_at_the_place_and_the_kinds_differ(kind):
    image = draw((Shape("green", kind, "large", "middle"),), size=64)
    assert image.shape == (64, 64, 3) and 0 <= image.min() and image.max() <= 1
    centre = image[30:34, 30:34].reshape(-1, 3).mean(0)
    np.testing.assert_allclose(centre, COLOURS["green"], atol=0.1)  # the middle is green
    assert image[:6, :6].mean() < 0.3  # the corner is background
    masks = {k: draw((Shape("green", k, "large", "middle"),), size=64).sum(-1) > 1.0 for k in SHAPES}
    for other in SHAPES:
        if other != kind:
            assert (masks[kind] != masks[other]).sum() > 40, (kind, other)  # different outlines
    left = draw((Shape("red", kind, "small", "left"),), size=64)
    assert left[:, :24, 0].sum() > left[:, 40:, 0].sum() + 20  # the red shape is on the left


def test_bad_input_is_rejected_with_a_reason():
    with pytest.raises(ValueError, match="unknown colour 'pink'"):
        Shape("pink", "circle", "small", "left")
    with pytest.raises(ValueError, match="unknown kind 'star'"):
        Shape("red", "star", "small", "left")
    with pytest.raises(ValueError, match=r"template must be an int in \[0, 7\)"):
        caption((Shape("red", "circle", "small", "left"),), 7)
    with pytest.raises(ValueError, match="left/right or top/bottom"):
        caption((Shape("red", "circle", "small", "right"), Shape("blue", "square", "small", "left")))
    with pytest.raises(ValueError, match="one or two shapes"):
        caption(())
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        captioned_shapes(-1)
    with pytest.raises(ValueError, match="size must be an int ≥ 8"):
        captioned_shapes(2, size=4)
    with pytest.raises(ValueError, match=r"pairs is a probability in \[0, 1\]"):
        captioned_shapes(2, pairs=1.5)
    with pytest.raises(ValueError, match=r"combos must be \(colour, shape\) pairs"):
        captioned_shapes(2, combos=[("red", "star")])
    with pytest.raises(ValueError, match="a pair needs two distinct combinations"):
        captioned_shapes(2, combos=[("red", "circle")], pairs=0.5)
    with pytest.raises(ValueError, match="non-empty sequence of Shape"):
        draw([("red", "circle")])
    assert set(SIZES) == {"small", "large"} and len(PLACES) == 5


def test_signed_distances_by_hand():
    from utils.shapes import _distance
    r = 10.0
    d = lambda kind, x, y: float(_distance(kind, np.array([x]), np.array([y]), r)[0])  # noqa: E731
    # square of half-side 0.85 r
    assert d("square", 0, 0) == pytest.approx(-8.5) and d("square", 20, 0) == pytest.approx(11.5)
    assert d("square", 3, -12) == pytest.approx(3.5)
    # equilateral triangle pointing up (y grows downwards), circumradius R = 1.2 r = 12: its three vertices
    # (0, -R), (±R√3/2, R/2) lie on the outline, its centre is the inradius R/2 = 6 inside
    R = 12.0
    for x, y in [(0, -R), (R * np.sqrt(3) / 2, R / 2), (-R * np.sqrt(3) / 2, R / 2), (0, R / 2)]:
        assert d("triangle", x, y) == pytest.approx(0, abs=1e-9), (x, y)
    assert d("triangle", 0, 0) == pytest.approx(-6) and d("triangle", 0, 10) == pytest.approx(4)
    assert d("triangle", 10, 0) == pytest.approx(10 * np.sqrt(3) / 2 - 6)  # beyond the right side: its normal
    # plus sign: bars of half-length r = 10 and half-width 0.35 r = 3.5
    assert d("cross", 0, 0) == pytest.approx(-3.5)
    for x, y in [(10, 0), (-10, 0), (0, 10), (0, -10), (5, 3.5), (3.5, 5)]:  # bar tips and bar edges
        assert d("cross", x, y) == pytest.approx(0, abs=1e-9), (x, y)
    assert d("cross", 5, 5) == pytest.approx(1.5)  # in the notch between the bars
    assert d("circle", 6, 8) == pytest.approx(0) and d("circle", 0, 0) == pytest.approx(-10)


def _replay(scene, S, seed):
    """The module docstring's drawing model written out for circles: background u + N(0, 0.03²) with
    u ~ U(0.05, 0.2); per shape, place ± 0.05 (± 0.03 in a pair) of the side, radius × (1 ± 0.08),
    colour ± 0.07 clipped to [0, 1]; pixel centres at (i + 0.5); cover = clip(0.5 - (|p - c| - r), 0, 1)."""
    g = np.random.default_rng(seed)
    image = np.repeat(g.uniform(0.05, 0.2) + g.normal(0.0, 0.03, (S, S, 1)), 3, axis=2)
    ys, xs = np.indices((S, S)) + 0.5
    j = 0.05 if len(scene) == 1 else 0.03
    for s in scene:
        (px, py), _ = PLACES[s.place]
        cx, cy = (px + g.uniform(-j, j)) * S, (py + g.uniform(-j, j)) * S
        r = SIZES[s.size] * (1 + g.uniform(-0.08, 0.08)) * S
        colour = np.clip(np.array(COLOURS[s.colour]) + g.uniform(-0.07, 0.07, 3), 0, 1)
        cover = np.clip(0.5 - (np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2) - r), 0, 1)[..., None]
        image = image * (1 - cover) + colour * cover
    return np.clip(image, 0, 1)


@pytest.mark.parametrize("seed", range(6))
def test_draw_follows_the_documented_model(seed):
    one = (Shape("orange", "circle", "large", "left"),)  # orange has a channel at 1.0: the colour clip matters
    pair = (Shape("orange", "circle", "small", "top"), Shape("cyan", "circle", "large", "bottom"))
    for scene in (one, pair):
        np.testing.assert_allclose(draw(scene, 24, np.random.default_rng(seed)), _replay(scene, 24, seed),
                                   rtol=0, atol=1e-12)
    assert draw(one).shape == (32, 32, 3)  # 32 pixels by default
    np.testing.assert_allclose(draw(one), _replay(one, 32, 0), rtol=0, atol=1e-12)  # default: seeded with 0


def test_sizes_and_counts_at_their_bounds():
    assert draw((Shape("red", "circle", "small", "left"),), size=8).shape == (8, 8, 3)  # 8 is allowed
    for bad in (8.5, True, 7):
        with pytest.raises(ValueError, match="size must be an int"):
            draw((Shape("red", "circle", "small", "left"),), size=bad)
    empty = captioned_shapes(0)
    assert empty.images.shape == (0, 3, 32, 32) and len(empty) == 0
    for bad in (True, 1.5):
        with pytest.raises(ValueError, match="n must be a non-negative int"):
            captioned_shapes(bad)
    with pytest.raises(ValueError, match="combos must be"):
        captioned_shapes(2, combos=[("pink", "circle")])
    with pytest.raises(ValueError, match="combos must be"):
        captioned_shapes(2, combos=[("red", "circle", "x")])


def test_one_combination_without_pairs_and_two_with_them():
    only = captioned_shapes(5, seed=1, combos=[("red", "circle")], pairs=0.0)
    assert all(s[0].name == "red circle" for s in only.scenes)
    # the same scene drawn twice still differs: every image is drawn with the dataset's generator
    assert len({tuple(img.flatten().tolist()) for img in only.images}) == 5
    assert only.captions(3) == ["a red circle"] * 5
    assert only.captions(2) == [f"a {s[0].size} red circle" for s in only.scenes]
    two = captioned_shapes(200, seed=2, combos=[("red", "circle"), ("blue", "cross")], pairs=1.0)
    assert all({a.name, b.name} == {"red circle", "blue cross"} for a, b in two.scenes)
    side = np.mean([a.place == "left" for a, _ in two.scenes])
    assert 0.4 < side < 0.6  # left/right and top/bottom about equally often


def test_dataset_pixels_are_the_drawn_image_times_255():
    data = captioned_shapes(1, seed=7, combos=[("green", "circle")], pairs=0.0)
    g = np.random.default_rng(7)  # what captioned_shapes draws first: the pair coin, the combo, size, place
    g.random(), g.integers(1)
    size, place = list(SIZES)[g.integers(2)], list(PLACES)[g.integers(5)]
    assert data.scenes[0] == (Shape("green", "circle", size, place),)
    expected = np.round(draw(data.scenes[0], 32, g) * 255).astype(np.uint8)  # (S, S, 3)
    assert torch.equal(data.images[0], torch.from_numpy(expected).permute(2, 0, 1))


def test_pixels_map_0_255_to_minus_1_plus_1_and_left_of_captions():
    data = CaptionedShapes(torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1), [])
    torch.testing.assert_close(data.pixels().flatten(), torch.tensor([-1.0, -0.6, 1.0]))
    pair = (Shape("red", "circle", "small", "left"), Shape("blue", "cross", "large", "right"))
    assert caption(pair, 3) == "a red circle left of a blue cross"


def test_captioned_shapes_default_seed_is_zero():
    """captioned_shapes(n) is captioned_shapes(n, seed=0): the chapters' data sets depend on it."""
    a, b, c = captioned_shapes(6), captioned_shapes(6, seed=0), captioned_shapes(6, seed=1)
    assert torch.equal(a.images, b.images) and a.scenes == b.scenes
    assert not torch.equal(a.images, c.images)
