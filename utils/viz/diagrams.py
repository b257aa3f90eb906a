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
`vit_pipeline` (chapter 8) and `clip_contrastive` (chapter 9). Each returns a matplotlib `Figure` (not
registered with pyplot: a notebook shows it once, as the cell's value, and nothing piles up).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle
from matplotlib.path import Path
from matplotlib.text import Text

DRAWINGS = ("rnn_bptt", "transformer_encoder_decoder", "gpt_stack")  # the model diagrams, in chapter order
__all__ = ["PALETTE", "INK", "GRADIENT", "TIE", "DARK_PAGE", "DPI", "DRAWINGS", "contrast", "Box", "Diagram", *DRAWINGS]

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
        self.fig = Figure(figsize=(width, height), dpi=DPI, facecolor="none")
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
