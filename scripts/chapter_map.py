"""Draw the book's chapter map: the chapters, what each builds on, and the `utils` module it adds.

Run `python -m scripts.chapter_map` from the repository root to (re)write `book/figures/chapter_map.png`.
The drawing is deterministic (fixed layout, matplotlib's bundled DejaVu fonts, no timestamp in the
PNG metadata) and needs no network, so running it twice gives the same bytes. Before saving, it
checks that every label fits inside its box and that no two labels overlap.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch  # noqa: E402
from matplotlib.path import Path as MplPath  # noqa: E402
from matplotlib.text import Text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "book" / "figures" / "chapter_map.png"

# The axes use inches as data units, so sizes below are in inches. The figure is drawn to be read at
# about half its pixel width (a book column), hence the large type.
WIDTH_IN, HEIGHT_IN, DPI = 9.6, 8.22, 150  # 1440 x 1233 pixels
BOX_W, BOX_H = 2.84, 1.1
COL = [1.52, 4.8, 8.08]  # box centres of the three columns
ROW = [7.55, 5.83, 4.11, 2.39, 0.67]  # box centres of the five rows, top to bottom
GAP_Y = ROW[0] - ROW[1] - BOX_H  # empty band between two rows, where arrows turn and labels sit
TITLE_PT, SMALL_PT = 12.5, 11

# Palette: a soft fill and a darker edge for each strand of the book.
GROUPS = {
    "words": ("#e6eefb", "#3b6db3", "Words and sequences"),
    "attention": ("#fdf0dc", "#b8730f", "Attention and the Transformer"),
    "language": ("#fbe4e6", "#b8434f", "Language models"),
    "vision": ("#e2f3e6", "#2f8a4a", "Vision"),
    "clip": ("#eee6f7", "#6a479c", "Vision + language"),
}
EDGE_COLOR = "#4a4a4a"
TEXT_COLOR = "#1a1a1a"
LABEL_COLOR = "#333333"


@dataclass(frozen=True)
class Chapter:
    number: int
    title: str
    topics: str  # a few words on what the chapter covers
    modules: str  # the utils module(s) the chapter adds
    x: float  # centre of the box
    y: float
    group: str


# Three rows of the spine (1-3, then 4-6), then the fork: 7 (language) beside 8 (vision), 9 under 8,
# 10 beside 9, 11 (compressing the GPT) left of 7, and 12 (drawing from text) under 9.
CHAPTERS = [
    Chapter(1, "Words as vectors", "one-hot, co-occurrence, Word2Vec", "utils.text, utils.word2vec",
            COL[0], ROW[0], "words"),
    Chapter(2, "Recurrent networks", "RNN, backprop through time", "utils.rnn",
            COL[1], ROW[0], "words"),
    Chapter(3, "LSTM and GRU", "gates, long-range memory", "utils.rnn (LSTM, GRU)",
            COL[2], ROW[0], "words"),
    Chapter(4, "Sequence to sequence", "encoder-decoder, beam search", "utils.seq2seq",
            COL[0], ROW[1], "words"),
    Chapter(5, "Attention", "additive and dot-product", "utils.attention",
            COL[1], ROW[1], "attention"),
    Chapter(6, "The Transformer", "multi-head attention, LayerNorm", "utils.transformer",
            COL[2], ROW[1], "attention"),
    Chapter(7, "GPT", "BPE, sampling, GPT-2 weights", "utils.gpt, BPE in utils.text",
            COL[1], ROW[2], "language"),
    Chapter(8, "Vision Transformer", "patches, class token, attention", "utils.vit",
            COL[2], ROW[2], "vision"),
    Chapter(9, "CLIP", "contrastive training, zero-shot", "utils.clip",
            COL[2], ROW[3], "clip"),
    Chapter(10, "Vision + language", "visual tokens, gated x-attn", "utils.vlm",
            COL[1], ROW[3], "clip"),
    Chapter(11, "Small and fast", "quantize, prune, distil, draft", "utils.quantize, .compress",
            COL[0], ROW[2], "language"),
    Chapter(12, "Text to image", "VQ + GPT, diffusion, guidance", "utils.vq, utils.diffusion",
            COL[2], ROW[4], "clip"),
]

# (from, to, label on the arrow)
EDGES = [
    (1, 2, ""), (2, 3, ""), (3, 4, ""), (4, 5, ""), (5, 6, ""),
    (6, 7, "decoder blocks"), (6, 8, "encoder blocks"),
    (7, 9, "BPE, causal design"), (8, 9, "image tower"),
    (7, 10, ""), (9, 10, ""), (7, 11, ""), (9, 12, "text tower, reranking"),
]


def _draw_box(ax: plt.Axes, ch: Chapter) -> list[Text]:
    fill, edge, _ = GROUPS[ch.group]
    left, bottom = ch.x - BOX_W / 2, ch.y - BOX_H / 2
    ax.add_patch(FancyBboxPatch((left, bottom), BOX_W, BOX_H, boxstyle="round,pad=0,rounding_size=0.12",
                                facecolor=fill, edgecolor=edge, linewidth=2, zorder=2))
    title_y = ch.y + 0.27
    ax.add_patch(Circle((left + 0.25, title_y), 0.17, facecolor=edge, edgecolor="none", zorder=3))
    ax.text(left + 0.25, title_y - 0.005, str(ch.number), ha="center", va="center", color="white",
            fontsize=TITLE_PT, fontweight="bold", zorder=4)
    return [
        ax.text(left + 0.52, title_y, ch.title, ha="left", va="center", color=TEXT_COLOR,
                fontsize=TITLE_PT, fontweight="bold", zorder=4),
        ax.text(ch.x, ch.y - 0.1, ch.topics, ha="center", va="center", color="#505050",
                fontsize=SMALL_PT, style="italic", zorder=4),
        ax.text(ch.x, ch.y - 0.35, ch.modules, ha="center", va="center", color=edge,
                fontsize=SMALL_PT, family="DejaVu Sans Mono", zorder=4),
    ]


def _arrow(ax: plt.Axes, points: list[tuple[float, float]]) -> None:
    """An arrow along a polyline of straight segments, its head at the last point."""
    codes = [MplPath.MOVETO] + [MplPath.LINETO] * (len(points) - 1)
    ax.add_patch(FancyArrowPatch(path=MplPath(points, codes), arrowstyle="-|>,head_length=9,head_width=4.5",
                                 color=EDGE_COLOR, linewidth=2, zorder=1, shrinkA=0, shrinkB=0))


def _edge_label(ax: plt.Axes, x: float, y: float, text: str) -> Text:
    return ax.text(x, y, text, ha="center", va="center", fontsize=SMALL_PT, color=LABEL_COLOR, zorder=5,
                   bbox=dict(boxstyle="round,pad=0.2", facecolor="white", edgecolor="none"))


def _draw_edges(ax: plt.Axes) -> list[Text]:
    """Straight arrows along a row or down a column; one-bend elbows through the band between rows."""
    chapters = {ch.number: ch for ch in CHAPTERS}
    half_w, half_h, side = BOX_W / 2, BOX_H / 2, BOX_W / 4  # `side`: offset of an arrow from a box's centre
    labels = []
    for a, b, text in EDGES:
        src, dst = chapters[a], chapters[b]
        band_y = src.y - half_h - GAP_Y / 2  # middle of the band under the source row
        if src.y == dst.y:  # same row: left to right, or right to left (9 -> 10, 7 -> 11)
            sign = 1 if dst.x > src.x else -1
            _arrow(ax, [(src.x + sign * half_w, src.y), (dst.x - sign * half_w, dst.y)])
        elif src.x == dst.x:  # straight down the right-hand column (6 -> 8, 8 -> 9)
            x = src.x + side
            _arrow(ax, [(x, src.y - half_h), (x, dst.y + half_h)])
            if text:
                labels.append(_edge_label(ax, x, (src.y - half_h + dst.y + half_h) / 2, text))
        else:  # down into the band, across, and down into the next row (3 -> 4, 6 -> 7, 7 -> 9)
            x0 = src.x - side if src.x > dst.x else src.x
            x1 = dst.x - side if dst.x > src.x else dst.x
            _arrow(ax, [(x0, src.y - half_h), (x0, band_y), (x1, band_y), (x1, dst.y + half_h)])
            if text:
                labels.append(_edge_label(ax, (x0 + x1) / 2, band_y, text))
    return labels


def _draw_legend(ax: plt.Axes) -> list[Text]:
    """Swatches for the five strands and how to read an arrow and a box, in the empty lower-left corner."""
    texts = []
    x, row_gap = 0.2, 0.245
    top = ROW[2] - BOX_H / 2 - 0.25  # under chapter 11's box
    entries = list(GROUPS.values())
    for i, (fill, edge, name) in enumerate(entries):
        y = top - i * row_gap
        ax.add_patch(FancyBboxPatch((x, y - 0.1), 0.4, 0.2, boxstyle="round,pad=0,rounding_size=0.05",
                                    facecolor=fill, edgecolor=edge, linewidth=1.5))
        texts.append(ax.text(x + 0.55, y, name, ha="left", va="center", fontsize=SMALL_PT, color=LABEL_COLOR))
    y = top - len(entries) * row_gap
    _arrow(ax, [(x, y), (x + 0.4, y)])
    texts.append(ax.text(x + 0.55, y, "builds on", ha="left", va="center", fontsize=SMALL_PT, color=LABEL_COLOR))
    y -= row_gap
    texts.append(ax.text(x, y, "utils.x", ha="left", va="center", fontsize=SMALL_PT,
                         family="DejaVu Sans Mono", color="#505050"))
    texts.append(ax.text(x + 0.55 + 0.25, y, "module the chapter adds", ha="left", va="center",
                         fontsize=SMALL_PT, color=LABEL_COLOR))
    return texts


def _check_layout(fig: plt.Figure, boxed: dict[int, list[Text]], free: list[Text]) -> None:
    """Raise if a box's label spills out of its box or any two labels overlap (a guard for edits)."""
    renderer = fig.canvas.get_renderer()
    to_px = fig.dpi_scale_trans  # inches -> display pixels
    chapters = {ch.number: ch for ch in CHAPTERS}
    extents = []
    for number, texts in boxed.items():
        ch = chapters[number]
        (x0, y0), (x1, y1) = to_px.transform([(ch.x - BOX_W / 2 + 0.05, ch.y - BOX_H / 2),
                                              (ch.x + BOX_W / 2 - 0.05, ch.y + BOX_H / 2)])
        for t in texts:
            bb = t.get_window_extent(renderer)
            if bb.x0 < x0 or bb.x1 > x1 or bb.y0 < y0 or bb.y1 > y1:
                raise ValueError(f"chapter {number}: label {t.get_text()!r} does not fit in its box")
            extents.append((t.get_text(), bb))
    extents += [(t.get_text(), t.get_window_extent(renderer)) for t in free]
    for i, (name_a, a) in enumerate(extents):
        for name_b, b in extents[i + 1:]:
            if a.overlaps(b):
                raise ValueError(f"labels {name_a!r} and {name_b!r} overlap")
    width, height = fig.get_size_inches() * fig.dpi
    for name, bb in extents:
        if bb.x0 < 0 or bb.y0 < 0 or bb.x1 > width or bb.y1 > height:
            raise ValueError(f"label {name!r} runs off the figure")


def draw() -> plt.Figure:
    fig = plt.figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH_IN)
    ax.set_ylim(0, HEIGHT_IN)
    ax.set_aspect("equal")
    ax.axis("off")
    boxed = {ch.number: _draw_box(ax, ch) for ch in CHAPTERS}
    free = _draw_edges(ax) + _draw_legend(ax)
    fig.canvas.draw()
    _check_layout(fig, boxed, free)
    return fig


def main(output: Path = OUTPUT) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    # Pin the style so a user's matplotlibrc cannot change the drawing.
    with plt.style.context("default"), plt.rc_context({"font.family": "DejaVu Sans"}):
        fig = draw()
        fig.savefig(output, dpi=DPI, facecolor="white", metadata={"Software": None})
    plt.close(fig)
    return output


if __name__ == "__main__":
    out = main(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else OUTPUT)
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
