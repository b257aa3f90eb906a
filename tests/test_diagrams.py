"""Tests of utils.viz.diagrams: every diagram is a Figure, the same PNG on every run, with its text on the
canvas, its blocks apart, its labels either inside a block or clear of all blocks and of each other, no
arrow through a free label, and colours that read in light and in dark mode."""
from __future__ import annotations

import io
import itertools

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from utils import viz  # noqa: E402
from utils.viz import diagrams  # noqa: E402

DIAGRAMS = list(diagrams.DRAWINGS)
WHITE = "#ffffff"


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=diagrams.DPI)
    return buffer.getvalue()


def drawn(name: str) -> tuple[Figure, object]:
    fig = getattr(diagrams, name)()
    fig.canvas.draw()
    return fig, fig.canvas.get_renderer()


def blocks(fig: Figure, kind: str) -> list[Bbox]:
    return [p.get_window_extent() for ax in fig.axes for p in ax.patches
            if (p.get_gid() or "").startswith(kind + ":")]


def shrink(b: Bbox, px: float) -> Bbox:
    return Bbox.from_extents(b.x0 + px, b.y0 + px, b.x1 - px, b.y1 - px)


def contains(outer: Bbox, inner: Bbox) -> bool:
    return (outer.x0 <= inner.x0 + 0.5 and outer.y0 <= inner.y0 + 0.5
            and inner.x1 <= outer.x1 + 0.5 and inner.y1 <= outer.y1 + 0.5)


def texts(fig: Figure, renderer) -> list[tuple[str, Bbox]]:
    return [(t.get_text(), t.get_window_extent(renderer)) for ax in fig.axes for t in ax.texts if t.get_text()]


def test_every_drawing_function_is_listed_and_reachable_from_viz():
    assert viz.diagrams is diagrams
    for name in DIAGRAMS:
        assert callable(getattr(viz.diagrams, name))


@pytest.mark.parametrize("name", DIAGRAMS)
def test_diagram_is_a_deterministic_figure(name):
    a, b = getattr(diagrams, name)(), getattr(diagrams, name)()
    assert isinstance(a, Figure)
    assert a.get_facecolor()[3] == 0.0  # transparent: the page shows through, light or dark
    assert png(a) == png(b)


@pytest.mark.parametrize("name", DIAGRAMS)
def test_text_stays_on_the_canvas_and_clear_of_other_text(name):
    fig, renderer = drawn(name)
    canvas = fig.bbox
    labels = texts(fig, renderer)
    assert labels, "a diagram without labels"
    for text, box in labels:
        assert contains(canvas, box), f"{text!r} reaches outside the canvas: {box.extents} vs {canvas.extents}"
    for (ta, a), (tb, b) in itertools.combinations(labels, 2):
        assert not shrink(a, 1).overlaps(shrink(b, 1)), f"labels {ta!r} and {tb!r} overlap"


@pytest.mark.parametrize("name", DIAGRAMS)
def test_blocks_do_not_overlap_and_labels_sit_inside_or_clear(name):
    fig, renderer = drawn(name)
    boxes = blocks(fig, "box")
    frames = blocks(fig, "frame")
    assert boxes
    for a, b in itertools.combinations(boxes, 2):
        assert not shrink(a, 1).overlaps(shrink(b, 1)), f"blocks overlap: {a.extents} and {b.extents}"
    for frame in frames:  # a block is inside a frame or outside it, never across its outline
        for b in boxes:
            assert contains(frame, b) or not frame.overlaps(b), f"a block crosses a frame: {b.extents}"
    for text, t in texts(fig, renderer):
        for b in boxes + frames:
            assert contains(b, t) or not shrink(t, 1).overlaps(b), f"{text!r} lies across a block's edge"


def labels_crossed_by_arrows(fig: Figure, renderer) -> set[str]:
    """The free labels (not white-on-a-block) that some arrow passes through."""
    ax = fig.axes[0]
    free = [(t.get_text(), shrink(t.get_window_extent(renderer), 2)) for t in ax.texts
            if t.get_text() and t.get_color() != "white"]
    hit = set()
    for patch in ax.patches:
        if patch.get_gid() != "arrow":
            continue
        for line in patch.get_path().to_polygons(patch.get_transform(), closed_only=False):  # display coords
            for p, q in zip(line, line[1:]):
                for s in np.linspace(0, 1, 60):
                    x, y = p + s * (q - p)
                    hit.update(text for text, box in free if box.contains(x, y))
    return hit


def test_the_arrow_check_can_fail():
    d = diagrams.Diagram(3, 1)
    d.text(1.5, 0.5, "in the way")
    d.arrow((0.2, 0.5), (2.8, 0.5))
    d.fig.canvas.draw()
    assert labels_crossed_by_arrows(d.fig, d.fig.canvas.get_renderer()) == {"in the way"}


@pytest.mark.parametrize("name", DIAGRAMS)
def test_no_arrow_runs_through_a_free_label(name):
    fig, renderer = drawn(name)
    assert not labels_crossed_by_arrows(fig, renderer)


def test_palette_reads_in_light_and_dark_mode():
    for role, fill in diagrams.PALETTE.items():
        assert diagrams.contrast("white", fill) >= 4.5, f"white text on {role} is hard to read"
        assert diagrams.contrast(WHITE, fill) >= 3.0, f"{role} blocks fade on a white page"
        assert diagrams.contrast(diagrams.DARK_PAGE, fill) >= 2.0, f"{role} blocks fade on a dark page"
    for colour in (diagrams.INK, diagrams.GRADIENT, diagrams.TIE):
        assert diagrams.contrast(WHITE, colour) >= 3.5 and diagrams.contrast(diagrams.DARK_PAGE, colour) >= 3.5
    assert diagrams.contrast("#000000", "#ffffff") == pytest.approx(21.0)


def test_show_gives_the_notebook_a_sharp_png_at_natural_size():
    fig = diagrams.gpt_stack()
    image = diagrams.show(fig)
    assert image.format == "png" and image.data == diagrams.png(fig) and image.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.width == round(fig.get_figwidth() * diagrams.DPI)
    with pytest.raises(TypeError, match="needs a matplotlib Figure"):
        diagrams.png("not a figure")
    with pytest.raises(ValueError, match="scale must be positive"):
        diagrams.png(fig, scale=0)


def test_the_book_style_changes_nothing(recwarn):
    import matplotlib as mpl

    plain = diagrams.png(diagrams.transformer_encoder_decoder())
    with mpl.rc_context(viz.STYLE):  # constrained layout on, other sizes: a diagram's coordinates are its own
        styled = diagrams.png(diagrams.transformer_encoder_decoder())
    assert styled == plain
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="2 to 6 steps"):
        diagrams.rnn_bptt(steps=1)
    with pytest.raises(ValueError, match="2 to 6 pairs"):
        diagrams.clip_contrastive(batch=7)
    d = diagrams.Diagram(2, 1)
    with pytest.raises(ValueError, match="role must be one of"):
        d.box(1, 0.5, "x", role="purple")
    with pytest.raises(ValueError, match="positive size"):
        diagrams.Diagram(0, 1)
    with pytest.raises(ValueError, match="side must be"):
        diagrams.Box(0, 0, 1, 1).at("middle")


def test_box_anchors():
    b = diagrams.Box(1.0, 2.0, 0.5, 0.2)
    assert b.top == (1.0, 2.1) and b.bottom == (1.0, 1.9) and b.left == (0.75, 2.0) and b.right == (1.25, 2.0)
    assert b.at("top", 0.0) == pytest.approx((0.75, 2.1)) and b.extent == pytest.approx((0.75, 1.9, 1.25, 2.1))
