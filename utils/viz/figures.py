"""The book's static figures: one look for every chapter.

`heatmap` draws matrices (co-occurrence counts, attention and alignment maps, confusion and similarity
matrices), `attention_grid` draws the attention maps of several heads side by side, `loss_curves` compares
training runs (`utils.train.History`), `scatter_2d` draws 2-D maps of embeddings with a readable subset of
labels, `accuracy_by_length` compares decoders by input length, `patch_grid` and `patch_sequence` show how
a Vision Transformer cuts an image into patches, `attention_on_images` draws attention over the patches on
the images themselves, `similarity_matrix` draws CLIP's image-caption similarities with thumbnails, and
`figure_to_png` turns a figure into PNG bytes (the explorers in `explorers.py` show figures that way).

Every function draws inside `style()` (the book's matplotlib rcParams, no seaborn), so figures look the
same whatever the notebook's global settings; `use_style()` applies the same settings globally.
Every function accepts NumPy arrays or torch tensors (on any device, with or without grad) and returns
the matplotlib Axes it drew on (`attention_grid`: the Figure), so a chapter can add to it.
"""
from __future__ import annotations

import functools
import io
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..train import History

# Line colours that stay apart for colour-blind readers: Okabe and Ito's palette ("Color Universal Design",
# 2002; yellow left out, too pale on white). tab10, matplotlib's default, puts its green beside its orange
# and red, which protan and deutan readers cannot tell apart. Runs drawn by `loss_curves` and
# `accuracy_by_length` also get a marker of their own, so no line is told from another by its colour alone.
CYCLE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
STYLE: dict[str, Any] = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "figure.figsize": (6.0, 4.0),
    "figure.constrained_layout.use": True,
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 10,
    "legend.frameon": False,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.8,
    "image.cmap": "viridis",
    "axes.prop_cycle": mpl.cycler(color=CYCLE),
}
HIGHLIGHT = "#d62728"  # the colour of emphasised points (tab10 red)
BASE = "#1f77b4"       # the colour of ordinary points (tab10 blue)

F = TypeVar("F", bound=Callable[..., Any])


def style() -> AbstractContextManager:
    """A context in which matplotlib uses the book's style: `with style(): ...`."""
    return plt.rc_context(STYLE)


def use_style() -> None:
    """Apply the book's style globally (for figures a chapter draws by hand)."""
    mpl.rcParams.update(STYLE)


def _styled(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with style():
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise TypeError(f"{name} is a complex tensor; plot its .abs() or .real")
        return x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a numeric array or tensor, got {type(x).__name__} ({err})") from err


def _new_axes(ax: Axes | None, figsize: tuple[float, float] | None = None) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _check_labels(labels: Sequence[Any] | None, n: int, what: str, per: str) -> list[str] | None:
    if labels is None:
        return None
    labels = [str(label) for label in labels]
    if len(labels) != n:
        raise ValueError(f"{what} has {len(labels)} labels but there are {n} {per}s; pass one label per {per}")
    return labels


def _thin(n: int, max_ticks: int) -> np.ndarray:
    """Tick positions: all of them, or every k-th so that at most `max_ticks` are shown."""
    return np.arange(0, n, max(1, -(-n // max_ticks)))


# The width (inches) at which a figure is shown at its own size in the book's text column (about 850 px
# at 100 dpi): figures sized to it keep their tick labels at the font size they were drawn with.
PAGE_WIDTH = 8.5


def _label_pitch(labels: Sequence[str], fontsize: float) -> float:
    """The room (inches) one tick label needs along an axis: short labels (up to 3 characters) are written
    across, longer ones are turned, so a line of text."""
    inch = fontsize / 72
    short = max((len(label) for label in labels if len(label) <= 3), default=1)
    return max(1.5, 0.62 * short + 0.8) * inch


# ----------------------------------------------------------------------------------------------

@_styled
def heatmap(matrix: Any, row_labels: Sequence[Any] | None = None, col_labels: Sequence[Any] | None = None,
            ax: Axes | None = None, cmap: str = "viridis", title: str | None = None, colorbar: bool = True,
            annotate: bool = False, fmt: str = ".2f", vmin: float | None = None, vmax: float | None = None,
            xlabel: str | None = None, ylabel: str | None = None, max_ticks: int = 60) -> Axes:
    """Draw a 2-D matrix (rows top to bottom, columns left to right) as an image.

    row_labels / col_labels: one per row / column (tokens, words, classes); with more than
    `max_ticks` of them only every k-th is written. annotate=True writes each value with `fmt`
    (for matrices up to 30 x 30) in black or white, whichever reads better on its cell.
    """
    data = _to_numpy(matrix, "matrix")
    if data.ndim != 2:
        hint = "; pick one map first, e.g. attn[0, head]" if data.ndim > 2 else ""
        raise ValueError(f"heatmap needs a 2-D matrix (rows, cols), got shape {tuple(data.shape)}{hint}")
    if data.size == 0:
        raise ValueError(f"heatmap got an empty matrix of shape {tuple(data.shape)}")
    rows, cols = data.shape
    row_labels = _check_labels(row_labels, rows, "row_labels", "row")
    col_labels = _check_labels(col_labels, cols, "col_labels", "column")
    if annotate and rows * cols > 900:
        raise ValueError(f"annotate=True would write {rows * cols} numbers on a {rows}x{cols} matrix; "
                         "annotate matrices up to 30x30, or slice the part you want to read")
    fontsize = mpl.rcParams["xtick.labelsize"]
    fontsize = fontsize if isinstance(fontsize, (int, float)) else 10.0
    if ax is None:  # sized to its labels (every one written when they fit in the page width), else to its cells
        width = (_label_pitch(col_labels, fontsize) * cols + 2.5) if col_labels is not None else 0.35 * cols + 2.5
        height = (_label_pitch(["x"], fontsize) * rows + 1.5) if row_labels is not None else 0.35 * rows + 1.5
        ax = _new_axes(None, (max(4.0, min(PAGE_WIDTH, width)), max(3.0, min(10.0, height))))
        room = max(1.0, min(width, PAGE_WIDTH) - 2.5)  # the axes' width: the figure's less its margins
        if col_labels is not None:
            max_ticks = min(max_ticks, max(2, int(room / _label_pitch(col_labels, fontsize) + 0.01)))
    image = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.grid(False)
    if col_labels is not None:
        ticks = _thin(cols, max_ticks)
        long = max(len(col_labels[i]) for i in ticks) > 3
        ax.set_xticks(ticks, [col_labels[i] for i in ticks], rotation=90 if long else 0)
    if row_labels is not None:
        ticks = _thin(rows, max_ticks)
        ax.set_yticks(ticks, [row_labels[i] for i in ticks])
    if annotate:
        rgba = image.cmap(image.norm(data))  # the colour of every cell
        luminance = rgba[..., :3] @ np.array([0.299, 0.587, 0.114])
        for i in range(rows):
            for j in range(cols):
                value = data[i, j]
                dark = np.isfinite(value) and luminance[i, j] < 0.5
                ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    if colorbar:
        ax.figure.colorbar(image, ax=ax, shrink=0.9)
    if title:
        ax.set_title(title)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    return ax


def _as_history(run: Any, name: str) -> History | np.ndarray:
    if isinstance(run, History):
        return run
    if isinstance(run, Mapping):
        return History.from_dict(run)
    values = _to_numpy(run, f"histories[{name!r}]")
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"histories[{name!r}] must be a History, a History.to_dict() dict or a non-empty "
                         f"1-D list of losses, got shape {tuple(values.shape)}")
    return values


@_styled
def loss_curves(histories: Mapping[str, History | Mapping[str, Any] | Sequence[float]], ax: Axes | None = None,
                x: str = "step", ylabel: str = "loss (nats)", eval_metrics: Sequence[str] | None = None,
                logy: bool = False, title: str | None = None) -> Axes:
    """Train (solid) and evaluation (dashed, dots) curves of several runs, one colour per run.

    histories:    {run name: History}; a History.to_dict() dict or a plain list of per-step losses
                  (plotted at steps 1, 2, ...) work too.
    x:            "step" or "seconds" (training time, to compare runs at equal time).
    eval_metrics: which evaluation metrics to draw; default: every metric whose name contains "loss".
    """
    if x not in ("step", "seconds"):
        raise ValueError(f"x must be 'step' or 'seconds', got {x!r}")
    if not isinstance(histories, Mapping) or not histories:
        raise ValueError("histories must be a non-empty dict {run name: History or list of losses}")
    ax = _new_axes(ax)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, run) in enumerate(histories.items()):
        color = colors[i % len(colors)]
        # a second cue besides the colour when several runs share the axes: the run's own marker, about 12 per line
        marked = {} if len(histories) == 1 else dict(marker=MARKERS[i % len(MARKERS)], markersize=5)
        run = _as_history(run, name)
        if isinstance(run, np.ndarray):
            if x == "seconds":
                raise ValueError(f"histories[{name!r}] is a plain list of losses with no times; "
                                 "use x='step' or pass the History")
            ax.plot(np.arange(1, run.size + 1), run, color=color, label=str(name),
                    **marked, **({"markevery": max(1, run.size // 12)} if marked else {}))
            continue
        drawn = 0
        xs, ys = run.series("loss", x)
        if xs:
            ax.plot(xs, ys, color=color, label=f"{name} (train)",
                    **marked, **({"markevery": max(1, len(xs) // 12)} if marked else {}))
            drawn += 1
        names = list(dict.fromkeys(k for r in run.eval for k in r.metrics))
        wanted = [m for m in names if "loss" in m] if eval_metrics is None else list(eval_metrics)
        unknown = [m for m in wanted if m not in names]
        if eval_metrics is not None and unknown:
            raise KeyError(f"histories[{name!r}] has no evaluation metric(s) {unknown}; it has {names}")
        for j, metric in enumerate(wanted):
            xs, ys = run.series(metric, x)
            ax.plot(xs, ys, color=color, linestyle=["--", ":", "-."][j % 3], marker=marked.get("marker", "o"),
                    markersize=3 if not marked else 4, label=f"{name} ({metric})")
            drawn += 1
        if drawn == 0:
            raise ValueError(f"histories[{name!r}] recorded nothing to plot (no train records, no evaluations)")
    ax.set_xlabel("step" if x == "step" else "training time (s)")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend()
    return ax


@_styled
def scatter_2d(points: Any, labels: Sequence[Any] | None = None, highlight: Sequence[Any] | None = None,
               ax: Axes | None = None, max_labels: int = 30, title: str | None = None,
               min_label_distance: float = 0.03) -> Axes:
    """A 2-D map of N points (e.g. word vectors after PCA) with a readable subset of text labels.

    Labels are written for every highlighted point (drawn larger, in red) and then for points in the
    given order (pass the most important first, e.g. words by frequency) until `max_labels` are written,
    skipping any that would sit within `min_label_distance` (a fraction of the plot's size) of a
    label already written, so the labels never merge into a blob.
    """
    xy = _to_numpy(points, "points")
    if xy.ndim != 2 or xy.shape[1] != 2:
        hint = (f"; reduce the {xy.shape[1]}-D vectors to 2-D first (e.g. PCA)"
                if xy.ndim == 2 else "")
        raise ValueError(f"points must have shape (N, 2), got {tuple(xy.shape)}{hint}")
    if xy.shape[0] == 0:
        raise ValueError("points is empty: nothing to draw")
    if not isinstance(max_labels, int) or max_labels < 0:
        raise ValueError(f"max_labels must be an int >= 0, got {max_labels!r}")
    n = xy.shape[0]
    labels = _check_labels(labels, n, "labels", "point")
    chosen = np.zeros(n, dtype=bool)
    if highlight is not None:
        if labels is None:
            raise ValueError("highlight names labels to emphasise, so labels= must be given too")
        wanted = {str(h) for h in highlight}
        unknown = sorted(wanted - set(labels))
        if unknown:
            raise ValueError(f"highlight has label(s) that are not in labels: {unknown[:10]}")
        chosen = np.array([label in wanted for label in labels])

    ax = _new_axes(ax, (7.0, 6.0))
    ax.scatter(xy[~chosen, 0], xy[~chosen, 1], s=14, color=BASE, alpha=0.6, linewidths=0)
    if chosen.any():
        ax.scatter(xy[chosen, 0], xy[chosen, 1], s=45, color=HIGHLIGHT, edgecolors="black",
                   linewidths=0.5, zorder=3)
    if labels is not None:
        span = np.ptp(xy, axis=0)
        span[span == 0] = 1.0
        unit = xy / span  # distances as fractions of the plot's width and height
        placed: list[np.ndarray] = []
        order = [*np.flatnonzero(chosen), *np.flatnonzero(~chosen)]
        n_plain = 0
        for i in order:
            if not chosen[i]:
                if n_plain >= max_labels:
                    break
                if placed and np.min(np.linalg.norm(np.array(placed) - unit[i], axis=1)) < min_label_distance:
                    continue
                n_plain += 1
            placed.append(unit[i])
            ax.annotate(labels[i], xy[i], xytext=(3, 3), textcoords="offset points",
                        fontsize=10 if chosen[i] else 9, color=HIGHLIGHT if chosen[i] else "0.15",
                        fontweight="bold" if chosen[i] else "normal")
    if title:
        ax.set_title(title)
    return ax


def figure_to_png(fig: Figure | Axes, dpi: int | None = None) -> bytes:
    """The figure as PNG bytes (for `ipywidgets.Image(value=...)`); the figure is closed, so it is not
    also drawn below the cell and does not pile up in memory."""
    if isinstance(fig, Axes):
        fig = fig.figure
    if not isinstance(fig, Figure):
        raise TypeError(f"figure_to_png needs a matplotlib Figure or Axes, got {type(fig).__name__}")
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi or STYLE["savefig.dpi"])
    finally:
        plt.close(fig)
    return buffer.getvalue()


@_styled
def accuracy_by_length(runs: Mapping[str, tuple[Any, Any]], bins: int | Sequence[float] | None = None,
                       ax: Axes | None = None, xlabel: str = "input length (characters)",
                       ylabel: str = "exact match", title: str | None = None, min_count: int = 10) -> Axes:
    """Accuracy against input length for several models on one axes (e.g. seq2seq with and without attention).

    runs: {model name: (lengths, correct)}, two 1-D arrays over the same test examples: each example's
          length (or any size measure, e.g. the number of dates) and whether the model got it right
          (bool or 0/1).
    bins: None: one point per distinct length; an int: that many equal-width bins over all runs'
          lengths; a sequence: the bin edges. A point is the fraction correct in its bin, drawn at the
          bin's mean length; bins with fewer than `min_count` examples are left out (too noisy).
    """
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError("runs must be a non-empty dict {model name: (lengths, correct)}")
    data = {}
    for name, run in runs.items():
        if not isinstance(run, (tuple, list)) or len(run) != 2:
            raise ValueError(f"runs[{name!r}] must be a pair (lengths, correct)")
        lengths, correct = _to_numpy(run[0], f"runs[{name!r}] lengths"), _to_numpy(run[1], f"runs[{name!r}] correct")
        if lengths.ndim != 1 or lengths.shape != correct.shape or lengths.size == 0:
            raise ValueError(f"runs[{name!r}]: lengths and correct must be non-empty 1-D arrays of the same size, "
                             f"got shapes {tuple(lengths.shape)} and {tuple(correct.shape)}")
        if not np.isin(correct, (0.0, 1.0)).all():
            raise ValueError(f"runs[{name!r}]: correct must be booleans or 0/1")
        data[name] = (lengths, correct)
    if not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be a positive int, got {min_count!r}")
    everything = np.concatenate([lengths for lengths, _ in data.values()])
    if bins is None:
        edges = None
    elif isinstance(bins, int):
        if bins < 1:
            raise ValueError(f"bins must be ≥ 1, got {bins}")
        edges = np.linspace(everything.min(), everything.max() + 1e-9, bins + 1)
    else:
        edges = _to_numpy(bins, "bins")
        if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
            raise ValueError("bins as a sequence must be at least two increasing bin edges")
    ax = _new_axes(ax, (6.5, 4.0))
    for i, (name, (lengths, correct)) in enumerate(data.items()):
        groups = (np.searchsorted(edges, lengths, side="right") - 1) if edges is not None else lengths
        if edges is not None:  # the last edge closes the last bin; outside values are dropped
            groups = np.where(lengths == edges[-1], edges.size - 2, groups)
            inside = (groups >= 0) & (groups < edges.size - 1)
            groups, lengths, correct = groups[inside], lengths[inside], correct[inside]
        xs, ys = [], []
        for g in np.unique(groups):
            sel = groups == g
            if sel.sum() >= min_count:
                xs.append(lengths[sel].mean())
                ys.append(correct[sel].mean())
        if not xs:
            raise ValueError(f"runs[{name!r}]: no bin has at least min_count={min_count} examples; "
                             "use fewer bins or a smaller min_count")
        ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], markersize=5, label=str(name))  # colour and marker per model
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(mpl.ticker.PercentFormatter(1.0))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend()
    return ax


def _image_hwc(image: Any, name: str = "image") -> np.ndarray:
    """One image as an (H, W, C) float array, C = 1 or 3: from (H, W), (H, W, C) or (C, H, W), NumPy or torch.
    uint8 images are scaled to [0, 1]; float images are drawn as they are (RGB must lie in [0, 1])."""
    is_uint8 = getattr(image, "dtype", None) in (np.uint8, torch.uint8)
    data = _to_numpy(image, name)
    if data.ndim == 2:
        data = data[..., None]  # (height, width) → (height, width, 1)
    elif data.ndim == 3 and data.shape[0] in (1, 3) and data.shape[-1] not in (1, 3):
        data = data.transpose(1, 2, 0)  # (C, height, width) → (height, width, C)
    if data.ndim != 3 or data.shape[-1] not in (1, 3) or 0 in data.shape:
        raise ValueError(f"{name} must be one image of shape (H, W), (H, W, 3) or (3, H, W), got shape "
                         f"{tuple(_to_numpy(image, name).shape)}; for a batch, pick one image first, e.g. images[0]")
    if is_uint8:
        data = data / 255.0
    elif data.shape[-1] == 3 and (data.min() < 0.0 or data.max() > 1.0):
        raise ValueError(f"{name}: an RGB float image must lie in [0, 1], got values in [{data.min():.3g}, "
                         f"{data.max():.3g}]; divide uint8 pixels by 255 or undo the normalisation")
    return data


def _patch_size_ok(data: np.ndarray, patch_size: Any, name: str) -> int:
    H, W = data.shape[:2]
    if not isinstance(patch_size, (int, np.integer)) or isinstance(patch_size, bool) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    if H % patch_size or W % patch_size:
        raise ValueError(f"{name} is {H}×{W} pixels, not divisible by the patch size {patch_size}; crop it to a "
                         f"multiple of {patch_size} or choose a patch size dividing both sides")
    return int(patch_size)


def patch_sequence(image: Any, patch_size: int) -> np.ndarray:
    """The image's P×P patches as the rows of a matrix, as a Vision Transformer reads them: (N, P·P, C), patches
    numbered row by row, each patch's pixels row by row (C = 1 or 3 channels kept last, so a row can be drawn).
    The model's input vector of a patch is this row with the channels flattened too (`utils.vit.patchify`
    puts channel first: all of red, then green, then blue)."""
    data = _image_hwc(image)
    P = _patch_size_ok(data, patch_size, "image")
    H, W, C = data.shape
    grid = data.reshape(H // P, P, W // P, P, C)  # (rows, P, cols, P, C)
    return grid.transpose(0, 2, 1, 3, 4).reshape((H // P) * (W // P), P * P, C)  # (N, P·P, C)


def _show(ax: Axes, data: np.ndarray, cmap: str, vmin: float, vmax: float, **kw: Any) -> None:
    if data.shape[-1] == 1:
        ax.imshow(data[..., 0], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", **kw)
    else:
        ax.imshow(data, interpolation="nearest", **kw)


@_styled
def patch_grid(image: Any, patch_size: int, patch: int | None = None, cmap: str = "gray",
               title: str | None = None, numbers: bool | None = None, grid_color: str = "white",
               figsize: tuple[float, float] = (11.0, 4.0)) -> Figure:
    """An image cut into P×P patches, in three panels: the image with the patch grid drawn on it; the chosen
    patch enlarged; and the sequence of flattened patches (one row per patch, its P·P pixels left to right),
    which is what the Vision Transformer reads (Dosovitskiy et al. 2021, eq. 1). The chosen patch (`patch`,
    its index in the sequence; default: the one at the image's centre) is outlined in both views.

    image: (H, W) grey, (H, W, 3) or (3, H, W) RGB, NumPy or torch; H and W divisible by `patch_size`.
    numbers: write each patch's index in its cell (default: when there are at most 64 patches).
    grid_color: the colour of the grid lines (white suits photos; e.g. viz.BASE on white paper).
    Returns the Figure; its axes are (image, patch, sequence).
    """
    data = _image_hwc(image)
    P = _patch_size_ok(data, patch_size, "image")
    H, W, C = data.shape
    rows, cols = H // P, W // P
    N = rows * cols
    if patch is None:
        patch = (rows // 2) * cols + cols // 2
    if not isinstance(patch, (int, np.integer)) or isinstance(patch, bool) or not 0 <= patch < N:
        raise ValueError(f"patch must be an index in [0, {N}) for a {rows}×{cols} grid of {P}-pixel patches, "
                         f"got {patch!r}")
    numbers = N <= 64 if numbers is None else numbers
    r, c = divmod(int(patch), cols)
    vmin, vmax = float(data.min()), float(data.max())
    sequence = patch_sequence(data, P)  # (N, P·P, C)

    fig = plt.figure(figsize=figsize)
    grid = fig.add_gridspec(1, 3, width_ratios=[1.0, 0.55, 1.15])
    ax_img, ax_patch, ax_seq = (fig.add_subplot(grid[0, i]) for i in range(3))
    _show(ax_img, data, cmap, vmin, vmax)
    line = dict(color=grid_color, lw=0.6 if max(rows, cols) > 16 else 0.9, alpha=0.85)
    for k in range(1, cols):
        ax_img.axvline(k * P - 0.5, **line)
    for k in range(1, rows):
        ax_img.axhline(k * P - 0.5, **line)
    if numbers:
        for n in range(N):
            i, j = divmod(n, cols)
            ax_img.text(j * P + 0.06 * P - 0.5, i * P + 0.06 * P - 0.5, str(n), fontsize=7, ha="left", va="top",
                        color="white", bbox=dict(boxstyle="square,pad=0.1", fc="black", ec="none", alpha=0.45))
    ax_img.add_patch(mpl.patches.Rectangle((c * P - 0.5, r * P - 0.5), P, P, fill=False, ec=HIGHLIGHT, lw=2.2))
    ax_img.set_title(f"{H}×{W} image:\n{rows}×{cols} grid of {P}×{P} patches")

    _show(ax_patch, data[r * P:(r + 1) * P, c * P:(c + 1) * P], cmap, vmin, vmax)
    for spine in ax_patch.spines.values():
        spine.set(visible=True, color=HIGHLIGHT, lw=2.2)
    ax_patch.set_title(f"patch {patch}\n(row {r}, column {c})")

    _show(ax_seq, sequence, cmap, vmin, vmax, aspect="auto")
    ax_seq.add_patch(mpl.patches.Rectangle((-0.5, patch - 0.5), P * P, 1, fill=False, ec=HIGHLIGHT,
                                           lw=2.2, clip_on=False))
    ax_seq.annotate(f"patch {patch}", xy=(P * P - 0.5, patch), xytext=(1.03, patch),
                    textcoords=("axes fraction", "data"), ha="left", va="center", color=HIGHLIGHT, fontsize=9,
                    fontweight="bold", arrowprops=dict(arrowstyle="->", color=HIGHLIGHT, lw=1.2))
    channels = f" × {C} channels" if C > 1 else ""
    ax_seq.set_title(f"the sequence: {N} patches,\neach {P}·{P}{channels} = {P * P * C} numbers")
    ax_seq.set_xlabel(f"pixel within the patch (row by row, {P * P})")
    ax_seq.set_ylabel("patch = position in the sequence")
    ax_seq.set_yticks(_thin(N, 12))
    ax_seq.set_xticks(_thin(P * P, 6))
    for ax in (ax_img, ax_patch):
        ax.set_xticks([])
        ax.set_yticks([])
    for spine in ax_img.spines.values():
        spine.set_visible(False)
    for ax in (ax_img, ax_patch, ax_seq):
        ax.grid(False)
    if title:
        fig.suptitle(title)
    return fig


@_styled
def attention_on_images(images: Any, maps: Any, row_labels: Sequence[str] | None = None,
                        col_titles: Sequence[str] | None = None, cmap: str = "inferno", image_cmap: str = "gray",
                        alpha: float = 0.6, outline: str = "cyan", panel: float = 1.7,
                        title: str | None = None) -> Figure:
    """Attention over a grid of patches drawn on the images it came from (e.g. what a Vision Transformer's
    class token attends to, per head, and its attention rollout): one row per image, its first panel the image
    alone, then one panel per map, each (G_h, G_w) map stretched over the image, patch by patch: for a grey
    image the map with the image's outline (contour at half its range, colour `outline`) on top, for a colour
    image the map (opacity `alpha`) over a faded copy. Each map is scaled to its own maximum, so the panels
    compare where the weight goes, not how much of it there is.

    images: n images (n, H, W), (n, H, W, 3) or (n, 3, H, W); maps: (n, K, G_h, G_w) with H, W multiples of
    G_h, G_w; row_labels: n (e.g. "label 3, predicted 3"); col_titles: K (e.g. "head 0", ..., "rollout").
    Returns the Figure.
    """
    imgs = _to_numpy(images, "images")
    if imgs.ndim == 4 and imgs.shape[1] in (1, 3) and imgs.shape[-1] not in (1, 3):
        imgs = imgs.transpose(0, 2, 3, 1)  # (n, C, H, W) → (n, H, W, C)
    if imgs.ndim == 3:
        imgs = imgs[..., None]
    if imgs.ndim != 4 or imgs.shape[-1] not in (1, 3) or 0 in imgs.shape:
        raise ValueError(f"images must be n images (n, H, W), (n, H, W, 3) or (n, 3, H, W), got shape "
                         f"{tuple(_to_numpy(images, 'images').shape)}")
    data = _to_numpy(maps, "maps")
    if data.ndim == 3:
        data = data[:, None]
    n, H, W = imgs.shape[:3]
    if data.ndim != 4 or data.shape[0] != n or 0 in data.shape:
        raise ValueError(f"maps must have shape (n, K, G_h, G_w) with n={n} images, got {tuple(data.shape)}")
    K, Gh, Gw = data.shape[1:]
    if H % Gh or W % Gw:
        raise ValueError(f"a {Gh}×{Gw} map does not tile a {H}×{W} image (the sides must be multiples of the grid)")
    row_labels = _check_labels(row_labels, n, "row_labels", "image")
    col_titles = _check_labels(col_titles, K, "col_titles", "map")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    fig, axes = plt.subplots(n, K + 1, figsize=(panel * (K + 1), panel * n + (0.4 if title else 0.0) + 0.3),
                             squeeze=False)
    for i in range(n):
        image = imgs[i]
        shown = image[..., 0] if image.shape[-1] == 1 else image
        kw = dict(cmap=image_cmap) if image.shape[-1] == 1 else {}
        axes[i, 0].imshow(shown, interpolation="nearest", **kw)
        for k in range(K):
            m = data[i, k]
            m = m / m.max() if m.max() > 0 else m
            big = np.kron(m, np.ones((H // Gh, W // Gw)))  # (height, width): each patch's weight over its pixels
            ax = axes[i, k + 1]
            if image.shape[-1] == 1:  # grey: the map, and the image's outline (half its range) over it
                ax.imshow(big, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
                ax.contour(shown, levels=[0.5 * (shown.min() + shown.max())], colors=[outline], linewidths=1.3)
            else:  # colour: the map over a faded copy of the image
                ax.imshow(shown, interpolation="nearest", alpha=0.45)
                ax.imshow(big, cmap=cmap, vmin=0.0, vmax=1.0, alpha=alpha, interpolation="nearest")
            if i == 0 and col_titles:
                ax.set_title(col_titles[k], fontsize=10)
        if row_labels:
            axes[i, 0].set_ylabel(row_labels[i], fontsize=9)
        if i == 0:
            axes[i, 0].set_title("image", fontsize=10)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------------------------- attention

def _attention_stack(attn: Any, name: str) -> np.ndarray:
    """attn as a float array; a list/tuple of per-layer tensors is stacked along a new first axis."""
    if isinstance(attn, (list, tuple)) and attn and all(isinstance(a, (torch.Tensor, np.ndarray)) for a in attn):
        layers = [_to_numpy(a, f"{name}[{i}]") for i, a in enumerate(attn)]
        shapes = {layer.shape for layer in layers}
        if len(shapes) != 1:
            raise ValueError(f"{name}: the per-layer maps have different shapes {sorted(shapes)}; "
                             "every layer must have the same (H, T, S)")
        return np.stack(layers)
    return _to_numpy(attn, name)


def _grid_shape(n: int, ncols: int | None) -> tuple[int, int]:
    if ncols is None:
        rows = -(-n // 4)
        ncols = -(-n // rows)  # 6 heads -> 2 x 3, 8 -> 2 x 4, 12 -> 3 x 4
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    ncols = min(ncols, n)
    return -(-n // ncols), ncols


@_styled
def attention_grid(attn: Any, query_labels: Sequence[Any] | None = None, key_labels: Sequence[Any] | None = None,
                   titles: Sequence[str] | None = None, ncols: int | None = None, ax: Axes | None = None,
                   figsize: tuple[float, float] | None = None, max_ticks: int = 40, vmin: float | None = 0.0,
                   vmax: float | None = 1.0, cmap: str = "viridis", title: str | None = None,
                   xlabel: str | None = "key", ylabel: str | None = "query") -> Figure:
    """Attention maps, one heatmap per head: row t is how query t spreads its weight over the keys
    (softmax(q·k/√D) of Vaswani et al. 2017, eq. 1; Bahdanau et al. 2015's alignment a_ts is the one-head case).

    attn:         (H, T, S) for H heads, T queries and S keys, or (T, S) for one map; NumPy or torch.
    query_labels: T labels for the rows (the tokens doing the attending), key_labels: S for the columns.
    titles:       one per head (default "head 0", "head 1", ... when H > 1).
    ncols:        heads per row (default: at most 4, rows as even as possible).
    ax:           draw a single map (H = 1) into this Axes instead of a new figure.
    The colour range is vmin..vmax (0..1 by default, so maps compare; None: the data's range), with one
    shared colour bar. The figure is sized so that every tick label is written when the maps fit in the
    page width (`PAGE_WIDTH`), with as many heads per row as fit; otherwise (and at most `max_ticks` per
    axis) a label every k-th row/column. Labels are written on the outer maps only. Returns the Figure.
    """
    data = _to_numpy(attn, "attn")
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        hint = "; pick one layer or one batch element first, e.g. attn[0]" if data.ndim > 3 else ""
        raise ValueError(f"attn must have shape (H, T, S) or (T, S), got {tuple(data.shape)}{hint}")
    if data.size == 0:
        raise ValueError(f"attn is empty: shape {tuple(data.shape)}")
    H, T, S = data.shape
    query_labels = _check_labels(query_labels, T, "query_labels", "query row")
    key_labels = _check_labels(key_labels, S, "key_labels", "key column")
    if titles is None:
        titles = [f"head {h}" for h in range(H)] if H > 1 else [None]
    else:
        titles = [str(t) for t in titles]
        if len(titles) != H:
            raise ValueError(f"titles has {len(titles)} entries but attn has {H} heads; pass one title per head")
    if not isinstance(max_ticks, int) or max_ticks < 1:
        raise ValueError(f"max_ticks must be a positive int, got {max_ticks!r}")
    if ax is not None and H != 1:
        raise ValueError(f"ax= takes one map but attn has {H} heads; leave ax=None to get a grid of heads, "
                         "or pass one head, e.g. attn[h]")

    fixed_cols = ncols
    rows, ncols = _grid_shape(H, ncols)
    fontsize = 9.0 if H == 1 else 8.0
    inch = fontsize / 72  # one line of tick-label text, in inches
    k_long = max((len(label) for label in key_labels), default=1) if key_labels else 1
    q_long = max((len(label) for label in query_labels), default=1) if query_labels else 1
    k_short = max((len(label) for label in key_labels if len(label) <= 3), default=1) if key_labels else 1
    across = k_long <= 3  # key labels up to 3 characters are written across, longer ones (<eos>) turned
    pitch_x = max(1.5, 0.62 * k_short + 0.8) * inch  # the room one key label needs
    pitch_y = 1.5 * inch
    if ax is not None:
        fig, axes = ax.figure, [ax]
        bbox = ax.get_window_extent().transformed(fig.dpi_scale_trans.inverted())
        map_w, map_h = 0.85 * bbox.width, 0.85 * bbox.height
    else:
        x_extent = 0.3 if across else 0.62 * min(k_long, 20) * inch + 0.1  # below the maps: tick labels
        left = 0.62 * min(q_long, 20) * inch + 0.5  # tick labels and "query"
        if figsize is None:
            # Every label when the maps fit in the page width (PAGE_WIDTH) at one label per pitch: as many heads
            # per row as fit that way (at most the default); a map too wide even alone gets a label every k.
            need_w = max(1.5, pitch_x * S)
            if fixed_cols is None:
                fits = ncols
                while fits > 1 and left + fits * (need_w + 0.2) + 0.9 > PAGE_WIDTH:
                    fits -= 1
                alone = left + need_w + 0.2 + 0.9 <= PAGE_WIDTH  # one map shows every label
                ncols = fits if alone else min(ncols, 2)  # else a label every k, in a grid that stays compact
                rows = -(-H // ncols)
            map_w = float(min(need_w, max(1.5, (PAGE_WIDTH - left - 0.9) / ncols - 0.2)))
            map_h = float(np.clip(pitch_y * T, 1.5, 9.0 if H == 1 else max(3.0, 1.2 * map_w)))
            figsize = (left + ncols * (map_w + 0.2) + 0.9,
                       rows * (map_h + 0.35) + x_extent + 0.45 + (0.4 if title else 0.0))
        else:
            map_w = (figsize[0] - left - 0.9) / ncols - 0.2
            map_h = (figsize[1] - x_extent - 0.45 - (0.4 if title else 0.0)) / rows - 0.35
        fig, grid = plt.subplots(rows, ncols, figsize=figsize, squeeze=False)
        for extra in grid.ravel()[H:]:
            fig.delaxes(extra)
        axes = list(grid.ravel()[:H])
    x_ticks = min(max_ticks, max(2, int(map_w / pitch_x + 0.01)))
    y_ticks = min(max_ticks, max(2, int(map_h / pitch_y + 0.01)))

    image = None
    for h, a in enumerate(axes):
        heatmap(data[h], query_labels, key_labels, ax=a, cmap=cmap, title=titles[h], colorbar=False,
                vmin=vmin, vmax=vmax, max_ticks=max_ticks)
        if key_labels is not None:
            ticks = _thin(S, x_ticks)
            a.set_xticks(ticks, [key_labels[i] for i in ticks])
            for label in a.get_xticklabels():
                label.set_rotation(0 if len(label.get_text()) <= 3 else 90)
        if query_labels is not None:
            ticks = _thin(T, y_ticks)
            a.set_yticks(ticks, [query_labels[i] for i in ticks])
        a.tick_params(labelsize=fontsize, length=2)
        image = a.images[-1]
        first_col, bottom = h % ncols == 0, h + ncols >= H
        if not first_col:
            a.tick_params(labelleft=False)
        elif ylabel:
            a.set_ylabel(ylabel)
        if not bottom:
            a.tick_params(labelbottom=False)
        elif xlabel:
            a.set_xlabel(xlabel)
    fig.colorbar(image, ax=axes, shrink=0.9 if rows == 1 else 0.6, aspect=20 if rows == 1 else 35,
                 pad=0.02 if ncols > 1 else 0.04)
    if title:
        fig.suptitle(title)
    return fig


def _thumbnails(images: Any, name: str = "images") -> np.ndarray:
    """Images as (N, h, w, 3) floats in [0, 1]: from (N, 3, h, w) or (N, h, w, 3), 1 channel or 3, uint8 (0..255)
    or floats (kept if they lie in [0, 1], else each image is stretched to [0, 1] by its own min and max)."""
    is_uint8 = (isinstance(images, torch.Tensor) and images.dtype == torch.uint8) or \
        (isinstance(images, np.ndarray) and images.dtype == np.uint8)
    data = _to_numpy(images, name)
    if data.ndim == 3:
        data = data[..., None]  # (N, h, w) grey → (N, h, w, 1)
    elif data.ndim == 4 and data.shape[1] in (1, 3) and data.shape[-1] not in (1, 3):
        data = data.transpose(0, 2, 3, 1)  # (N, C, h, w) → (N, h, w, C)
    if data.ndim != 4 or data.shape[-1] not in (1, 3) or 0 in data.shape:
        raise ValueError(f"{name} must be a batch of images (N, 3, h, w), (N, h, w, 3) or (N, h, w), got shape "
                         f"{tuple(_to_numpy(images, name).shape)}")
    if is_uint8:
        data = data / 255.0
    elif data.min() < 0.0 or data.max() > 1.0:
        lo = data.min(axis=(1, 2, 3), keepdims=True)
        data = (data - lo) / np.maximum(data.max(axis=(1, 2, 3), keepdims=True) - lo, 1e-12)
    return np.repeat(data, 3, axis=-1) if data.shape[-1] == 1 else data


def _shorten(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[:max_chars - 1] + "…"


@_styled
def similarity_matrix(similarity: Any, images: Any, captions: Sequence[str], ax: Axes | None = None,
                      title: str | None = None, cmap: str = "viridis", vmin: float | None = None,
                      vmax: float | None = None, colorbar: bool = True, mark_best: bool = False,
                      max_chars: int = 40) -> Axes:
    """An image-text similarity matrix (N_i, N_t), e.g. CLIP's cosine similarities: row i is image i, drawn as
    a thumbnail left of its row; column j is caption j, written below (shortened to `max_chars`).

    images: (N_i, 3, h, w) or (N_i, h, w, 3) (or grey), uint8 or float (see `_thumbnails`). mark_best=True
    outlines each row's largest value: the caption that image would pick (Radford et al. 2021, figure 3's
    logits_per_image, row by row). Returns the Axes.
    """
    data = _to_numpy(similarity, "similarity")
    if data.ndim != 2 or 0 in data.shape:
        raise ValueError(f"similarity must be a non-empty (N_images, N_captions) matrix, got shape {tuple(data.shape)}")
    thumbs = _thumbnails(images)
    captions = [str(c) for c in captions]
    if len(thumbs) != data.shape[0] or len(captions) != data.shape[1]:
        raise ValueError(f"similarity has shape {tuple(data.shape)} but there are {len(thumbs)} images and "
                         f"{len(captions)} captions; row i is image i and column j caption j")
    n_i, n_t = data.shape
    if ax is None:  # cells of 0.4 inch; below them the captions, turned (about 0.07 inch per character)
        longest = min(max_chars, max(len(c) for c in captions))
        cell = min(0.4, 14.0 / (n_t + 1), 14.0 / n_i)
        _, ax = plt.subplots(figsize=(cell * (n_t + 1) + (1.4 if colorbar else 0.4),
                                      cell * n_i + 0.08 * longest + (0.8 if title else 0.4)))
    labels = [_shorten(c, max_chars) for c in captions]
    image = heatmap(data, None, labels, ax=ax, cmap=cmap, colorbar=False, vmin=vmin, vmax=vmax,
                    max_ticks=10_000).images[0]
    for i, thumb in enumerate(thumbs):  # in data coordinates: each thumbnail fills the cell left of its row
        ax.imshow(thumb, extent=(-1.45, -0.55, i + 0.45, i - 0.45), interpolation="nearest")
    if mark_best:
        best = np.nanargmax(np.where(np.isnan(data), -np.inf, data), axis=1)
        for i, j in enumerate(best):
            ax.add_patch(mpl.patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=HIGHLIGHT, lw=2))
    ax.set_xlim(-1.5, n_t - 0.5)
    ax.set_ylim(n_i - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_anchor("N")  # the matrix at the top of its box: the turned captions below it stay inside the figure
    ax.set_yticks([])
    ax.tick_params(axis="x", labelsize=9)
    ax.spines[["left", "bottom"]].set_visible(False)
    if colorbar:
        bar = ax.inset_axes([1.0 + 0.3 / (n_t + 1), 0.0, 0.3 / (n_t + 1), 1.0])  # as tall as the matrix
        ax.figure.colorbar(image, cax=bar)
    if title:
        ax.set_title(title)
    return ax
