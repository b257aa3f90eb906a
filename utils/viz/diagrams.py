"""The book's drawn figures: box-and-arrow diagrams of its models, made by code, the same on every run.

The vocabulary is small and lives in `Diagram`: `box` (a block with a label; its `role` picks the colour),
`stack` (blocks one above the other, joined by arrows), `node` (a small circle: +, ⊙, σ, ...), `frame`
(a dashed outline around the blocks a layer repeats, with its "× L"), `arrow` (straight or through
corners, solid for the forward pass, dashed for gradients and tied weights), `text` and `shape` (a tensor
shape in the book's letter legend, book/notation.md). Coordinates are inches from the lower left corner,
so a font size in points and a box size in inches stay in proportion whatever the figure's size.

Light and dark mode. The background is transparent. Every label that sits on a block is white on a
mid-tone fill (contrast ≥ 4.5:1, see `contrast`), and the fills themselves stand out on white and on a
near-black page; free text, arrows and outlines use `INK`, a grey that reads about equally well on both
(≈ 4.2:1 on white and on #14181e, the dark page of the book's theme). Nothing is black or white on the
page itself, so the same PNG works in a light notebook, a dark one and on the website.

The models, drawn after the book's code (names and shapes as the chapters and `utils` write them):
`rnn_bptt` (chapter 2), `lstm_cell` and `gru_cell` (chapter 3), `seq2seq_training` (chapter 4),
`attention_decoder_step` (chapter 5), `transformer_encoder_decoder` (chapter 6), `gpt_stack` (chapter 7),
`vit_pipeline` (chapter 8), `clip_contrastive` (chapter 9), `compression_map` (chapter 11: where each
compression method cuts the cost), `text_to_image_tokens` and `text_to_image_diffusion` (chapter 12: the
two routes from a caption to an image). Each returns a matplotlib `Figure` (not
registered with pyplot, so nothing piles up). A chapter shows one with `show(fig)`: a PNG drawn at twice the
resolution and displayed at its natural size, the same bytes whatever matplotlib backend the notebook uses
(a bare Figure would be drawn by the inline backend's hook in one notebook and not at all in another).
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle
from matplotlib.path import Path
from matplotlib.text import Text

DRAWINGS = ("rnn_bptt", "lstm_cell", "gru_cell", "seq2seq_training", "attention_decoder_step", "transformer_encoder_decoder", "gpt_stack", "vit_pipeline",
            "clip_contrastive", "compression_map", "text_to_image_tokens",
            "text_to_image_diffusion")  # the model diagrams, in chapter order
__all__ = ["PALETTE", "INK", "GRADIENT", "TIE", "DARK_PAGE", "DPI", "DRAWINGS", "contrast", "Box", "Diagram", "png",
           "show", *DRAWINGS]

DPI = 100
# Mid-tone fills, one per kind of block. White text on each has contrast ≥ 4.5:1; each fill has ≥ 3:1
# against a white page and ≥ 2.5:1 against the dark page #14181e (tests/test_diagrams.py checks both).
PALETTE: dict[str, str] = {
    "data": "#5a6675",    # inputs and outputs: ids, images, captions (slate)
    "embed": "#2a6cb0",   # embeddings, projections, heads that read or write tokens (blue)
    "rnn": "#2b7a78",     # recurrent cells and states (teal)
    "attn": "#b4541b",    # attention (orange)
    "mlp": "#2f7d3f",     # feed-forward blocks (green)
    "norm": "#7a4fae",    # LayerNorm (purple)
    "gate": "#9c3f8a",    # LSTM/GRU gates (magenta)
    "loss": "#b8383d",    # losses (red)
    "neutral": "#5f5f5f",  # anything else (grey)
}
INK = "#7c7c7c"       # free text, arrows, outlines: ≈ 4.2:1 on white and on #14181e
GRADIENT = "#e0452f"  # the backward pass (gradients)
TIE = "#4f8bc9"       # shared (tied) weights: a lighter blue that reads on both pages
DARK_PAGE = "#14181e"  # pydata-sphinx-theme's dark background, the reference for dark mode
FONT = 10.5
SMALL = 9.0


def _luminance(colour: str) -> float:
    rgb = np.array(mpl.colors.to_rgb(colour))
    lin = np.where(rgb <= 0.03928, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return float(lin @ [0.2126, 0.7152, 0.0722])


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two colours, from 1 (none) to 21 (black on white)."""
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def png(fig: Figure, scale: float = 2.0) -> bytes:
    """The figure as PNG bytes at `scale` × its own resolution (transparent background)."""
    if not isinstance(fig, Figure):
        raise TypeError(f"png needs a matplotlib Figure, got {type(fig).__name__}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi * scale, facecolor="none")
    return buffer.getvalue()


def show(fig: Figure, scale: float = 2.0):
    """The figure as an IPython image for a notebook cell: sharp on high-resolution screens (drawn at
    `scale` × its resolution) and displayed at its natural width."""
    from IPython.display import Image

    return Image(data=png(fig, scale), format="png", width=round(fig.get_figwidth() * fig.dpi))


@dataclass(frozen=True)
class Box:
    """A drawn block: centre (x, y), width w, height h, in inches. `top`, `bottom`, `left`, `right`
    are the midpoints of its sides; `at(side, t)` a point along a side (t from 0 to 1, left/bottom first)."""

    x: float
    y: float
    w: float
    h: float

    @property
    def top(self) -> tuple[float, float]:
        return (self.x, self.y + self.h / 2)

    @property
    def bottom(self) -> tuple[float, float]:
        return (self.x, self.y - self.h / 2)

    @property
    def left(self) -> tuple[float, float]:
        return (self.x - self.w / 2, self.y)

    @property
    def right(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y)

    def at(self, side: str, t: float = 0.5) -> tuple[float, float]:
        x0, y0 = self.x - self.w / 2, self.y - self.h / 2
        if side in ("top", "bottom"):
            return (x0 + t * self.w, y0 + (self.h if side == "top" else 0.0))
        if side in ("left", "right"):
            return (x0 + (self.w if side == "right" else 0.0), y0 + t * self.h)
        raise ValueError(f"side must be 'top', 'bottom', 'left' or 'right', got {side!r}")

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1)."""
        return (self.x - self.w / 2, self.y - self.h / 2, self.x + self.w / 2, self.y + self.h / 2)


Point = tuple[float, float]


class Diagram:
    """A canvas `width` × `height` inches with a transparent background and the drawing vocabulary.

    Every block is recorded with a gid ("box:…" or "frame:…") so tests can check that blocks do not
    overlap and that every label lies either inside a block or clear of all of them.
    """

    def __init__(self, width: float, height: float) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"a diagram needs a positive size, got {width} × {height} inches")
        self.width, self.height = width, height
        # layout="none": coordinates are fixed, whatever layout engine the notebook's rcParams ask for
        self.fig = Figure(figsize=(width, height), dpi=DPI, facecolor="none", layout="none")
        FigureCanvasAgg(self.fig)  # drawn by Agg, outside pyplot: nothing global, nothing shown twice
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.ax.set_xlim(0, width)
        self.ax.set_ylim(0, height)
        self.ax.set_axis_off()
        self.ax.patch.set_alpha(0.0)
        self._n = 0

    def _gid(self, kind: str) -> str:
        self._n += 1
        return f"{kind}:{self._n}"

    # ------------------------------------------------------------------------------ blocks
    def box(self, x: float, y: float, text: str = "", *, w: float = 1.3, h: float = 0.46, role: str = "neutral",
            size: float = FONT, bold: bool = False) -> Box:
        """A block centred at (x, y) with a white label on the fill of `role` (a key of PALETTE)."""
        if role not in PALETTE:
            raise ValueError(f"role must be one of {sorted(PALETTE)}, got {role!r}")
        fill = PALETTE[role]
        patch = FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.07",
                               facecolor=fill, edgecolor=fill, linewidth=1.0, zorder=3)
        patch.set_gid(self._gid("box"))
        self.ax.add_patch(patch)
        if text:
            self.ax.text(x, y, text, ha="center", va="center", color="white", fontsize=size, zorder=4,
                         fontweight="bold" if bold else "normal")
        return Box(x, y, w, h)

    def stack(self, x: float, y0: float, items: Sequence[tuple[str, str]], *, w: float = 1.5, h: float = 0.42,
              gap: float = 0.28, arrows: bool = True) -> list[Box]:
        """Blocks (text, role) one above the other from y0 upwards (the first at the bottom), joined by
        arrows when `arrows` (the forward pass, bottom to top)."""
        boxes = [self.box(x, y0 + i * (h + gap), text, w=w, h=h, role=role) for i, (text, role) in enumerate(items)]
        if arrows:
            for a, b in zip(boxes, boxes[1:]):
                self.arrow(a.top, b.bottom)
        return boxes

    def node(self, x: float, y: float, symbol: str, *, r: float = 0.16, role: str | None = None) -> Box:
        """A small circle with an operator (+, ×, ⊙, σ, ...): outlined in INK, or filled with `role`."""
        fill = PALETTE[role] if role else "none"
        circle = Circle((x, y), r, facecolor=fill, edgecolor=PALETTE[role] if role else INK, linewidth=1.4, zorder=3)
        circle.set_gid(self._gid("box"))
        self.ax.add_patch(circle)
        self.ax.text(x, y, symbol, ha="center", va="center", color="white" if role else INK,
                     fontsize=FONT + 1, zorder=4, fontweight="bold")
        return Box(x, y, 2 * r, 2 * r)

    def frame(self, x0: float, y0: float, x1: float, y1: float, *, label: str = "", repeat: str = "",
              label_side: str = "top", label_corner: str = "right", repeat_side: str = "right") -> Box:
        """A dashed outline around what a layer repeats. `label` is written inside, at the top-left (or
        bottom-left); `repeat` (e.g. "× L") outside the right (or left) edge, in bold."""
        patch = FancyBboxPatch((x0, y0), x1 - x0, y1 - y0, boxstyle="round,pad=0,rounding_size=0.12",
                               facecolor=INK, alpha=0.10, edgecolor="none", zorder=1)
        outline = FancyBboxPatch((x0, y0), x1 - x0, y1 - y0, boxstyle="round,pad=0,rounding_size=0.12",
                                 facecolor="none", edgecolor=INK, linewidth=1.3, linestyle=(0, (4, 3)), zorder=1)
        outline.set_gid(self._gid("frame"))
        self.ax.add_patch(patch)
        self.ax.add_patch(outline)
        if label:  # inside, in the top-right (or bottom-right) corner: leave room for it
            ty, va = (y1 - 0.07, "top") if label_side == "top" else (y0 + 0.07, "bottom")
            right = label_corner == "right"
            self.text(x1 - 0.1 if right else x0 + 0.1, ty, label, ha="right" if right else "left", va=va,
                      size=SMALL, italic=True)
        if repeat:
            right = repeat_side == "right"
            self.text(x1 + 0.08 if right else x0 - 0.08, (y0 + y1) / 2, repeat, ha="left" if right else "right",
                      va="center", size=FONT + 2, bold=True)
        return Box((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)

    def residual_block(self, xs: float, y: float, sublayers: Sequence[tuple[str, str, str]], *, side: int = 1,
                       dx: float = 1.3, w: float = 1.95, h: float = 0.36) -> tuple[float, list]:
        """A pre-norm layer drawn on its residual stream, the vertical line x = xs, from height y upwards:
        for each (norm name, sublayer name, role), x ← x + sublayer(norm(x)). The branch leaves the stream
        to the norm, which sits `dx` to the right (side=1) or left (side=-1), passes the sublayer above
        it and comes back into a ⊕ on the stream: the stream itself is never normalised.
        Returns the stream's height above the last ⊕ and [(norm box, sublayer box, ⊕ node), ...]."""
        out = []
        for norm, name, role in sublayers:
            ln = self.box(xs + side * dx, y + 0.35, norm, w=w, h=h, role="norm")
            f = self.box(xs + side * dx, ln.y + 0.55, name, w=w, h=h, role=role)
            plus = self.node(xs, f.y, "+")
            self.arrow((xs, ln.y), ln.left if side > 0 else ln.right)
            self.arrow(ln.top, f.bottom)
            self.arrow(f.left if side > 0 else f.right, plus.right if side > 0 else plus.left)
            self.arrow((xs, y), plus.bottom)
            out.append((ln, f, plus))
            y = plus.top[1]
        return y, out

    # ------------------------------------------------------------------------------ lines
    def arrow(self, start: Point, end: Point, *, via: Sequence[Point] = (), color: str = INK, dashed: bool = False,
              lw: float = 1.5, head: str = "-|>", label: str = "", label_at: Point | None = None,
              label_ha: str = "left", label_color: str | None = None) -> FancyArrowPatch:
        """An arrow from `start` to `end`, straight or through the corner points `via`.
        `head` is a matplotlib arrow style: "-|>" (forward), "<|-|>" (both ends), "-" (a plain line)."""
        points = [start, *via, end]
        codes = [Path.MOVETO] + [Path.LINETO] * (len(points) - 1)
        patch = FancyArrowPatch(path=Path(points, codes), arrowstyle=head, mutation_scale=11, color=color,
                                linewidth=lw, linestyle=(0, (3.5, 2.5)) if dashed else "-", zorder=2,
                                shrinkA=0, shrinkB=0, joinstyle="miter", capstyle="butt")
        patch.set_gid("arrow")
        self.ax.add_patch(patch)
        if label:
            if label_at is None:
                (ax_, ay), (bx, by) = points[-2], points[-1]
                label_at = ((ax_ + bx) / 2 + 0.08, (ay + by) / 2)
            self.text(*label_at, label, ha=label_ha, va="center", size=SMALL, color=label_color or color)
        return patch

    def line(self, points: Sequence[Point], *, color: str = INK, dashed: bool = False, lw: float = 1.5) -> None:
        """A plain polyline (a bus, a residual stream)."""
        self.arrow(points[0], points[-1], via=points[1:-1], color=color, dashed=dashed, lw=lw, head="-")

    def text(self, x: float, y: float, s: str, *, ha: str = "center", va: str = "center", size: float = FONT,
             color: str = INK, bold: bool = False, italic: bool = False, mono: bool = False) -> Text:
        """Free text on the page, in INK (or `color`)."""
        return self.ax.text(x, y, s, ha=ha, va=va, fontsize=size, color=color, zorder=5,
                            fontweight="bold" if bold else "normal", fontstyle="italic" if italic else "normal",
                            family="DejaVu Sans Mono" if mono else "DejaVu Sans")

    def shape(self, x: float, y: float, s: str, *, ha: str = "left", va: str = "center") -> Text:
        """A tensor-shape annotation such as "(B, T, C)", in monospace."""
        return self.text(x, y, s, ha=ha, va=va, size=SMALL, mono=True)

    def bar(self, x: float, y: float, w: float, h: float, role: str = "attn") -> None:
        """A filled bar (attention weights), bottom-left at (x, y); not a block."""
        self.ax.add_patch(Rectangle((x, y), w, h, facecolor=PALETTE[role], edgecolor="none", zorder=3))

    def cell(self, x: float, y: float, size: float, colour: str, *, alpha: float = 1.0, outline: bool = False) -> None:
        """A square of a grid (an image patch, a matrix entry), lower-left at (x, y); not a block."""
        self.ax.add_patch(Rectangle((x, y), size, size, facecolor=colour, alpha=alpha,
                                    edgecolor=INK if outline else "none", linewidth=0.8, zorder=3))

    def legend(self, x: float, y: float, entries: Sequence[tuple[str, str, bool]], *, dx: float = 2.3) -> None:
        """A one-line legend from (x, y): (label, colour, dashed) per entry, a short line then the label."""
        for i, (label, colour, dashed) in enumerate(entries):
            x0 = x + i * dx
            self.arrow((x0, y), (x0 + 0.45, y), color=colour, dashed=dashed)
            self.text(x0 + 0.55, y, label, ha="left", size=SMALL)


# ================================================================================ chapter 2

def rnn_bptt(steps: int = 4) -> Figure:
    """Chapter 2: an RNN unrolled over `steps` time steps, forward (grey) and the backpropagation-through-time
    gradient path (red, dashed): from each loss into its state, then back along the chain of states, one
    factor ∂h_s/∂h_{s-1} = diag(1 - h_s²) W_hh per step."""
    if not 2 <= steps <= 6:
        raise ValueError(f"rnn_bptt draws 2 to 6 steps, got {steps}")
    dx, x0 = 1.95, 2.05
    d = Diagram(x0 + dx * (steps - 1) + 1.55, 4.75)
    names = [str(t) for t in range(1, steps)] + ["T"]
    xs = [x0 + dx * i for i in range(steps)]
    yx, yh, yl = 0.75, 2.15, 3.55
    h0 = d.box(0.55, yh, r"$\mathbf{h}_0$", w=0.62, h=0.5, role="data")
    prev = h0
    cells, losses = [], []
    for t, x in zip(names, xs):
        xt = d.box(x, yx, rf"$\mathbf{{x}}_{{{t}}}$", w=0.7, h=0.46, role="data")
        h = d.box(x, yh, rf"$\mathbf{{h}}_{{{t}}}=\tanh(\cdot)$", w=1.3, h=0.5, role="rnn")
        loss = d.box(x, yl, rf"$\mathcal{{L}}_{{{t}}}$", w=0.7, h=0.46, role="loss")
        d.arrow(xt.top, h.bottom, label=r"$W_{ih}$" if t == "1" else "")
        d.arrow(h.top, loss.bottom)
        d.arrow(prev.right, h.left, label=r"$W_{hh}$" if t in ("1", "2") else "",
                label_at=((prev.right[0] + h.left[0]) / 2, yh + 0.2), label_ha="center")
        cells.append(h)
        losses.append(loss)
        prev = h
    # the backward pass: dashed red, offset from the forward arrows
    off = 0.17
    for h, loss in zip(cells, losses):
        d.arrow((loss.bottom[0] + 0.25, loss.bottom[1]), (h.top[0] + 0.25, h.top[1]), color=GRADIENT, dashed=True,
                lw=1.3 if loss is not losses[-1] else 2.0)
    for a, b in zip(cells, cells[1:]):
        d.arrow((b.left[0], yh - off), (a.right[0], yh - off), color=GRADIENT, dashed=True, lw=2.0)
    mid = (cells[-2].right[0] + cells[-1].left[0]) / 2
    d.text(mid, yh - 0.42, r"$\partial\mathbf{h}_s/\partial\mathbf{h}_{s-1}$", color=GRADIENT, size=SMALL)
    d.text(mid, yh - 0.7, r"$=\mathrm{diag}(1-\mathbf{h}_s^2)\,W_{hh}$", color=GRADIENT, size=SMALL)
    d.shape(xs[0] + 0.4, yx, "(B, C)")
    d.shape(xs[0] - 0.5, yh - 0.42, "(B, H)", ha="center")
    d.text(xs[0] - 0.1, (yh + yl) / 2 + 0.12, "head: logits", ha="right", size=SMALL)
    d.shape(xs[0] - 0.1, (yh + yl) / 2 - 0.12, "(B, V)", ha="right")
    d.text(xs[-1] + 0.1, 4.3, "the same weights at every step", size=SMALL, ha="right", italic=True)
    d.legend(0.3, 0.2, [("forward", INK, False), (r"gradient $\partial\mathcal{L}/\partial\mathbf{h}$", GRADIENT, True)])
    return d.fig


# ================================================================================ chapters 6 and 7

def transformer_encoder_decoder() -> Figure:
    """Chapter 6: `TransformerSeq2Seq`, pre-norm. Encoder: embed → L × EncoderLayer (ln_1, attn; ln_2, mlp)
    → ln_f → memory. Decoder: embed → L × DecoderLayer (ln_1, causal attn; ln_2, cross_attn reading the
    memory; ln_3, mlp) → ln_f → head → logits. Each sublayer adds to the residual stream x ← x + f(LN(x))."""
    d = Diagram(8.6, 7.2)
    # encoder, stream at x = 1.5, branches to the right
    xe, xd = 1.5, 7.2
    src = d.box(xe, 0.4, "src ids", w=1.2, h=0.4, role="data")
    d.shape(src.right[0] + 0.1, src.y, "(B, S)")
    emb_e = d.box(xe, 1.15, r"embed: wte$\cdot\sqrt{C}$ + positions", w=2.6, h=0.4, role="embed")
    d.arrow(src.top, emb_e.bottom)
    y0 = emb_e.top[1] + 0.35
    top_e, enc = d.residual_block(xe, y0, [("ln_1", "attn: self-attention", "attn"), ("ln_2", "mlp", "mlp")])
    d.arrow(emb_e.top, (xe, y0), head="-")
    d.frame(xe - 0.45, y0 + 0.05, xe + 2.5, top_e + 0.4, label="EncoderLayer", repeat="× L", repeat_side="left")
    lnf_e = d.box(xe, top_e + 0.9, "ln_f", w=1.1, h=0.4, role="norm")
    d.arrow((xe, top_e), lnf_e.bottom)
    mem = d.box(xe, lnf_e.y + 0.8, "memory", w=1.2, h=0.4, role="data")
    d.arrow(lnf_e.top, mem.bottom)
    d.shape(mem.left[0] - 0.1, mem.y, "(B, S, C)", ha="right")
    d.text(xe, mem.y + 0.55, "encoder", bold=True)
    # decoder, stream at x = xd, branches to the left
    tgt = d.box(xd, 0.4, "tgt_in ids", w=1.3, h=0.4, role="data")
    d.shape(tgt.left[0] - 0.1, tgt.y, "(B, T)", ha="right")
    emb_d = d.box(xd, 1.15, r"embed: wte$\cdot\sqrt{C}$ + positions", w=2.6, h=0.4, role="embed")
    d.arrow(tgt.top, emb_d.bottom)
    y1 = emb_d.top[1] + 0.35
    top_d, dec = d.residual_block(xd, y1, [("ln_1", "attn: causal self-attn", "attn"),
                                           ("ln_2", "cross_attn", "attn"), ("ln_3", "mlp", "mlp")], side=-1)
    d.arrow(emb_d.top, (xd, y1), head="-")
    d.frame(xd - 2.5, y1 + 0.05, xd + 0.45, top_d + 0.4, label="DecoderLayer", repeat="× L",
            label_corner="left")
    lnf_d = d.box(xd, top_d + 0.85, "ln_f", w=1.1, h=0.4, role="norm")
    d.arrow((xd, top_d), lnf_d.bottom)
    head = d.box(xd, lnf_d.y + 0.7, "head", w=1.1, h=0.4, role="embed")
    d.arrow(lnf_d.top, head.bottom)
    d.shape(head.left[0] - 0.1, head.y, "logits (B, T, V)", ha="right")
    d.text(xd, head.y + 0.5, "decoder", bold=True)
    # the memory feeds every decoder layer's cross-attention: keys and values
    cross = dec[1][1]
    xm = (xe + 2.5 + xd - 2.5) / 2
    d.arrow(mem.right, cross.left, via=[(xm, mem.y), (xm, cross.y)])
    d.text((mem.right[0] + xm) / 2 + 0.05, mem.y + 0.4, "keys and values of", size=SMALL)
    d.text((mem.right[0] + xm) / 2 + 0.05, mem.y + 0.18, "every cross_attn", size=SMALL)
    d.shape(xe + 0.1, y0 - 0.18, "(B, S, C)")
    d.shape(xd - 0.1, y1 - 0.18, "(B, T, C)", ha="right")
    return d.fig


def gpt_stack() -> Figure:
    """Chapter 7: `GPT`. Token plus position embeddings (wte, wpe), L pre-norm blocks with causal
    self-attention (`transformer.h`), a final LayerNorm (ln_f) and the output head `lm_head`, whose
    weight IS the token embedding wte's (tied): one (V, C) matrix reads tokens in and writes logits out."""
    d = Diagram(6.6, 7.1)
    xs = 2.3
    idx = d.box(xs, 0.4, "idx", w=1.0, h=0.4, role="data")
    d.shape(idx.left[0] - 0.1, idx.y, "(B, T)", ha="right")
    wte = d.box(xs, 1.15, "wte", w=1.2, h=0.42, role="embed")
    d.arrow(idx.top, wte.bottom)
    wpe = d.box(xs + 2.0, 1.15, "wpe", w=1.2, h=0.42, role="embed")
    d.text(wpe.x, 0.4, "positions 0 … T−1", size=SMALL)
    d.arrow((wpe.x, 0.55), wpe.bottom)
    plus = d.node(xs, 1.95, "+")
    d.arrow(wte.top, plus.bottom)
    d.arrow(wpe.top, plus.right, via=[(wpe.x, plus.y)])
    d.shape(xs - 0.25, 2.3, "(B, T, C)", ha="right")
    y0 = plus.top[1] + 0.25
    top, blocks = d.residual_block(xs, y0, [("ln_1", "attn: causal", "attn"), ("ln_2", "mlp", "mlp")], w=1.6)
    d.arrow(plus.top, (xs, y0), head="-")
    d.frame(xs - 0.45, y0 + 0.05, xs + 2.35, top + 0.4, label="block transformer.h[ℓ]", repeat="× L")
    lnf = d.box(xs, top + 0.85, "ln_f", w=1.1, h=0.4, role="norm")
    d.arrow((xs, top), lnf.bottom)
    head = d.box(xs, lnf.y + 0.75, "lm_head", w=1.2, h=0.42, role="embed")
    d.arrow(lnf.top, head.bottom)
    out = d.box(xs, head.y + 0.75, "logits", w=1.0, h=0.4, role="data")
    d.arrow(head.top, out.bottom)
    d.shape(out.right[0] + 0.1, out.y, "(B, T, V): next-token scores")
    # the tie: one (V, C) matrix
    xt = 0.35
    d.arrow(wte.left, head.left, via=[(xt, wte.y), (xt, head.y)], color=TIE, dashed=True, head="<|-|>", lw=1.8)
    d.text(xt + 0.12, (wte.y + head.y) / 2 + 0.35, "tied:", ha="left", size=SMALL, color=TIE, bold=True)
    d.text(xt + 0.12, (wte.y + head.y) / 2 + 0.1, "lm_head.weight", ha="left", size=SMALL)
    d.text(xt + 0.12, (wte.y + head.y) / 2 - 0.15, "is wte.weight", ha="left", size=SMALL)
    d.shape(xt + 0.12, (wte.y + head.y) / 2 - 0.42, "(V, C)")
    return d.fig


# ================================================================================ chapter 3

def lstm_cell() -> Figure:
    """Chapter 3: one LSTM step as `lstm_cell` computes it. One matrix product gives the four
    pre-activations (B, 4H), rows i, f, g, o; the cell state c runs along the top, multiplied by the forget
    gate and added to (i ⊙ g); h_t = o ⊙ tanh(c_t)."""
    d = Diagram(8.4, 4.75)
    yc, yg, yz = 3.9, 2.45, 1.3
    c_prev = d.box(0.55, yc, r"$\mathbf{c}_{t-1}$", w=0.75, h=0.44, role="data")
    h_prev = d.box(0.55, yz, r"$\mathbf{h}_{t-1}$", w=0.75, h=0.44, role="data")
    z = d.box(3.95, yz, r"$W_{ih}\mathbf{x}_t + \mathbf{b}_{ih} + W_{hh}\mathbf{h}_{t-1} + \mathbf{b}_{hh}$",
              w=4.3, h=0.46, role="embed")
    x_t = d.box(z.x, 0.35, r"$\mathbf{x}_t$", w=0.6, h=0.4, role="data")
    d.arrow(h_prev.right, z.left)
    d.arrow(x_t.top, z.bottom)
    d.shape(x_t.right[0] + 0.1, x_t.y, "(B, C)")
    d.shape(z.right[0] + 0.1, z.y + 0.11, "(B, 4H)")
    d.text(z.right[0] + 0.1, z.y - 0.13, "rows i, f, g, o", ha="left", size=SMALL)
    gates = {}
    for name, x, fn, w in [("f", 2.2, r"\sigma", 0.95), ("i", 3.3, r"\sigma", 0.95), ("g", 4.5, r"\tanh", 1.15),
                           ("o", 5.75, r"\sigma", 0.95)]:
        gates[name] = d.box(x, yg, rf"${name} = {fn}$", w=w, h=0.44, role="gate")
        d.arrow((x, z.top[1]), gates[name].bottom)
    forget = d.node(gates["f"].x, yc, r"$\odot$")
    add = d.node(3.9, yc, "+")
    write = d.node(3.9, 3.2, r"$\odot$")
    d.arrow(c_prev.right, forget.left)
    d.arrow(gates["f"].top, forget.bottom)
    d.arrow(forget.right, add.left)
    d.arrow(gates["i"].top, write.left, via=[(gates["i"].x, write.y)])
    d.arrow(gates["g"].top, write.right, via=[(gates["g"].x, write.y)])
    d.arrow(write.top, add.bottom)
    squash = d.box(6.85, 3.2, r"$\tanh$", w=0.7, h=0.38, role="rnn")
    show = d.node(6.85, yg, r"$\odot$")
    c_t = d.box(7.85, yc, r"$\mathbf{c}_t$", w=0.6, h=0.44, role="data")
    h_t = d.box(7.85, yg, r"$\mathbf{h}_t$", w=0.6, h=0.44, role="data")
    d.arrow(add.right, c_t.left)
    d.arrow((squash.x, yc), squash.top)
    d.arrow(squash.bottom, show.top)
    d.arrow(gates["o"].right, show.left)
    d.arrow(show.right, h_t.left)
    d.shape(c_prev.right[0] + 0.1, yc + 0.22, "(B, H)")
    d.text(4.9, 4.45, r"$\mathbf{c}_t = f \odot \mathbf{c}_{t-1} + i \odot g$: added to, not squashed;"
           r"  $\partial\mathbf{c}_t/\partial\mathbf{c}_{t-1} = \mathrm{diag}(f)$", size=SMALL)
    d.text(6.85, 1.85, r"$\mathbf{h}_t = o \odot \tanh(\mathbf{c}_t)$", size=SMALL)
    return d.fig


def gru_cell() -> Figure:
    """Chapter 3: one GRU step as `gru_cell` computes it (torch.nn's form): a = W_ih x + b_ih and
    b = W_hh h + b_hh, (B, 3H) each, rows r, z, n; r = σ(a_r + b_r), z = σ(a_z + b_z),
    n = tanh(a_n + r ⊙ b_n), h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}."""
    d = Diagram(8.4, 4.75)
    yh, yg, yz = 3.9, 2.3, 1.15
    h_prev = d.box(0.55, yh, r"$\mathbf{h}_{t-1}$", w=0.75, h=0.44, role="data")
    pre = d.box(4.2, yz, r"$\mathbf{a} = W_{ih}\mathbf{x}_t + \mathbf{b}_{ih}$,    "
                r"$\mathbf{b} = W_{hh}\mathbf{h}_{t-1} + \mathbf{b}_{hh}$", w=5.4, h=0.46, role="embed")
    x_t = d.box(pre.x, 0.3, r"$\mathbf{x}_t$", w=0.6, h=0.38, role="data")
    d.arrow(x_t.top, pre.bottom)
    d.arrow(h_prev.bottom, pre.left, via=[(h_prev.x, pre.y)])
    d.shape(x_t.right[0] + 0.1, x_t.y, "(B, C)")
    d.shape(pre.x + 0.9, pre.bottom[1] - 0.2, "(B, 3H) each, rows r, z, n", ha="left")
    z = d.box(2.2, yg, r"$z = \sigma(a_z + b_z)$", w=1.55, h=0.44, role="gate")
    r = d.box(3.95, yg, r"$r = \sigma(a_r + b_r)$", w=1.55, h=0.44, role="gate")
    n = d.box(6.2, yg, r"$n = \tanh(a_n + r \odot b_n)$", w=2.15, h=0.44, role="rnn")
    for g in (z, r, n):
        d.arrow((g.x, pre.top[1]), g.bottom)
    d.arrow(r.right, n.left)
    keep = d.node(z.x, yh, r"$\odot$")
    one_minus = d.node(3.95, 3.2, r"$1-$", r=0.2)
    take = d.node(n.x, 3.2, r"$\odot$")
    add = d.node(n.x, yh, "+")
    h_t = d.box(7.8, yh, r"$\mathbf{h}_t$", w=0.6, h=0.44, role="data")
    d.arrow(h_prev.right, keep.left)
    d.arrow(z.top, keep.bottom)
    d.arrow((z.x, one_minus.y), one_minus.left)
    d.arrow(one_minus.right, take.left)
    d.arrow(n.top, take.bottom)
    d.arrow(take.top, add.bottom)
    d.arrow(keep.right, add.left)
    d.arrow(add.right, h_t.left)
    d.shape(h_prev.right[0] + 0.1, yh + 0.22, "(B, H)")
    d.text(4.2, 4.45, r"$\mathbf{h}_t = (1 - z) \odot n + z \odot \mathbf{h}_{t-1}$: with $z \approx 1$ the state "
           "is copied forward", size=SMALL)
    return d.fig


# ================================================================================ chapter 4

def seq2seq_training() -> Figure:
    """Chapter 4: the encoder reads the source ("03/03/98") and hands its final state (h_S, c_S) to the
    decoder, the only thing the decoder learns about the input. Teacher forcing feeds the decoder the true
    previous character; free running feeds it its own prediction (argmax, no gradient through the choice),
    so a mistake becomes the next input. Both are trained with cross-entropy against the target."""
    d = Diagram(10.2, 5.9)
    # encoder
    ye = 2.95
    xs_enc = [0.65, 1.55, 2.45, 3.95]
    prev = None
    for x, ch in zip(xs_enc, ["0", "3", "/", "8"]):
        c = d.box(x, ye, "LSTM", w=0.72, h=0.42, role="rnn")
        s = d.box(x, ye - 0.8, ch, w=0.42, h=0.38, role="data")
        d.arrow(s.top, c.bottom)
        if prev is not None:
            d.arrow(prev.right, c.left)
        prev = c
    d.text((xs_enc[2] + xs_enc[3]) / 2, ye + 0.22, "⋯", size=FONT)
    d.text(2.3, ye + 0.75, "encoder reads the source", bold=True)
    d.text(2.3, ye - 1.35, "src = “03/03/98”, target = “1998-03-03”", size=SMALL)
    last = prev
    # two decoders, the same weights
    xs_dec = [6.0, 7.1, 8.2, 9.3]
    xr = 5.0
    rows = {"tf": 4.35, "fr": 1.8}
    d.text(7.65, rows["tf"] + 1.3, "teacher forcing: the input is the true previous character", bold=True, size=SMALL)
    d.text(7.65, rows["fr"] - 1.35, "free running: the input is the model's own last prediction", bold=True,
           size=SMALL)
    inputs = {"tf": ["<sos>", "1", "9", "9"], "fr": ["<sos>", "1", "9", "8"]}
    outputs = {"tf": ["1", "9", "8", "8"], "fr": ["1", "9", "8", "8"]}
    target = ["1", "9", "9", "8"]
    for key, yc in rows.items():
        prev = None
        cells, outs, ins = [], [], []
        for i, x in enumerate(xs_dec):
            c = d.box(x, yc, "LSTM", w=0.72, h=0.42, role="rnn")
            wrong = outputs[key][i] != target[i]
            o = d.box(x, yc + 0.8, outputs[key][i], w=0.42, h=0.38, role="loss" if wrong else "data")
            fed_wrong = i > 0 and inputs[key][i] != target[i - 1]
            s = d.box(x, yc - 0.8, inputs[key][i], w=0.62 if i == 0 else 0.42, h=0.38,
                      role="loss" if fed_wrong else "data")
            d.arrow(s.top, c.bottom)
            d.arrow(c.top, o.bottom)
            if prev is not None:
                d.arrow(prev.right, c.left)
            prev = c
            cells.append(c)
            outs.append(o)
            ins.append(s)
        if key == "fr":
            for o, s in zip(outs, ins[1:]):
                xm = o.x + 0.55
                d.arrow(o.right, s.left, via=[(xm, o.y), (xm, s.y)], dashed=True)
        d.arrow(last.right, cells[0].left, via=[(xr, last.y), (xr, yc)])
    d.text(xr - 0.1, ye + 0.38, r"$(\mathbf{h}_S, \mathbf{c}_S)$", ha="right", size=SMALL)
    key = d.box(5.55, 0.15, "", w=0.3, h=0.2, role="loss")
    d.text(key.right[0] + 0.1, key.y, "a wrong character", ha="left", size=SMALL)
    d.legend(8.0, 0.15, [("own prediction fed back", INK, True)])
    return d.fig


# ================================================================================ chapter 5

def attention_decoder_step() -> Figure:
    """Chapter 5: one step of `AttentionDecoder` (Bahdanau et al.). The previous top-layer state s_{t-1}
    queries every encoder output h_s (`decoder.attn`), the softmax gives α_t (B, S), the context
    ctx_t = Σ_s α_s h_s (B, H); the LSTM (`decoder.rnn`) reads [embed(y_{t-1}); ctx_t] and the head reads
    [s_t; ctx_t] to give the logits (B, V)."""
    d = Diagram(9.6, 5.5)
    xs = [1.2, 2.1, 3.0, 3.9, 4.8]
    alpha = [0.06, 0.12, 0.62, 0.15, 0.05]  # an illustrative distribution (sums to 1)
    y_h, y_att, y_bar, y_ctx, y_head = 0.55, 1.6, 2.05, 3.5, 4.65
    hs = [d.box(x, y_h, rf"$\mathbf{{h}}_{{{i}}}$", w=0.7, h=0.42, role="rnn") for i, x in enumerate(xs[:-1], 1)]
    hs.append(d.box(xs[-1], y_h, r"$\mathbf{h}_S$", w=0.7, h=0.42, role="rnn"))
    d.shape(xs[-1] + 0.45, y_h + 0.1, "memory.outputs", ha="left")
    d.shape(xs[-1] + 0.45, y_h - 0.14, "(B, S, H)", ha="left")
    att = d.box(3.0, y_att, r"decoder.attn: score$(\mathbf{s}_{t-1}, \mathbf{h}_s)$, softmax over $s$",
                w=4.5, h=0.42, role="attn")
    for h in hs:
        d.arrow(h.top, (h.x, att.bottom[1]))
    for x, a in zip(xs, alpha):
        d.bar(x - 0.2, y_bar, 0.4, 0.85 * a, role="attn")
    d.text(0.72, y_bar + 0.3, r"$\alpha_t$", ha="right", size=FONT)
    d.shape(0.72, y_bar + 0.05, "(B, S)", ha="right")
    ctx = d.box(3.0, y_ctx, r"$\mathrm{ctx}_t = \Sigma_s\, \alpha_{t,s}\,\mathbf{h}_s$", w=2.2, h=0.44, role="attn")
    for i, (x, a) in enumerate(zip(xs, alpha)):
        d.arrow((x, y_bar + 0.85 * a + 0.04), ctx.at("bottom", 0.15 + 0.175 * i), lw=0.6 + 4.0 * a)
    d.shape(ctx.left[0] + 0.05, ctx.top[1] + 0.16, "(B, H)", ha="left")
    s_prev = d.box(6.4, y_att, r"$\mathbf{s}_{t-1}, \mathbf{c}_{t-1}$", w=1.3, h=0.42, role="rnn")
    d.arrow(s_prev.left, att.right)
    d.text((s_prev.left[0] + att.right[0]) / 2, y_att + 0.2, "query", size=SMALL)
    rnn = d.box(6.4, y_ctx, "decoder.rnn (LSTM)", w=1.75, h=0.44, role="rnn")
    d.arrow(s_prev.top, rnn.bottom)
    d.text(s_prev.x + 0.1, (s_prev.top[1] + rnn.bottom[1]) / 2, "state", ha="left", size=SMALL)
    y_prev = d.box(8.6, y_att, r"$y_{t-1}$", w=0.7, h=0.42, role="data")
    emb = d.box(8.6, 2.55, "decoder.embed", w=1.45, h=0.42, role="embed")
    d.arrow(y_prev.top, emb.bottom)
    d.arrow(emb.top, rnn.right, via=[(emb.x, rnn.y)])
    d.arrow(ctx.right, rnn.left)
    d.text((ctx.right[0] + rnn.left[0]) / 2, y_ctx + 0.2, "concatenated", size=SMALL)
    d.text((ctx.right[0] + rnn.left[0]) / 2, y_ctx - 0.2, "with the embedding", size=SMALL)
    head = d.box(6.4, y_head, r"decoder.head$([\mathbf{s}_t; \mathrm{ctx}_t])$", w=2.6, h=0.44, role="embed")
    d.arrow(rnn.top, head.bottom)
    d.text(rnn.x + 0.1, (rnn.top[1] + head.bottom[1]) / 2, r"$\mathbf{s}_t$", ha="left", size=SMALL)
    d.arrow(ctx.top, head.left, via=[(ctx.x, head.y)])
    logits = d.box(8.75, y_head, "logits", w=0.9, h=0.42, role="data")
    d.arrow(head.right, logits.left)
    d.shape(logits.x, y_head + 0.4, "(B, V)", ha="center")
    return d.fig


# ================================================================================ chapters 8 and 9

_DIGIT = np.array([[0.1, 0.9, 0.9, 0.8],  # a hand-drawn 7 on a 4 × 4 grid of patches (0 paper, 1 ink)
                   [0.0, 0.1, 0.6, 0.4],
                   [0.0, 0.3, 0.8, 0.0],
                   [0.0, 0.7, 0.3, 0.0]])


def _image(d: Diagram, x0: float, y0: float, cell: float) -> None:
    """A small image cut into a 4 × 4 grid of patches, lower-left corner at (x0, y0)."""
    paper, ink = np.array(mpl.colors.to_rgb("#c9ced6")), np.array(mpl.colors.to_rgb(PALETTE["data"]))
    for r in range(4):
        for c in range(4):
            v = _DIGIT[r, c]
            d.cell(x0 + c * cell, y0 + (3 - r) * cell, cell, mpl.colors.to_hex((1 - v) * paper + v * ink),
                   outline=True)


def vit_pipeline() -> Figure:
    """Chapter 8: `VisionTransformer`. The image is cut into N patches of P × P pixels; `conv1` (kernel =
    stride = P, the paper's linear map E) embeds each as a C-vector (B, N, C), patches row by row; the
    learned `class_embedding` goes in front and `positional_embedding` (N+1, C) is added: z_0 (B, N+1, C).
    L pre-norm encoder layers (`transformer.resblocks`) follow; the class token's output, after `ln_post`,
    is all the `head` reads: logits (B, K)."""
    d = Diagram(8.4, 5.45)
    xs = [4.3, 4.95, 5.45, 5.95, 6.4, 6.85]
    y_tok, y_pos, y_enc, y_out, y_head = 0.95, 1.8, 3.0, 4.15, 4.95

    def row(y: float, labels: list[str], roles: list[str]) -> list[Box]:
        out = []
        for x, text, role in zip(xs, labels, roles):
            if text == "⋯":
                d.text(x, y, "⋯")
                continue
            out.append(d.box(x, y, text, w=0.5 if x == xs[0] else 0.42, h=0.4, role=role, size=SMALL + 0.5))
        return out

    _image(d, 0.3, 0.4, 0.27)
    d.text(0.3, 0.2, "image, cut into N patches of P × P", ha="left", size=SMALL)
    conv = d.box(2.5, y_tok, "conv1", w=1.1, h=0.42, role="embed")
    d.text(conv.x, y_tok + 0.38, "kernel = stride = P", size=SMALL)
    d.arrow((1.45, y_tok), conv.left)
    d.shape(0.3, 1.72, "(B, C_in, height, width)", ha="left")
    tokens = row(y_tok, ["cls", "1", "2", "3", "⋯", "N"], ["gate"] + ["embed"] * 5)
    d.arrow(conv.right, (5.45, tokens[1].bottom[1]), via=[(3.65, y_tok), (3.65, 0.3), (5.45, 0.3)])
    d.shape(6.05, 0.3, "(B, N, C)", ha="left")
    positions = row(y_pos, ["0", "1", "2", "3", "⋯", "N"], ["neutral"] * 6)
    for x in xs:
        if x != xs[4]:
            d.text(x, (y_tok + y_pos) / 2, "+", size=SMALL)
    d.text(xs[0] - 0.35, y_pos + 0.1, "positional_embedding", ha="right", size=SMALL)
    d.shape(xs[0] - 0.35, y_pos - 0.14, "(N+1, C)", ha="right")
    enc = d.box(5.55, y_enc, "EncoderLayer: ln_1, attn, ln_2, mlp", w=2.9, h=0.44, role="attn")
    d.frame(3.95, y_enc - 0.42, 7.15, y_enc + 0.42, repeat="× L")
    d.arrow((5.55, positions[0].top[1]), (5.55, y_enc - 0.42))
    d.shape(5.65, (y_pos + y_enc) / 2 - 0.05, r"z_0 (B, N+1, C)", ha="left")
    d.text(3.85, y_enc, "transformer.resblocks", ha="right", size=SMALL, italic=True)
    outs = row(y_out, ["cls", "1", "2", "3", "⋯", "N"], ["gate"] + ["data"] * 5)
    d.arrow((5.55, y_enc + 0.42), (5.55, outs[0].bottom[1]))
    ln = d.box(xs[0], y_head, "ln_post", w=0.95, h=0.42, role="norm")
    d.arrow(outs[0].top, ln.bottom)
    head = d.box(5.95, y_head, "head", w=0.9, h=0.42, role="embed")
    d.arrow(ln.right, head.left)
    logits = d.box(7.35, y_head, "logits", w=0.9, h=0.42, role="data")
    d.arrow(head.right, logits.left)
    d.shape(logits.x, y_head - 0.38, "(B, K)", ha="center")
    d.text(xs[0] - 0.35, y_out, "only the class token is read", ha="right", size=SMALL)
    return d.fig


def clip_contrastive(batch: int = 4) -> Figure:
    """Chapter 9: CLIP's two towers and its loss. B images → image tower → (B, E); B captions → text tower
    → (B, E); both normalised; logits_per_image = s · I Tᵀ (B, B) with s = exp(logit_scale); the matching
    pairs are the diagonal (labels = arange(B)); cross-entropy over each row (each image picks its caption)
    and over each column (logits_per_text: each caption picks its image); the loss is their mean."""
    if not 2 <= batch <= 6:
        raise ValueError(f"clip_contrastive draws a batch of 2 to 6 pairs, got {batch}")
    cell = 0.62
    m0x, m0y = 3.55, 0.95  # the matrix's lower-left corner
    size = cell * batch
    d = Diagram(m0x + size + 3.25, m0y + size + 2.15)
    cx = [m0x + cell * (j + 0.5) for j in range(batch)]
    cy = [m0y + size - cell * (i + 0.5) for i in range(batch)]  # row 1 at the top
    for i in range(batch):
        for j in range(batch):
            d.box(cx[j], cy[i], rf"$I_{i + 1}\!\cdot T_{j + 1}$", w=cell - 0.06, h=cell - 0.06,
                  role="mlp" if i == j else "neutral", size=SMALL - 0.5)
    # text side, along the top
    y_t = m0y + size + 0.38
    ts = [d.box(x, y_t, rf"$T_{j + 1}$", w=cell - 0.1, h=0.36, role="embed") for j, x in enumerate(cx)]
    text_tower = d.box(m0x + size / 2, y_t + 0.95, "text tower, at <end_of_text> → text_projection", w=size + 1.2,
                       h=0.44, role="embed")
    captions = d.box(1.35, text_tower.y, "B captions", w=1.3, h=0.42, role="data")
    d.arrow(captions.right, text_tower.left)
    for t in ts:
        d.arrow((t.x, text_tower.bottom[1]), t.top)
    d.text(m0x - 0.15, y_t + 0.45, "unit length", ha="right", size=SMALL)
    d.shape(m0x - 0.15, y_t + 0.2, "(B, E)", ha="right")
    # image side, down the left
    x_i = m0x - 0.38
    is_ = [d.box(x_i, y, rf"$I_{i + 1}$", w=0.42, h=cell - 0.1, role="embed") for i, y in enumerate(cy)]
    image_tower = d.box(1.35, m0y + size / 2, "image tower\n(ViT or\nModifiedResNet)", w=1.55, h=1.1, role="embed")
    d.shape(x_i, m0y - 0.18, "(B, E)", ha="center")
    images = d.box(1.35, 0.4, "B images", w=1.3, h=0.42, role="data")
    d.arrow(images.top, image_tower.bottom)
    xb = image_tower.right[0] + 0.35
    d.line([image_tower.right, (xb, image_tower.y)])
    d.line([(xb, cy[0]), (xb, cy[-1])])
    for b in is_:
        d.arrow((xb, b.y), b.left)
    # the two cross-entropies
    ce_rows = d.box(m0x + size + 1.25, m0y + size / 2, "cross-entropy\nover each row:\nimage i picks\ncaption i",
                    w=1.7, h=size - 0.3, role="loss")
    for y in cy:
        d.arrow((m0x + size, y), (ce_rows.left[0], y))
    ce_cols = d.box(m0x + size / 2, 0.4, "cross-entropy over each column:\ncaption j picks image j", w=size + 0.2,
                    h=0.56, role="loss", size=SMALL)
    for x in cx:
        d.arrow((x, m0y), (x, ce_cols.top[1]))
    loss = d.box(ce_rows.x, 0.4, r"$\mathcal{L}$ = mean of the two", w=1.9, h=0.42, role="loss")
    d.arrow(ce_rows.bottom, loss.top)
    d.arrow(ce_cols.right, loss.left)
    d.text(m0x + size + 0.2, y_t + 0.12, r"logits_per_image $= s\,I\,T^\top$", ha="left", size=SMALL)
    d.text(m0x + size + 0.2, y_t - 0.15, r"$(B, B)$, $s = \exp(\mathrm{logit\_scale})$", ha="left", size=SMALL)
    return d.fig


# ================================================================================ chapter 11

def compression_map() -> Figure:
    """Chapter 11: where each method cuts the cost of running a language model. Rows are the methods the
    chapter builds, columns what running the model costs (the bytes each weight takes, the number of
    weights, the arithmetic per token, the KV cache, the passes of the big model per generated token);
    a block marks a cut and says how big it is in the chapter's setting."""
    columns = ("bytes per\nweight", "number of\nweights", "arithmetic\nper token", "KV cache", "big-model passes\nper token")
    rows = (  # method, {column: (label, role)}
        ("quantization", {0: ("32 → 8, 4, 3 bits", "embed"), 2: ("cheaper int8 ops (W8A8)", "embed")}),
        ("unstructured pruning", {1: ("zeros, same shape", "neutral")}),
        ("structured pruning", {1: ("fewer neurons", "mlp"), 2: ("smaller matmuls", "mlp")}),
        ("distillation", {1: ("¼ the weights", "mlp"), 2: ("¼ the FLOPs", "mlp"), 3: ("half as wide", "mlp")}),
        ("grouped-query attention", {3: ("H / H_kv × smaller", "attn")}),
        ("linear attention", {2: ("O(1), not O(T)", "attn"), 3: ("a fixed state", "attn")}),
        ("speculative decoding", {4: ("up to k + 1 tokens", "rnn")}),
    )
    cw, rh, left, top_h = 1.75, 0.56, 2.35, 0.8
    d = Diagram(left + cw * len(columns) + 0.15, rh * len(rows) + top_h + 0.2)
    y_head = d.height - top_h / 2 - 0.05
    for j, name in enumerate(columns):
        d.text(left + cw * (j + 0.5), y_head, name, size=SMALL, bold=True)
    for i, (method, cuts) in enumerate(rows):
        y = d.height - top_h - 0.1 - rh * (i + 0.5)
        d.text(left - 0.15, y, method, ha="right", size=FONT)
        d.line([(left + 0.05, y - rh / 2), (left + cw * len(columns) - 0.05, y - rh / 2)], lw=0.6)
        for j, (label, role) in cuts.items():
            d.box(left + cw * (j + 0.5), y, label, w=cw - 0.12, h=rh - 0.14, role=role, size=SMALL)
    return d.fig


# ================================================================================ chapter 12

def text_to_image_tokens() -> Figure:
    """Chapter 12, route 1, images as tokens (DALL·E in small, `utils.vq`). Training: the VQ-VAE's encoder
    turns a 32×32 image into a 4×4 grid of code ids (16 tokens from a codebook of 512); the caption's tokens
    and then the 16 codes, row by row, make one sequence, and a GPT learns it with the next-token loss on the
    codes only (`joint_sequence`). Sampling: the GPT continues a caption with 16 codes, one at a time, guided
    on the logits, logits_uncond + s (logits_cond − logits_uncond) (`sample_image_codes`); the decoder turns
    each of k samples into an image, CLIP scores each against the caption, and the best of k is kept
    (`best_of_k`)."""
    d = Diagram(10.0, 6.3)
    d.text(0.15, 6.05, "training", ha="left", bold=True)
    y1 = 5.35
    image = d.box(0.8, y1, "image 32×32", w=1.3, h=0.44, role="data")
    enc = d.box(2.75, y1, "VQ-VAE encoder", w=1.6, h=0.44, role="mlp")
    d.arrow(image.right, enc.left)
    cell, g0x = 0.21, 4.05  # the 4 × 4 grid of codes, lower-left at (g0x, g0y)
    g0y = y1 - 2 * cell
    shades = [0.55, 1.0, 0.75, 0.9, 0.7, 0.6, 1.0, 0.8, 0.95, 0.65, 0.85, 0.55, 0.8, 0.9, 0.6, 1.0]
    for i, a in enumerate(shades):
        r, c = divmod(i, 4)
        d.cell(g0x + c * cell, g0y + (3 - r) * cell, cell, PALETTE["gate"], alpha=a, outline=True)
    d.arrow(enc.right, (g0x, y1))
    d.text(g0x + 4 * cell + 0.15, y1 + 0.2, "a 4×4 grid of code ids:", ha="left", size=SMALL)
    d.text(g0x + 4 * cell + 0.15, y1 - 0.04, "16 tokens from a codebook of 512", ha="left", size=SMALL)
    d.shape(g0x + 4 * cell + 0.15, y1 - 0.28, "codes (B, 4, 4)")
    # the joint sequence: caption tokens, then the codes row by row
    y2, step = 4.05, 0.58
    slots = ["a", "red", "square", "<pad>", "c1", "c2", "⋯", "c16"]
    seq = []
    for i, label in enumerate(slots):
        x = 0.55 + i * step + (0.25 if i >= 4 else 0.0)
        if label == "⋯":
            d.text(x, y2, "⋯")
            continue
        seq.append(d.box(x, y2, label, w=0.52 if label != "<pad>" else 0.56, h=0.38,
                         role="data" if i < 4 else "gate", size=SMALL))
    d.arrow((g0x + 2 * cell, g0y), (g0x + 2 * cell, y2 + 0.19))
    d.text(g0x + 2 * cell + 0.1, (g0y + y2 + 0.19) / 2, "row by row", ha="left", size=SMALL)
    d.text(seq[0].x - 0.26, y2 - 0.38, "caption tokens (T_c, padded)", ha="left", size=SMALL)
    d.text(seq[4].x - 0.26, y2 - 0.38, "then the 16 image codes", ha="left", size=SMALL)
    gpt = d.box(6.55, y2, "GPT (causal)", w=1.35, h=0.46, role="attn")
    d.arrow(seq[-1].right, gpt.left)
    loss = d.box(8.75, y2, "next-token loss\non the codes only", w=1.85, h=0.62, role="loss", size=SMALL)
    d.arrow(gpt.right, loss.left)
    d.line([(0.15, 3.3), (9.85, 3.3)], lw=0.6)
    # sampling
    d.text(0.15, 3.05, "sampling", ha="left", bold=True)
    y3 = 2.25
    caption = d.box(0.65, y3, "caption", w=1.0, h=0.44, role="data")
    sampler = d.box(2.4, y3, "GPT samples\n16 codes, one by one", w=1.9, h=0.66, role="attn", size=SMALL)
    d.arrow(caption.right, sampler.left)
    dec = d.box(4.45, y3, "VQ-VAE decoder", w=1.55, h=0.44, role="mlp")
    d.arrow(sampler.right, dec.left)
    cands = d.box(6.05, y3, "k candidate\nimages", w=1.1, h=0.62, role="data", size=SMALL)
    d.arrow(dec.right, cands.left)
    clip = d.box(7.65, y3, "CLIP scores each\nagainst the caption", w=1.6, h=0.62, role="embed", size=SMALL)
    d.arrow(cands.right, clip.left)
    best = d.box(9.35, y3, "best of k", w=0.95, h=0.44, role="data", size=SMALL)
    d.arrow(clip.right, best.left)
    d.arrow(caption.bottom, clip.bottom, via=[(caption.x, 0.3), (clip.x, 0.3)])
    d.text(caption.x + 0.12, 0.48, "the caption, for CLIP", ha="left", size=SMALL)
    d.text(1.5, 1.5, "guidance at every code:", ha="left", size=SMALL, italic=True)
    d.text(1.5, 1.22, r"logits = logits_uncond + s · (logits_cond − logits_uncond)", ha="left", size=SMALL)
    d.text(1.5, 0.94, "uncond: after the null caption (trained with captions dropped)", ha="left", size=SMALL)
    return d.fig


def text_to_image_diffusion() -> Figure:
    """Chapter 12, route 2, latent diffusion (`utils.diffusion` on `utils.vq`'s latent). Training: the VQ-VAE's
    encoder gives the latent z0 (16 channels × 4×4); it is noised to z_t = √ᾱ_t z0 + √(1−ᾱ_t) ε at a random
    t, and the denoiser, a small DiT (`Denoiser`: the 16 latent vectors as tokens, with a time token and the
    CLIP text tower's caption features in the same sequence, DiT's in-context conditioning), predicts z0
    (x0-prediction, `prediction="sample"`). Sampling: from noise, DDIM steps, each with classifier-free
    guidance (the unconditional and the conditional prediction, combined with scale s, `guided_epsilon`);
    the final z0 is snapped to the nearest codes and decoded into an image."""
    d = Diagram(10.0, 6.6)
    d.text(0.15, 6.35, "training", ha="left", bold=True)
    y1 = 5.6
    image = d.box(0.75, y1, "image", w=1.0, h=0.44, role="data")
    enc = d.box(2.45, y1, "VQ-VAE encoder", w=1.6, h=0.44, role="mlp")
    d.arrow(image.right, enc.left)
    z0 = d.box(4.2, y1, r"latent $z_0$", w=1.2, h=0.44, role="data")
    d.arrow(enc.right, z0.left)
    d.shape(z0.x, y1 - 0.4, "(B, 16, 4, 4)", ha="center")
    noise = d.box(6.75, y1, r"$z_t = \sqrt{\bar\alpha_t}\,z_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$", w=2.75, h=0.5,
                  role="neutral")
    d.arrow(z0.right, noise.left)
    eps = d.box(9.2, y1, r"$\epsilon \sim N(0, I)$", w=1.3, h=0.44, role="data", size=SMALL)
    d.arrow(eps.left, noise.right)
    d.text(eps.x, y1 + 0.4, "t at random", size=SMALL)
    y2 = 4.25
    caption = d.box(0.7, y2, "caption", w=1.0, h=0.44, role="data")
    text = d.box(2.2, y2, "CLIP text tower", w=1.6, h=0.44, role="embed")
    d.arrow(caption.right, text.left)
    dit = d.box(5.85, y2, "denoiser: a small DiT\ntokens [time; caption features; 16 latent vectors]", w=3.9,
                h=0.7, role="attn", size=SMALL)
    d.arrow(text.right, dit.left)
    d.shape((text.right[0] + dit.left[0]) / 2, y2 + 0.22, "(T_c, E)", ha="center")
    d.arrow(noise.bottom, (noise.x, dit.top[1]))
    d.text(noise.x + 0.1, (noise.bottom[1] + dit.top[1]) / 2, r"$z_t$ and $t$", ha="left", size=SMALL)
    loss = d.box(9.0, y2, r"$\|\hat z_0 - z_0\|^2$", w=1.3, h=0.44, role="loss")
    d.arrow(dit.right, loss.left)
    d.text((dit.right[0] + loss.left[0]) / 2, y2 + 0.2, r"$\hat z_0$", size=SMALL)
    d.text(dit.x, y2 - 0.55, "it predicts the clean latent (x0-prediction), not the noise", size=SMALL, italic=True)
    d.line([(0.15, 3.3), (9.85, 3.3)], lw=0.6)
    # sampling
    d.text(0.15, 3.05, "sampling", ha="left", bold=True)
    y3 = 2.15
    start = d.box(0.75, y3, r"$z_T \sim N(0, I)$", w=1.25, h=0.44, role="data", size=SMALL)
    d.frame(1.7, 1.3, 8.45, 2.9, label="one DDIM step, t → t′", repeat="× steps")
    uncond = d.box(3.0, y3 + 0.32, r"DiT($z_t$, $t$, $\varnothing$)", w=1.9, h=0.4, role="attn", size=SMALL)
    cond = d.box(3.0, y3 - 0.32, r"DiT($z_t$, $t$, caption)", w=1.9, h=0.4, role="attn", size=SMALL)
    d.arrow(start.right, (1.85, y3))
    d.line([(1.85, uncond.y), (1.85, cond.y)])
    d.arrow((1.85, uncond.y), uncond.left)
    d.arrow((1.85, cond.y), cond.left)
    guide = d.box(5.35, y3, r"$\hat z_0 = u + s\,(c - u)$", w=1.85, h=0.46, role="norm", size=SMALL)
    d.arrow(uncond.right, guide.at("left", 0.75), via=[(4.2, uncond.y), (4.2, guide.y + 0.115)])
    d.arrow(cond.right, guide.at("left", 0.25), via=[(4.2, cond.y), (4.2, guide.y - 0.115)])
    d.text(4.3, uncond.y + 0.02, "u", ha="left", size=SMALL)
    d.text(4.3, cond.y - 0.02, "c", ha="left", size=SMALL)
    ddim = d.box(7.4, y3, r"DDIM: $z_t \to z_{t'}$", w=1.5, h=0.46, role="neutral", size=SMALL)
    d.arrow(guide.right, ddim.left)
    d.text(5.35, y3 - 0.5, "guidance, scale s", size=SMALL, italic=True)
    # the last z0 → codes → image, from right to left underneath
    y4 = 0.55
    snap = d.box(8.6, y4, "snap to the\nnearest codes", w=1.4, h=0.6, role="gate", size=SMALL)
    d.arrow(ddim.bottom, snap.at("top", 0.3), via=[(ddim.x, y4 + 0.5), (snap.at("top", 0.3)[0], y4 + 0.5)])
    d.text(ddim.x - 0.1, 1.0, r"$z_0$ after the last step", ha="right", size=SMALL)
    dec = d.box(6.0, y4, "VQ-VAE decoder", w=1.6, h=0.44, role="mlp")
    d.arrow(snap.left, dec.right)
    out = d.box(4.15, y4, "image", w=1.0, h=0.44, role="data")
    d.arrow(dec.left, out.right)
    return d.fig
