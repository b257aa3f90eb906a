"""The book's figures: one look for every chapter.

`heatmap` draws matrices (co-occurrence counts, attention and alignment maps, confusion and similarity
matrices), `loss_curves` compares training runs (`utils.train.History`), `scatter_2d` draws 2-D maps of
embeddings with a readable subset of labels, and `figure_to_png` turns a figure into PNG bytes for an
`ipywidgets.Image` in the chapters' explorers.

Every function draws inside `style()` (the book's matplotlib rcParams, no seaborn), so figures look the
same whatever the notebook's global settings; `use_style()` applies the same settings globally.
Every function accepts NumPy arrays or torch tensors (on any device, with or without grad) and returns
the matplotlib Axes it drew on, so a chapter can add to it.
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

from .train import History

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
    "axes.prop_cycle": mpl.cycler(color=plt.get_cmap("tab10").colors),
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
    if ax is None:
        ax = _new_axes(None, (max(4.0, min(12.0, 0.35 * cols + 2.5)), max(3.0, min(10.0, 0.35 * rows + 1.5))))
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
        run = _as_history(run, name)
        if isinstance(run, np.ndarray):
            if x == "seconds":
                raise ValueError(f"histories[{name!r}] is a plain list of losses with no times; "
                                 "use x='step' or pass the History")
            ax.plot(np.arange(1, run.size + 1), run, color=color, label=str(name))
            continue
        drawn = 0
        xs, ys = run.series("loss", x)
        if xs:
            ax.plot(xs, ys, color=color, label=f"{name} (train)")
            drawn += 1
        names = list(dict.fromkeys(k for r in run.eval for k in r.metrics))
        wanted = [m for m in names if "loss" in m] if eval_metrics is None else list(eval_metrics)
        unknown = [m for m in wanted if m not in names]
        if eval_metrics is not None and unknown:
            raise KeyError(f"histories[{name!r}] has no evaluation metric(s) {unknown}; it has {names}")
        for j, metric in enumerate(wanted):
            xs, ys = run.series(metric, x)
            ax.plot(xs, ys, color=color, linestyle=["--", ":", "-."][j % 3], marker="o", markersize=3,
                    label=f"{name} ({metric})")
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


def word_explorer(neighbours: Mapping[str, Callable[[str], Sequence[tuple[str, float]]]], points: Any,
                  labels: Sequence[str], default: str, topn: int = 8, map_labels: int = 25,
                  title: str = "2-D map of the word vectors") -> Any:
    """An explorer for word vectors: pick or type a word; see its nearest neighbours under each method
    side by side, and where it and its neighbours sit on a 2-D map of `labels` (`points` (N, 2)).

    `neighbours` maps a method's name to a function word -> [(neighbour, cosine similarity), ...]
    that raises KeyError for a word it does not know. The map highlights the word and the first
    method's neighbours. Returns an ipywidgets VBox; on a static page it shows the `default` word.
    """
    import html
    import ipywidgets as widgets

    if not neighbours:
        raise ValueError("neighbours needs at least one method")
    xy = _to_numpy(points, "points")
    labels = [str(w) for w in labels]
    if xy.shape != (len(labels), 2):
        raise ValueError(f"points must have shape ({len(labels)}, 2) to match labels, got {tuple(xy.shape)}")
    on_map = set(labels)
    box = widgets.Combobox(value=default, options=labels, placeholder="type a word", description="word",
                           ensure_option=False, continuous_update=False)
    table = widgets.HTML()
    picture = widgets.Image(format="png", layout=widgets.Layout(width="100%", max_width="640px"))

    def show(word: str) -> None:
        word = word.strip().lower()
        header = "".join(f"<th style='padding:2px 10px'>{html.escape(name)}</th>" for name in neighbours)
        columns, first = [], None
        for name, fn in neighbours.items():
            try:
                found = list(fn(word))[:topn]
            except KeyError:
                found = None
            columns.append(found)
            if first is None and found is not None:
                first = [w for w, _ in found]
        rows = []
        for r in range(topn):
            cells = []
            for found in columns:
                if found is None:
                    cells.append("<td style='padding:2px 10px;color:#888'>not in vocabulary</td>" if r == 0 else "<td></td>")
                elif r < len(found):
                    w, sim = found[r]
                    cells.append(f"<td style='padding:2px 10px;white-space:nowrap'>{html.escape(w)} "
                                 f"<span style='color:#888'>{sim:.2f}</span></td>")
                else:
                    cells.append("<td></td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        table.value = (f"<b>nearest neighbours of “{html.escape(word)}”</b> (cosine similarity)"
                       f"<table style='font-family:monospace'><tr>{header}</tr>{''.join(rows)}</table>")
        highlight = [w for w in [word, *(first or [])] if w in on_map]
        ax = scatter_2d(xy, labels, highlight=highlight, max_labels=map_labels,
                        title=title if word in on_map else f"{title} (“{word}” is not on the map)")
        picture.value = figure_to_png(ax)

    box.observe(lambda change: show(change["new"]), names="value")
    show(default)
    return widgets.VBox([box, table, picture])


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
    for name, (lengths, correct) in data.items():
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
        ax.plot(xs, ys, marker="o", markersize=4, label=str(name))
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(mpl.ticker.PercentFormatter(1.0))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend()
    return ax


def decoding_explorer(decode: Callable[[str, str, int, float], Sequence[tuple[str, float, float]]],
                      default: str, examples: Sequence[str] = (), method: str = "beam", width: int = 4,
                      max_width: int = 10, alpha: float = 0.0) -> Any:
    """An explorer for a sequence-to-sequence model's decoder: type an input, choose greedy or beam search
    (beam width and length-normalisation alpha as sliders), and see the candidate outputs with their scores.

    `decode(text, method, width, alpha)` with method "greedy" or "beam" returns the candidates, best
    first, as (output text, log-probability, score) triples; it may raise ValueError (e.g. an unknown
    character), whose message is shown in the explorer instead of a traceback. Returns an ipywidgets
    VBox; on a static page it shows `default`.
    """
    import html
    import math

    import ipywidgets as widgets

    if method not in ("greedy", "beam"):
        raise ValueError(f"method must be 'greedy' or 'beam', got {method!r}")
    if not (isinstance(max_width, int) and max_width >= 1 and isinstance(width, int) and 1 <= width <= max_width):
        raise ValueError(f"need 1 ≤ width ≤ max_width, got width={width!r}, max_width={max_width!r}")
    box = widgets.Combobox(value=default, options=[str(e) for e in examples], placeholder="type an input",
                           description="input", ensure_option=False, continuous_update=False,
                           layout=widgets.Layout(width="420px"))
    chooser = widgets.ToggleButtons(options=["greedy", "beam"], value=method, description="decoding")
    beam = widgets.IntSlider(value=width, min=1, max=max_width, description="beam width",
                             continuous_update=False, disabled=method == "greedy")
    length = widgets.FloatSlider(value=alpha, min=0.0, max=2.0, step=0.1, description="alpha",
                                 continuous_update=False, disabled=method == "greedy")
    table = widgets.HTML()

    def show(*_: Any) -> None:
        beam.disabled = length.disabled = chooser.value == "greedy"
        text = box.value
        try:
            candidates = list(decode(text, chooser.value, beam.value, length.value))
        except ValueError as err:
            table.value = (f"<div style='color:#b00020'><b>cannot decode “{html.escape(text)}”:</b> "
                           f"{html.escape(str(err))}</div>")
            return
        rows = "".join(
            f"<tr><td style='padding:2px 10px'>{i}</td><td style='padding:2px 10px'><b>{html.escape(out)}</b></td>"
            f"<td style='padding:2px 10px;text-align:right'>{lp:.3f}</td>"
            f"<td style='padding:2px 10px;text-align:right'>{math.exp(lp):.1%}</td>"
            f"<td style='padding:2px 10px;text-align:right'>{score:.3f}</td></tr>"
            for i, (out, lp, score) in enumerate(candidates, 1))
        how = "greedy decoding" if chooser.value == "greedy" else \
            f"beam search, width {beam.value}, alpha {length.value:.1f}"
        table.value = (f"<b>“{html.escape(text)}”</b> → {how}"
                       "<table style='font-family:monospace'><tr><th>#</th><th>output</th><th>log p</th>"
                       f"<th>p</th><th>score</th></tr>{rows}</table>")

    for control in (box, chooser, beam, length):
        control.observe(show, names="value")
    show()
    return widgets.VBox([box, chooser, widgets.HBox([beam, length]), table])


def gate_viewer(compute: Callable[[str], Mapping[str, Any]], default: str, examples: Sequence[str] = (),
                ranges: Mapping[str, tuple[float, float]] | None = None, max_chars: int = 100,
                title: str = "Activations per character") -> Any:
    """A viewer for per-character activations of a recurrent network (LSTM gates, cell state, ...).

    Choose one of `examples` or type a line: `compute(text)` returns {name: (T, U) array}, one row per
    character of `text` and one column per unit, and every map is drawn as a heatmap with units as
    rows and the characters along the bottom. `ranges` fixes a map's colour range, e.g.
    {"forget": (0, 1), "cell": (-2, 2)} (a range around 0 gets a diverging colour map); other maps
    are scaled to their own values. Text longer than `max_chars` is cut. If `compute` raises
    KeyError or ValueError (e.g. a character the model does not know), the message is shown instead.
    Returns an ipywidgets VBox; on a static page it shows `default`.
    """
    import html
    import ipywidgets as widgets

    if not isinstance(default, str) or not default:
        raise ValueError("default must be a non-empty line of text to show first")
    if not isinstance(max_chars, int) or max_chars < 1:
        raise ValueError(f"max_chars must be a positive int, got {max_chars!r}")
    ranges = dict(ranges or {})
    options = list(dict.fromkeys([default, *examples]))
    box = widgets.Combobox(value=default, options=options, placeholder="type a line", description="text",
                           ensure_option=False, continuous_update=False,
                           layout=widgets.Layout(width="100%", max_width="900px"))
    note = widgets.HTML()
    picture = widgets.Image(format="png", layout=widgets.Layout(width="100%", max_width="1000px"))

    def draw(text: str) -> None:
        text = text[:max_chars]
        if not text:
            note.value = "<i>type some text</i>"
            return
        try:
            maps = {name: _to_numpy(m, f"compute(text)[{name!r}]") for name, m in compute(text).items()}
        except (KeyError, ValueError) as err:
            note.value = f"<span style='color:{HIGHLIGHT}'>{html.escape(str(err.args[0] if err.args else err))}</span>"
            return
        if not maps:
            raise ValueError("compute(text) returned no maps to draw")
        for name, m in maps.items():
            if m.ndim != 2 or m.shape[0] != len(text):
                raise ValueError(f"compute(text)[{name!r}] must have shape ({len(text)}, units): one row per "
                                 f"character, got {tuple(m.shape)}")
        chars = ["␣" if ch == " " else ch for ch in text]
        with style():
            fig, axes = plt.subplots(len(maps), 1, squeeze=False,
                                     figsize=(max(6.0, min(16.0, 0.16 * len(text) + 2.0)), 2.1 * len(maps)))
            for ax, (name, m) in zip(axes[:, 0], maps.items()):
                lo, hi = ranges.get(name, (None, None))
                diverging = lo is not None and hi is not None and lo < 0 < hi
                heatmap(m.T, col_labels=chars, ax=ax, title=name, vmin=lo, vmax=hi,
                        cmap="RdBu_r" if diverging else "viridis", ylabel="unit", max_ticks=max_chars)
                ax.tick_params(axis="x", labelrotation=0, labelsize=8)
            fig.suptitle(title)
            picture.value = figure_to_png(fig)
        note.value = f"<b>{html.escape(text)}</b> ({len(text)} characters)"

    box.observe(lambda change: draw(change["new"]), names="value")
    draw(default)
    return widgets.VBox([box, note, picture])
