"""The explorers of chapter 12 (text to image): what a generator draws for a caption at each guidance scale
(`generation_explorer`), what a diffusion sampler holds and predicts at each of its steps
(`denoising_explorer`), and how a VQ-VAE reads an image as a grid of codes (`code_grid_explorer`).

Every view is drawn up front and switched in the browser (pages in Stacks linked to the controls with
`jslink`, as every explorer in `explorers.py`), so the controls work on the static website. The pictures are
composed pixel by pixel with PIL (no matplotlib figure): each image is enlarged by a whole factor (nearest
neighbour, so a 32-pixel image stays crisp and its PNG stays small) and set on white with a white margin, so
in dark mode it sits on a light card like every figure of the book; the labels drawn into a picture are dark
grey on white (DejaVu Sans, the font matplotlib ships).

Images come as (n, 3, H, W) tensors or arrays in [-1, 1], the range the chapter's models work in; values
outside are clamped for display (a sampler's x_t is noise of standard deviation 1 at the start).
"""
from __future__ import annotations

import functools
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .explorers import _Examples, _picture, _switched
from .figures import _to_numpy

__all__ = ["generation_explorer", "denoising_explorer", "code_grid_explorer"]

INK = (26, 26, 26)  # text drawn into a picture: #1a1a1a on white, as the explorers' text in dark mode
PAPER = (255, 255, 255)
MARGIN = 8  # white around every picture: its frame stays light on a dark page
GAP = 2  # white between images
PER_ROW = 8  # samples per row of a grid


# ---------------------------------------------------------------------------------------------- pictures

def _batch(x: Any, name: str, ndim: int = 4, layout: str = "(n, 3, H, W)") -> np.ndarray:
    """x as a float array of `ndim` dimensions whose third-from-last is 3 (RGB, channels first), finite."""
    data = _to_numpy(x, name)
    if data.ndim != ndim or data.shape[-3] != 3 or 0 in data.shape:
        hint = "; for one image use x[None]" if data.ndim == ndim - 1 else ""
        raise ValueError(f"{name} must be images {layout} in [-1, 1] (RGB, channels first), got shape "
                         f"{tuple(data.shape)}{hint}")
    if not np.isfinite(data).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return data


def _rgb8(images: np.ndarray) -> np.ndarray:
    """Images (..., 3, H, W) in [-1, 1] (clamped) → uint8 (..., H, W, 3)."""
    x = (np.clip(images, -1.0, 1.0) + 1.0) * 127.5
    return np.moveaxis(np.round(x).astype(np.uint8), -3, -1)


def _factor(side: int, pixels: int) -> int:
    """The whole enlargement that brings `side` pixels to at most `pixels` (at least 1)."""
    return max(1, pixels // side)


def _enlarge(image: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(image, k, axis=0), k, axis=1)  # (H k, W k, 3), nearest neighbour


@functools.lru_cache(maxsize=4)
def _font(size: int) -> Any:
    """DejaVu Sans (matplotlib ships it, so every machine draws the same letters) at `size` pixels."""
    from matplotlib import font_manager
    from PIL import ImageFont

    return ImageFont.truetype(font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans")), size)


def _text_width(text: str, size: int) -> int:
    return int(np.ceil(_font(size).getlength(text)))


def _wrap(text: str, width: int, size: int, max_lines: int = 3) -> list[str]:
    """`text` in lines of at most `width` pixels (words kept whole unless one is wider), at most `max_lines`."""
    lines: list[str] = []
    for word in text.split():
        if lines and _text_width(lines[-1] + " " + word, size) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        while lines[-1] and _text_width(lines[-1] + "…", size) > width:
            lines[-1] = lines[-1][:-1]
        lines[-1] += "…"
    return lines or [""]


def _png(canvas: Any) -> bytes:
    """A PIL image as PNG bytes: with a 256-colour palette when that is smaller, as `explorers._small_png` does
    (lossless up to 256 colours; beyond, the same to the eye for these pictures, and a sampler's noisy x_t
    takes half the bytes), else as RGB."""
    from PIL import Image

    rgb, palette = io.BytesIO(), io.BytesIO()
    canvas.save(rgb, format="png", optimize=True)
    canvas.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        palette, format="png", optimize=True)
    return palette.getvalue() if palette.tell() < rgb.tell() else rgb.getvalue()


def _row(images: np.ndarray, k: int, per_row: int = PER_ROW) -> np.ndarray:
    """uint8 images (n, H, W, 3), enlarged k times, in rows of `per_row` with GAP white pixels between."""
    n, H, W, _ = images.shape
    cols, rows = min(n, per_row), -(-n // per_row)
    out = np.full((rows * H * k + (rows - 1) * GAP, cols * W * k + (cols - 1) * GAP, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, per_row)
        y, x = r * (H * k + GAP), c * (W * k + GAP)
        out[y:y + H * k, x:x + W * k] = _enlarge(image, k)
    return out


def _on_paper(pixels: np.ndarray) -> bytes:
    """uint8 pixels (h, w, 3) as a PNG, on white with a MARGIN all round."""
    from PIL import Image

    canvas = Image.new("RGB", (pixels.shape[1] + 2 * MARGIN, pixels.shape[0] + 2 * MARGIN), PAPER)
    canvas.paste(Image.fromarray(pixels), (MARGIN, MARGIN))
    return _png(canvas)


def _check_captions(captions: Sequence[str], n: int, name: str, per: str) -> list[str]:
    if isinstance(captions, str):
        raise ValueError(f"{name} must be a sequence of strings, one per {per}, not one string")
    captions = [str(c) for c in captions]
    if len(captions) != n:
        raise ValueError(f"{name} has {len(captions)} captions but there are {n} {per}s; pass one caption per {per}")
    return captions


def _unique(labels: Sequence[str]) -> list[str]:
    """Menu labels: a caption that occurs again gets its number, so every entry can be chosen."""
    seen: dict[str, int] = {}
    out = []
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} (#{i})")
    return out


# ---------------------------------------------------------------------------------------------- samples × guidance

def generation_explorer(views: Mapping[str, Sequence[Any]], scales: Sequence[float],
                        notes: Mapping[str, Sequence[str]] | None = None, default_scale: float | None = None,
                        title: str = "samples for a caption") -> Any:
    """An explorer of a text-to-image model's samples: a caption menu × a guidance-scale slider.

    views:  {caption: per scale}, where views[caption][j] is the n samples drawn for that caption at guidance
            scale scales[j], a tensor or array (n, 3, H, W) in [-1, 1] (clamped for display); a tensor
            (len(scales), n, 3, H, W) per caption works too. n may differ between views.
    scales: the guidance scales s (distinct numbers), in the order of the slider.
    notes:  optional {caption: one short text per scale}, shown under the samples (e.g. "attribute reader:
            6 of 8 match"); captions without notes show none.
    default_scale: the scale shown first (default: the middle one of `scales`).
    Each view is one picture: the samples in a row (up to 8, then wrapped), each enlarged to 64-96 pixels
    (nearest neighbour), 2 white pixels apart. Every view is drawn up front, so both controls work on the
    static website. Returns an ipywidgets VBox (its `links` are the browser-side links).
    """
    import ipywidgets as widgets

    if not isinstance(views, Mapping) or not views:
        raise ValueError("views is empty: pass {caption: [samples (n, 3, H, W) at each scale]}")
    scales = [s for s in scales] if not isinstance(scales, (str, bytes)) else None
    if not scales:
        raise ValueError("scales is empty: pass the guidance scales the views were drawn at, e.g. [1, 3, 5]")
    try:
        scales = [float(s) for s in scales]
    except (TypeError, ValueError) as err:
        raise ValueError(f"scales must be numbers, got {scales!r}") from err
    if len(set(scales)) != len(scales) or not all(np.isfinite(scales)):
        raise ValueError(f"scales must be distinct finite numbers, got {scales}")
    if len({f"{s:g}" for s in scales}) != len(scales):
        raise ValueError(f"scales {scales} look the same when printed; round them apart")
    default_scale = scales[len(scales) // 2] if default_scale is None else float(default_scale)
    if default_scale not in scales:
        raise ValueError(f"default_scale {default_scale:g} is not one of scales {scales}")
    samples: dict[str, list[np.ndarray]] = {}
    for caption, per_scale in views.items():
        caption = str(caption)
        try:
            count = len(per_scale)
        except TypeError as err:
            raise ValueError(f"views[{caption!r}] must be a sequence of samples, one per scale") from err
        if count != len(scales):
            raise ValueError(f"views[{caption!r}] has {count} entries but there are {len(scales)} scales "
                             f"{scales}; pass one batch of samples (n, 3, H, W) per scale")
        samples[caption] = [_batch(per_scale[j], f"views[{caption!r}][{j}] (scale {scales[j]:g})")
                            for j in range(count)]
    notes = dict(notes or {})
    unknown = [c for c in notes if str(c) not in samples]
    if unknown:
        raise ValueError(f"notes for captions that have no views: {unknown}; views has {list(samples)}")
    texts: dict[str, list[str]] = {}
    for caption, per_scale in notes.items():
        if isinstance(per_scale, str) or len(per_scale) != len(scales):
            raise ValueError(f"notes[{caption!r}] must hold one text per scale ({len(scales)}), got "
                             f"{per_scale!r}")
        texts[str(caption)] = [str(t) for t in per_scale]

    scale = widgets.SelectionSlider(options=[(f"{s:g}", s) for s in scales], value=default_scale,
                                    description="guidance s", continuous_update=False,
                                    style={"description_width": "initial"})

    def page(caption: str, j: int) -> Any:
        x = samples[caption][j]
        n, _, H, W = x.shape
        k = _factor(max(H, W), 96)
        png = _on_paper(_row(_rgb8(x), k))
        rows = -(-n // PER_ROW)
        note = texts.get(caption, [""] * len(scales))[j]
        where = "in a row" if rows == 1 else f"in {rows} rows of up to {PER_ROW}"
        alt = (f"{title}: {n} images generated for the caption “{caption}” at guidance scale s = {scales[j]:g}, "
               f"{where}, each {H}×{W} pixels shown {k} times larger" + (f"; {note}" if note else "") + ".")
        head = (f"<b>“{html.escape(caption)}”</b> · guidance scale <b>s = {scales[j]:g}</b> · {n} samples"
                f" <span style='opacity:.7'>({html.escape(title)})</span>")
        parts = [widgets.HTML(head), _picture(png, alt=alt)]
        if note:
            parts.append(widgets.HTML(f"<div style='margin-top:2px'>{html.escape(note)}</div>"))
        return widgets.VBox(parts)

    chooser = _Examples(list(samples), str, [scale], page, "caption", free_text=False)
    box = widgets.VBox([*chooser.head(), scale, chooser.pages])
    box.links = chooser.links
    return box


# ---------------------------------------------------------------------------------------------- sampler steps

def denoising_explorer(x_t: Any, x0_pred: Any, timesteps: Sequence[int], captions: Sequence[str],
                       title: str = "what the sampler holds, step by step") -> Any:
    """An explorer of a diffusion sampler's steps: a slider over the S steps; each view shows, for the n
    captions (the columns, labelled at the top), what the sampler holds at that step (x_t) and the model's
    prediction of the clean image (x̂_0) from it.

    x_t, x0_pred: (S, n, 3, H, W) in [-1, 1] (clamped for display), step by step as the sampler ran (e.g.
    from `utils.diffusion.sample(..., return_trajectory=True)`, decoded to images if the sampler runs in a
    latent space); timesteps: the S timesteps t; captions: the n captions. Every step is drawn up front, so
    the slider works on the static website. Returns an ipywidgets VBox (its `links` are the browser links).
    """
    import ipywidgets as widgets

    xs = _batch(x_t, "x_t", 5, "(S, n, 3, H, W)")
    x0 = _batch(x0_pred, "x0_pred", 5, "(S, n, 3, H, W)")
    if xs.shape != x0.shape:
        raise ValueError(f"x_t has shape {xs.shape} but x0_pred {x0.shape}: they must match, (S, n, 3, H, W)")
    S, n, _, H, W = xs.shape
    if isinstance(timesteps, (str, bytes)):
        raise ValueError("timesteps must be a sequence of ints, one per step")
    ts = list(timesteps)
    if len(ts) != S:
        raise ValueError(f"timesteps has {len(ts)} entries but x_t has S = {S} steps; pass one timestep per step")
    try:
        whole = [not isinstance(t, bool) and float(t) == int(t) for t in ts]
    except (TypeError, ValueError):
        whole = [False]
    if not all(whole):
        raise ValueError(f"timesteps must be ints (the sampler's t at each step), got {ts}")
    ts = [int(t) for t in ts]
    captions = _check_captions(captions, n, "captions", "column")
    k = _factor(max(H, W), 96)
    col = W * k
    label_size, caption_size = 14, 12
    wrapped = [_wrap(c, col, caption_size, max_lines=5) for c in captions]
    lines = max(len(w) for w in wrapped)
    head_rows = []  # the captions over the columns, line by line
    for li in range(lines):
        for ci, w in enumerate(wrapped):
            if li < len(w):
                head_rows.append((li, ci, w[li]))
    step = widgets.SelectionSlider(options=[(str(i + 1), i) for i in range(S)], value=0, description="step",
                                   continuous_update=False)

    def page(i: int) -> Any:
        from PIL import Image, ImageDraw

        top_label = f"x_t (what the sampler holds at t = {ts[i]})"
        bottom_label = "the model's prediction of x_0"
        grid_w = n * col + (n - 1) * GAP
        inner = max(grid_w, _text_width(top_label, label_size), _text_width(bottom_label, label_size))
        line_h = int(caption_size * 1.3)
        label_h = int(label_size * 1.3) + 4
        heights = [lines * line_h + 6, label_h, H * k, 10, label_h, H * k]
        canvas = Image.new("RGB", (inner + 2 * MARGIN, sum(heights) + 2 * MARGIN), PAPER)
        draw = ImageDraw.Draw(canvas)
        y = MARGIN
        for li, ci, text in head_rows:
            draw.text((MARGIN + ci * (col + GAP), y + li * line_h), text, fill=INK, font=_font(caption_size))
        y += heights[0]
        for label, images, h_above in ((top_label, xs[i], 0), (bottom_label, x0[i], heights[3])):
            y += h_above
            draw.text((MARGIN, y), label, fill=INK, font=_font(label_size))
            y += label_h
            canvas.paste(Image.fromarray(_row(_rgb8(images), k, per_row=n)), (MARGIN, y))
            y += H * k
        png = _png(canvas)
        alt = (f"{title}, step {i + 1} of {S} (t = {ts[i]}): one column per caption ({'; '.join(captions)}); "
               f"top row, what the sampler holds (x_t); bottom row, the model's prediction of the clean image "
               f"(x_0) from it; {H}×{W}-pixel images shown {k} times larger.")
        head = (f"<b>step {i + 1} of {S}</b>: t = {ts[i]}"
                + (" (the noisiest)" if i == 0 else " (the last step)" if i == S - 1 else ""))
        return widgets.VBox([widgets.HTML(head), _picture(png, alt=alt)])

    links: list[Any] = []
    pages = _switched([step], page, links)
    box = widgets.VBox([widgets.HTML(f"<b>{html.escape(title)}</b>"), step, pages])
    box.links = links
    return box


# ---------------------------------------------------------------------------------------------- VQ-VAE codes

def code_grid_explorer(images: Any, codes: Any, recons: Any, captions: Sequence[str]) -> Any:
    """An explorer of a VQ-VAE's codes: a menu of images (by caption); each view shows the image, enlarged,
    with its G×G grid of codes drawn over it (the grid lines and each cell's code number), and beside it the
    image the decoder makes from those codes alone.

    images (N, 3, H, W) and recons (N, 3, H, W) in [-1, 1] (clamped for display); codes (N, G, G) integer
    code ids (G must divide H and W); captions: N strings (a caption that repeats gets its number in the
    menu). Every image is drawn up front, so the menu works on the static website. Returns an ipywidgets VBox
    (its `links` are the browser-side links).
    """
    import ipywidgets as widgets
    import torch

    x = _batch(images, "images", 4, "(N, 3, H, W)")
    r = _batch(recons, "recons", 4, "(N, 3, H, W)")
    if r.shape != x.shape:
        raise ValueError(f"recons has shape {r.shape} but images {x.shape}: one reconstruction per image, same size")
    is_int = (isinstance(codes, torch.Tensor) and not codes.is_floating_point() and not codes.is_complex()) or \
        (isinstance(codes, np.ndarray) and np.issubdtype(codes.dtype, np.integer))
    c = _to_numpy(codes, "codes")
    if not is_int and not (np.isfinite(c).all() and np.equal(np.round(c), c).all()):
        raise ValueError("codes must be integer code ids (N, G, G), e.g. the VQ-VAE's indices, got non-integers")
    N, _, H, W = x.shape
    if c.ndim != 3 or c.shape[0] != N or c.shape[1] != c.shape[2]:
        raise ValueError(f"codes must have shape (N={N}, G, G), one square grid per image, got {tuple(c.shape)}")
    G = c.shape[1]
    if G == 0 or H % G or W % G:
        raise ValueError(f"a {G}×{G} grid of codes does not divide the {H}×{W}-pixel images; G must divide H and W")
    if (c < 0).any():
        raise ValueError(f"codes must be code ids ≥ 0, got {int(c.min())}")
    c = c.astype(np.int64)
    captions = _check_captions(captions, N, "captions", "image")
    names = _unique(captions)
    k = _factor(max(H, W), 256)
    ch, cw = H // G * k, W // G * k  # a cell in display pixels
    number_size = max(9, min(16, cw // 3))
    panel_gap = 24

    def page(i: int) -> Any:
        from PIL import Image, ImageDraw

        left = Image.fromarray(_enlarge(_rgb8(x[i]), k))
        overlay = Image.new("RGBA", left.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        for g in range(1, G):  # the grid lines, white over dark images and light alike (a dark edge beside)
            draw.line([(g * cw, 0), (g * cw, H * k)], fill=(255, 255, 255, 200), width=1)
            draw.line([(g * cw - 1, 0), (g * cw - 1, H * k)], fill=(0, 0, 0, 120), width=1)
            draw.line([(0, g * ch), (W * k, g * ch)], fill=(255, 255, 255, 200), width=1)
            draw.line([(0, g * ch - 1), (W * k, g * ch - 1)], fill=(0, 0, 0, 120), width=1)
        font = _font(number_size)
        for gy in range(G):
            for gx in range(G):
                text = str(c[i, gy, gx])
                x0, y0 = gx * cw + 3, gy * ch + 3
                box = draw.textbbox((x0 + 2, y0), text, font=font)
                draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0, 150))
                draw.text((x0 + 2, y0), text, fill=(255, 255, 255, 255), font=font)
        left = Image.alpha_composite(left.convert("RGBA"), overlay).convert("RGB")
        right = Image.fromarray(_enlarge(_rgb8(r[i]), k))
        label_size = 14
        titles = (f"the image and its {G}×{G} codes", f"decoded from those {G * G} codes")
        label_h = int(label_size * 1.3) + 4
        width = 2 * W * k + panel_gap
        canvas = Image.new("RGB", (width + 2 * MARGIN, label_h + H * k + 2 * MARGIN), PAPER)
        text_draw = ImageDraw.Draw(canvas)
        for p, (panel, t) in enumerate(zip((left, right), titles)):
            px = MARGIN + p * (W * k + panel_gap)
            text_draw.text((px, MARGIN), t, fill=INK, font=_font(label_size))
            canvas.paste(panel, (px, MARGIN + label_h))
        png = _png(canvas)
        mse = float(np.mean((np.clip(x[i], -1, 1) - np.clip(r[i], -1, 1)) ** 2))
        distinct = len(np.unique(c[i]))
        alt = (f"Left, the image “{captions[i]}” ({H}×{W} pixels, shown {k} times larger) cut into a {G}×{G} "
               f"grid, each cell labelled with its code id (row by row: {', '.join(map(str, c[i].ravel()))}); "
               f"right, the image the VQ-VAE's decoder makes from those {G * G} codes.")
        head = (f"<b>“{html.escape(captions[i])}”</b>: {G * G} codes, {distinct} distinct · reconstruction's mean "
                f"squared error {mse:.4f} <span style='opacity:.7'>(pixels in [-1, 1])</span>")
        return widgets.VBox([widgets.HTML(head), _picture(png, alt=alt)])

    chooser = _Examples(names, names.index, [], page, "image", free_text=False)
    box = widgets.VBox([*chooser.head(), chooser.pages])
    box.links = chooser.links
    return box
