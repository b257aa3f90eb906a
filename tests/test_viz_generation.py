"""Tests of utils.viz.generation (chapter 12's explorers): every view is drawn up front and switched in the
browser, each control changes what is shown and changing it back shows the first view again, the pictures
hold the given images (enlarged by a whole factor, clamped to [-1, 1]) on a white margin, every picture says
what it shows, the same input gives the same bytes, and bad input is refused with the problem named."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from explorers import controls_of, on_the_page
from utils import viz
from utils.viz import generation


def pictures_in(box):
    """Every Image widget, on every page (shown or not)."""
    import ipywidgets as widgets

    found = []

    def walk(w):
        if isinstance(w, widgets.Image):
            found.append(w)
        for child in getattr(w, "children", ()):
            walk(child)

    walk(box)
    return list(dict.fromkeys(found))


def shown(box):
    """(the texts, the one picture) a view shows."""
    parts = on_the_page(box)
    pngs = [p for p in parts if isinstance(p, bytes)]
    assert len(pngs) == 1 and pngs[0][:8] == b"\x89PNG\r\n\x1a\n"
    return " ".join(p for p in parts if isinstance(p, str)), pngs[0]


def rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def count(pixels: np.ndarray, colour) -> int:
    return int((pixels == np.array(colour, dtype=np.uint8)).all(-1).sum())


def solid(colours, H=8, W=8) -> torch.Tensor:
    """Images (n, 3, H, W) in [-1, 1], image i filled with colours[i] (RGB in 0..255)."""
    c = torch.tensor(colours, dtype=torch.float64) / 127.5 - 1  # (n, 3)
    return c[:, :, None, None].expand(-1, -1, H, W).clone()


def as255(x: float) -> int:
    return int(np.round((np.clip(x, -1, 1) + 1) * 127.5))


def check_alt(box, *must):
    alts = [p.tooltip for p in pictures_in(box)]
    assert alts
    for alt in alts:
        assert alt and len(alt) > 30 and not re.search(r"\.(png|jpe?g|svg)\b|_images/", alt), alt
        for word in must:
            assert word in alt, (word, alt)
    assert len(set(alts)) == len(alts), "two views described the same"
    return alts


# ---------------------------------------------------------------------------------------------- generation_explorer

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


def toy_views():
    """Two captions × three scales; every view a different set of colours (n = 2 or 3)."""
    palette = [(10 * i, 255 - 10 * i, 60 + 7 * i) for i in range(30)]
    views = {"a red circle": [solid(palette[0:2]), solid(palette[2:4]), solid(palette[4:6])],
             "a blue cross": [solid(palette[6:9]), solid(palette[9:12]), solid(palette[12:15])]}
    notes = {"a red circle": ["0 of 2 match", "1 of 2 match", "2 of 2 match"]}
    return views, [1.0, 3.0, 5.0], notes, palette


def test_generation_explorer_switches_caption_and_scale_in_the_browser():
    import ipywidgets as widgets

    views, scales, notes, palette = toy_views()
    box = viz.generation_explorer(views, scales, notes=notes)
    c = controls_of(box)
    caption, scale = c["caption"], c["guidance s"]
    assert isinstance(caption, widgets.Dropdown) and caption.options == ("a red circle", "a blue cross")
    assert isinstance(scale, widgets.SelectionSlider) and scale.options == (("1", 1.0), ("3", 3.0), ("5", 5.0))
    assert scale.value == 3.0  # the middle scale by default
    assert all(isinstance(link, widgets.widget_link.Link) for link in box.links)
    assert {(link.source[0], link.source[1]) for link in box.links} >= {(caption, "index"), (scale, "index")}
    first = shown(box)
    assert "“a red circle”" in first[0] and "s = 3" in first[0] and "1 of 2 match" in first[0]
    pixels = rgb(first[1])
    assert count(pixels, palette[2]) == count(pixels, palette[3]) == 8 * 8 * 12 ** 2  # 8 px → 96 px (× 12)
    assert count(pixels, palette[0]) == 0
    seen = {first}
    for control, value, expect, colour in [(scale, 5.0, "2 of 2 match", palette[4]),
                                           (caption, "a blue cross", "“a blue cross”", palette[12]),
                                           (scale, 1.0, "s = 1", palette[6])]:
        control.value = value
        view = shown(box)
        assert expect in view[0] and view not in seen, (value, view[0])
        assert count(rgb(view[1]), colour) == 8 * 8 * 12 ** 2
        seen.add(view)
    assert "match" not in shown(box)[0]  # a caption without notes shows none
    caption.value, scale.value = "a red circle", 3.0
    assert shown(box) == first  # back to the first view


def test_generation_explorer_draws_a_row_of_enlarged_samples_on_a_white_margin():
    views = {"four": [solid([RED, GREEN, BLUE, YELLOW], H=32, W=32)]}
    png = shown(viz.generation_explorer(views, [2.0]))[1]
    pixels = rgb(png)
    k, m, gap = 3, generation.MARGIN, generation.GAP  # 32 px → 96 px
    assert pixels.shape == (96 + 2 * m, 4 * 96 + 3 * gap + 2 * m, 3)
    for i, colour in enumerate([RED, GREEN, BLUE, YELLOW]):
        x0 = m + i * (32 * k + gap)
        block = pixels[m:m + 96, x0:x0 + 96]
        assert (block == colour).all(), i
    assert (pixels[:m] == 255).all() and (pixels[:, :m] == 255).all() and (pixels[-m:] == 255).all()
    assert (pixels[m:m + 96, m + 96:m + 96 + gap] == 255).all()  # the white gap between two samples
    quarters = solid([RED], H=32, W=32)  # red, green, blue, yellow quarters: the picture keeps up and left
    for (rows, cols), colour in zip([(slice(0, 16), slice(16, 32)), (slice(16, 32), slice(0, 16)),
                                     (slice(16, 32), slice(16, 32))], [GREEN, BLUE, YELLOW]):
        quarters[0, :, rows, cols] = torch.tensor(colour)[:, None, None] / 127.5 - 1
    pixels = rgb(shown(viz.generation_explorer({"quarters": [quarters]}, [1.0]))[1])
    assert [tuple(pixels[m + y, m + x]) for y, x in [(5, 5), (5, 90), (90, 5), (90, 90)]] == [RED, GREEN, BLUE, YELLOW]
    # more than 8 samples wrap into rows of 8; values outside [-1, 1] are clamped, not wrapped around
    many = solid([(i * 20, 0, 0) for i in range(10)], H=32, W=32)
    many[9] = 3.0
    pixels = rgb(shown(viz.generation_explorer({"ten": [many]}, [1.0]))[1])
    assert pixels.shape == (2 * 96 + gap + 2 * m, 8 * 96 + 7 * gap + 2 * m, 3)
    assert (pixels[m + 96 + gap + 5, m + 96 + gap + 5] == 255).all()  # sample 9 (all 3.0): white, second row


def test_generation_explorer_takes_one_tensor_per_caption_and_says_what_each_picture_shows():
    stacked = torch.stack([solid([RED, GREEN]), solid([BLUE, YELLOW])])  # (scales, n, 3, H, W)
    box = viz.generation_explorer({"a red circle": stacked, "a cross": stacked.flip(0)}, [0, 2],
                                  notes={"a cross": ["x", "2 of 2 match"]}, default_scale=0, title="DiT samples")
    assert controls_of(box)["guidance s"].value == 0
    alts = check_alt(box, "DiT samples", "2 images generated for the caption")
    assert any("“a cross” at guidance scale s = 2" in a and a.endswith("; 2 of 2 match.") for a in alts), alts
    assert any("“a red circle” at guidance scale s = 0, in a row, each 8×8 pixels shown 12 times larger." in a
               for a in alts), alts


def test_generation_explorer_views_are_deterministic():
    views, scales, notes, _ = toy_views()
    a = [p.value for p in pictures_in(viz.generation_explorer(views, scales, notes=notes))]
    b = [p.value for p in pictures_in(viz.generation_explorer(views, scales, notes=notes))]
    assert len(a) == 6 and a == b and len(set(a)) == 6


def test_generation_explorer_rejects_bad_input():
    views, scales, notes, _ = toy_views()
    with pytest.raises(ValueError, match="views is empty"):
        viz.generation_explorer({}, scales)
    with pytest.raises(ValueError, match="scales is empty"):
        viz.generation_explorer(views, [])
    with pytest.raises(ValueError, match=r"has 3 entries but there are 2 scales"):
        viz.generation_explorer(views, [1.0, 3.0])
    with pytest.raises(ValueError, match="distinct"):
        viz.generation_explorer(views, [1.0, 1.0, 3.0])
    with pytest.raises(ValueError, match="default_scale 2 is not one of scales"):
        viz.generation_explorer(views, scales, default_scale=2)
    with pytest.raises(ValueError, match=r"views\['a red circle'\]\[1\] \(scale 3\) must be images \(n, 3, H, W\).*"
                                         r"got shape \(3, 8, 8\); for one image use x\[None\]"):
        viz.generation_explorer({"a red circle": [solid([RED]), solid([RED])[0], solid([RED])]}, scales)
    with pytest.raises(ValueError, match=r"must be images \(n, 3, H, W\)"):
        viz.generation_explorer({"grey": [torch.zeros(2, 1, 8, 8)] * 3}, scales)
    with pytest.raises(ValueError, match="NaN or infinite"):
        viz.generation_explorer({"nan": [torch.full((1, 3, 8, 8), float("nan"))] * 3}, scales)
    with pytest.raises(ValueError, match=r"notes for captions that have no views: \['a green square'\]"):
        viz.generation_explorer(views, scales, notes={"a green square": ["a", "b", "c"]})
    with pytest.raises(ValueError, match=r"notes\['a red circle'\] must hold one text per scale \(3\)"):
        viz.generation_explorer(views, scales, notes={"a red circle": ["a", "b"]})


# ---------------------------------------------------------------------------------------------- denoising_explorer

def trajectory(S=3, n=2):
    """x_t and x̂_0 (S, n, 3, 8, 8): at step i, x_t is a solid colour per caption and x̂_0 another."""
    xt = torch.stack([solid([(40 * i + 10, 20 * j, 200) for j in range(n)]) for i in range(S)])
    x0 = torch.stack([solid([(200, 40 * i + 10, 30 * j) for j in range(n)]) for i in range(S)])
    return xt, x0


def test_denoising_explorer_steps_through_the_sampler_in_the_browser():
    import ipywidgets as widgets

    xt, x0 = trajectory()
    box = viz.denoising_explorer(xt, x0, [900, 500, 100], ["a red circle", "a small blue cross at the top"])
    step = controls_of(box)["step"]
    assert isinstance(step, widgets.SelectionSlider) and step.index == 0
    assert step.options == (("1", 0), ("2", 1), ("3", 2))
    first = shown(box)
    assert "step 1 of 3" in first[0] and "t = 900" in first[0]
    pixels = rgb(first[1])
    area = 8 * 8 * 12 ** 2  # each 8-pixel image shown 12 times larger
    for j in range(2):  # both captions' x_t and x̂_0 of step 1, each whole, none of step 2
        assert count(pixels, (10, 20 * j, 200)) == area and count(pixels, (200, 10, 30 * j)) == area
        assert count(pixels, (50, 20 * j, 200)) == 0
    rows_xt = np.nonzero((pixels == (10, 0, 200)).all(-1).any(1))[0]
    rows_x0 = np.nonzero((pixels == (200, 10, 0)).all(-1).any(1))[0]
    assert rows_xt.max() < rows_x0.min()  # x_t above the prediction
    step.value = 2
    view = shown(box)
    assert "step 3 of 3" in view[0] and "t = 100" in view[0] and view[1] != first[1]
    assert count(rgb(view[1]), (90, 20, 200)) == area
    step.value = 0
    assert shown(box) == first
    alts = check_alt(box, "step", "one column per caption (a red circle; a small blue cross at the top)", "x_t")
    assert "step 2 of 3 (t = 500)" in alts[1]


def test_denoising_explorer_clamps_noise_labels_the_rows_and_is_deterministic():
    xt, x0 = trajectory(S=2, n=1)
    xt[0] = 5.0  # pure noise beyond [-1, 1]: clamped to white, not wrapped
    a = viz.denoising_explorer(xt, x0, torch.tensor([999, 0]), ["a caption"])
    b = viz.denoising_explorer(xt, x0, torch.tensor([999, 0]), ["a caption"])
    assert [p.value for p in pictures_in(a)] == [p.value for p in pictures_in(b)]
    pixels = rgb(pictures_in(a)[0].value)
    assert count(pixels, (200, 10, 0)) == 8 * 8 * 12 ** 2 and count(pixels, (10, 0, 200)) == 0
    text_rows = np.nonzero((pixels < 100).all(-1).any(1))[0]  # dark text: the caption and the two row labels
    assert len(text_rows) > 20 and text_rows.min() < np.nonzero((pixels == (200, 10, 0)).all(-1).any(1))[0].min()
    # the label widens the picture when the columns are narrower than it
    assert pixels.shape[1] > 96 + 2 * generation.MARGIN


def test_denoising_explorer_rejects_bad_input():
    xt, x0 = trajectory()
    caps = ["a", "b"]
    with pytest.raises(ValueError, match=r"x_t must be images \(S, n, 3, H, W\)"):
        viz.denoising_explorer(xt[0], x0, [3, 2, 1], caps)
    with pytest.raises(ValueError, match="but x0_pred"):
        viz.denoising_explorer(xt, x0[:2], [3, 2, 1], caps)
    with pytest.raises(ValueError, match="timesteps has 2 entries but x_t has S = 3 steps"):
        viz.denoising_explorer(xt, x0, [3, 2], caps)
    with pytest.raises(ValueError, match="timesteps must be ints"):
        viz.denoising_explorer(xt, x0, [3, 2.5, 1], caps)
    with pytest.raises(ValueError, match="captions has 1 captions but there are 2 columns"):
        viz.denoising_explorer(xt, x0, [3, 2, 1], ["a"])
    with pytest.raises(ValueError, match="not one string"):
        viz.denoising_explorer(xt, x0, [3, 2, 1], "ab")


# ---------------------------------------------------------------------------------------------- code_grid_explorer

def code_views(N=3):
    images = solid([(30 * i, 100, 200) for i in range(N)], H=16, W=16)
    recons = solid([(200, 30 * i, 100) for i in range(N)], H=16, W=16)
    codes = torch.arange(N * 16).reshape(N, 4, 4) * 7
    return images, codes, recons


def test_code_grid_explorer_shows_each_image_its_codes_and_its_reconstruction():
    import ipywidgets as widgets

    images, codes, recons = code_views()
    box = viz.code_grid_explorer(images, codes, recons, ["a red circle", "a blue cross", "a red circle"])
    menu = controls_of(box)["image"]
    assert isinstance(menu, widgets.Dropdown)
    assert menu.options == ("a red circle", "a blue cross", "a red circle (#2)")  # a repeat gets its number
    first = shown(box)
    mse = float(((images[0] - recons[0]) ** 2).mean())
    assert "“a red circle”" in first[0] and "16 codes, 16 distinct" in first[0] and f"{mse:.4f}" in first[0]
    pixels = rgb(first[1])
    k, m = 16, generation.MARGIN  # 16 px → 256 px
    assert pixels.shape[1] == 2 * 16 * k + 24 + 2 * m
    right = pixels[-m - 256:-m, -m - 256:-m]
    assert (right == (200, 0, 100)).all()  # the reconstruction, whole and untouched
    left = pixels[-m - 256:-m, m:m + 256]
    assert count(left, (0, 100, 200)) > 0.6 * 256 ** 2  # the image under its grid and numbers
    assert (left[:, 64] != (0, 100, 200)).any(-1).all() and (left[:, 40] == (0, 100, 200)).all(-1).any()  # a line
    for value, expect in [("a blue cross", "“a blue cross”"), ("a red circle (#2)", "“a red circle”")]:
        menu.value = value
        view = shown(box)
        assert expect in view[0] and view[1] != first[1]
    menu.value = "a red circle"
    assert shown(box) == first
    alts = check_alt(box, "4×4 grid", "code id", "decoder")
    assert "(row by row: 0, 7, 14, 21, 28," in alts[0] and "(row by row: 112, 119," in alts[1]


def test_code_grid_explorer_writes_each_code_in_its_own_cell():
    """Cell (row 0, column 1) carries code C[0, 1]: it looks as cell (0, 0) does when that cell holds the code."""
    images, codes, recons = code_views(1)
    codes[0, 0, 1], codes[0, 1, 0], codes[0, 0, 0] = 7, 9, 3
    moved = codes.clone()
    moved[0, 0, 0] = 7
    m, cw = generation.MARGIN, 64  # a 4×4 grid on 256 pixels

    label_h = int(14 * 1.3) + 4
    a = viz.code_grid_explorer(images, codes, recons, ["x"])
    b = viz.code_grid_explorer(images, moved, recons, ["x"])
    pa = rgb(pictures_in(a)[0].value)[m + label_h:, m:].astype(int)
    pb = rgb(pictures_in(b)[0].value)[m + label_h:, m:].astype(int)
    seven = pb[2:24, 2:cw - 2]  # (the palette may move a shade of the anti-aliased text by a step or two)
    assert np.abs(pa[2:24, cw + 2:2 * cw - 2] - seven).max() <= 8  # 7 in (0, 1) as in (0, 0)
    assert np.abs(pa[2:24, 2:cw - 2] - seven).max() > 100  # 3 is not 7
    assert np.abs(pa[cw + 2:cw + 24, 2:cw - 2] - seven).max() > 100  # 9 in (1, 0) is not 7


def test_code_grid_explorer_is_deterministic_and_takes_numpy():
    images, codes, recons = code_views(2)
    a = viz.code_grid_explorer(images, codes, recons, ["x", "y"])
    b = viz.code_grid_explorer(images.numpy(), codes.numpy(), recons.numpy(), ["x", "y"])
    assert [p.value for p in pictures_in(a)] == [p.value for p in pictures_in(b)]


def test_code_grid_explorer_rejects_bad_input():
    images, codes, recons = code_views()
    caps = ["a", "b", "c"]
    with pytest.raises(ValueError, match="recons has shape"):
        viz.code_grid_explorer(images, codes, recons[:2], caps)
    with pytest.raises(ValueError, match=r"codes must have shape \(N=3, G, G\)"):
        viz.code_grid_explorer(images, codes.flatten(1), recons, caps)
    with pytest.raises(ValueError, match="does not divide the 16×16-pixel images"):
        viz.code_grid_explorer(images, torch.zeros(3, 3, 3, dtype=torch.long), recons, caps)
    with pytest.raises(ValueError, match="integer code ids"):
        viz.code_grid_explorer(images, codes + 0.5, recons, caps)
    with pytest.raises(ValueError, match="code ids ≥ 0"):
        viz.code_grid_explorer(images, codes - 1, recons, caps)
    with pytest.raises(ValueError, match="captions has 2 captions but there are 3 images"):
        viz.code_grid_explorer(images, codes, recons, caps[:2])
    with pytest.raises(ValueError, match=r"images must be images \(N, 3, H, W\)"):
        viz.code_grid_explorer(images[:, :1], codes, recons[:, :1], caps)
