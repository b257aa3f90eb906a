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
