"""The book's interactive explorers (ipywidgets): look inside a trained model by changing a control.

`word_explorer` (chapter 1: nearest neighbours), `gate_viewer` (chapter 3: LSTM/GRU gates over a text),
`decoding_explorer` (chapter 4: greedy vs beam search), `attention_explorer` (chapters 5-7: attention maps
by example, layer and head), `sampling_explorer` (chapter 7: temperature, top-k, top-p),
`patch_explorer` (chapter 8: patch grids) and `similarity_explorer` (chapter 9: CLIP's image-caption
similarities). Each draws with the static figures of `figures.py`.
"""
from __future__ import annotations

import functools
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from .figures import (
    BASE,
    HIGHLIGHT,
    _attention_stack,
    _check_labels,
    _image_hwc,
    _patch_size_ok,
    _thumbnails,
    _to_numpy,
    attention_grid,
    figure_to_png,
    heatmap,
    patch_grid,
    scatter_2d,
    similarity_matrix,
    style,
)


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


def sampling_explorer(sample: Callable[[str, float, int | None, float | None, int], str],
                      distribution: Callable[[str, float, int | None, float | None], Sequence[tuple[str, float]]]
                      | None = None, default: str = "", examples: Sequence[str] = (), temperature: float = 0.8,
                      top_k: int | None = None, top_p: float | None = None, seed: int = 0, vocab_size: int = 256,
                      title: str = "Sampling") -> Any:
    """An explorer for sampling from a language model: a prompt, temperature, top-k and top-p, and a seed.

    `sample(prompt, temperature, top_k, top_p, seed)` returns the continuation (text after the prompt);
    top_k None (slider at 0) and top_p None (slider at 1) mean no filter. If `distribution(prompt,
    temperature, top_k, top_p)` is given, it returns the next-token candidates after the prompt as
    (token, probability) pairs once temperature and filters are applied, most likely first; the explorer
    shows them as bars, so the reader sees what each knob does to the distribution before a token is
    drawn. ValueError or KeyError from either (an unknown character, an empty prompt) is shown as a
    message. Returns an ipywidgets VBox; on a static page it shows the default setting.
    """
    import html

    import ipywidgets as widgets

    if not isinstance(default, str):
        raise TypeError(f"default must be a str (the first prompt), got {type(default).__name__}")
    if not (isinstance(vocab_size, int) and vocab_size >= 1):
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if not 0.0 <= temperature <= 2.0:
        raise ValueError(f"temperature must be in [0, 2] (0 = greedy), got {temperature}")
    if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= vocab_size):
        raise ValueError(f"top_k must be None or an int in [1, vocab_size={vocab_size}], got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p}")
    wide = widgets.Layout(width="420px")
    style_ = {"description_width": "90px"}
    box = widgets.Combobox(value=default, options=list(dict.fromkeys([default, *examples])), description="prompt",
                           placeholder="type a prompt", ensure_option=False, continuous_update=False,
                           layout=widgets.Layout(width="100%", max_width="700px"), style=style_)
    temp = widgets.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.05, description="temperature",
                               continuous_update=False, layout=wide, style=style_)
    k = widgets.IntSlider(value=top_k or 0, min=0, max=vocab_size, description="top-k (0: off)",
                          continuous_update=False, layout=wide, style=style_)
    p = widgets.FloatSlider(value=top_p or 1.0, min=0.05, max=1.0, step=0.05, description="top-p (1: off)",
                            continuous_update=False, layout=wide, style=style_)
    s = widgets.IntText(value=seed, description="seed", layout=widgets.Layout(width="200px"), style=style_)
    bars, text = widgets.HTML(), widgets.HTML()

    def show(*_: Any) -> None:
        prompt, t = box.value, temp.value
        kk, pp = (k.value or None), (p.value if p.value < 1.0 else None)
        how = (f"temperature {t:g}" + ("" if t == 0 else "" if kk is None else f", top-k {kk}")
               + ("" if t == 0 or pp is None else f", top-p {pp:g}") + (" (greedy)" if t == 0 else ""))
        try:
            if distribution is not None:
                rows = "".join(
                    f"<tr><td style='padding:1px 8px;font-family:monospace'>{html.escape(repr(tok))}</td>"
                    f"<td style='padding:1px 8px;width:240px'><div style='background:{BASE};height:12px;"
                    f"width:{max(1.0, 240 * prob):.0f}px'></div></td>"
                    f"<td style='padding:1px 8px;text-align:right'>{prob:.1%}</td></tr>"
                    for tok, prob in list(distribution(prompt, t, kk, pp))[:10])
                bars.value = (f"<b>next token after the prompt</b> ({how}; the 10 most likely)"
                              f"<table>{rows}</table>")
            out = sample(prompt, t, kk, pp, s.value)
        except (KeyError, ValueError) as err:
            msg = err.args[0] if err.args else err
            text.value = f"<div style='color:{HIGHLIGHT}'><b>cannot sample:</b> {html.escape(str(msg))}</div>"
            return
        text.value = (f"<div style='margin-top:6px'>{html.escape(title)}: {how}, seed {s.value}</div>"
                      "<pre style='white-space:pre-wrap;font-size:13px;line-height:1.35;border:1px solid #ddd;"
                      f"padding:8px'><b>{html.escape(prompt)}</b>{html.escape(out)}</pre>")

    for control in (box, temp, k, p, s):
        control.observe(show, names="value")
    show()
    return widgets.VBox([box, widgets.HBox([temp, k]), widgets.HBox([p, s]), bars, text])


# ---------------------------------------------------------------------------------------------- patches

def patch_explorer(image: Any, patch_sizes: Sequence[int], default_patch_size: int | None = None,
                   patch: int | None = None, cmap: str = "gray", title: str | None = None,
                   grid_color: str = "white") -> Any:
    """An explorer of how a Vision Transformer cuts an image into patches (`patch_grid`): a patch-size slider
    and a patch slider; the chosen patch is outlined on the image, enlarged, and marked in the sequence.

    Embed-friendly: one page per patch size (its patch slider, caption and picture) is drawn up front and
    shown in a `Stack` whose page is linked to the size slider in the browser (`jslink`), so on a static page
    (the website) the size slider works without Python, each page showing its own patch; picking another
    patch redraws with a running kernel. When the size changes, the chosen patch becomes the one that holds
    the same pixel (the old patch's centre).
    patch_sizes: the sizes offered; each must divide the image's height and width.
    patch: the chosen patch's index at `default_patch_size` (default: the centre patch).
    Returns an ipywidgets VBox.
    """
    import ipywidgets as widgets

    data = _image_hwc(image)
    sizes = [_patch_size_ok(data, p, "image") for p in patch_sizes]
    if not sizes or len(set(sizes)) != len(sizes):
        raise ValueError(f"patch_sizes must be one or more distinct sizes, got {list(patch_sizes)}")
    sizes = sorted(sizes)
    default_patch_size = sizes[len(sizes) // 2] if default_patch_size is None else default_patch_size
    if default_patch_size not in sizes:
        raise ValueError(f"default_patch_size {default_patch_size!r} is not one of patch_sizes {sizes}")
    H, W = data.shape[:2]

    def centre(P: int) -> int:
        rows, cols = H // P, W // P
        return (rows // 2) * cols + cols // 2

    def relocate(n: int, P_old: int, P_new: int) -> int:
        """The patch of size P_new that holds the centre pixel of patch n of size P_old."""
        r, c = divmod(n, W // P_old)
        y, x = r * P_old + P_old // 2, c * P_old + P_old // 2
        return (y // P_new) * (W // P_new) + x // P_new

    rows0, cols0 = H // default_patch_size, W // default_patch_size
    first = centre(default_patch_size) if patch is None else patch
    if not isinstance(first, (int, np.integer)) or isinstance(first, bool) or not 0 <= first < rows0 * cols0:
        raise ValueError(f"patch must be an index in [0, {rows0 * cols0}) for the {rows0}×{cols0} grid of "
                         f"{default_patch_size}-pixel patches, got {patch!r}")
    chosen = {p: relocate(int(first), default_patch_size, p) for p in sizes}
    size = widgets.SelectionSlider(options=[(f"{p} px", p) for p in sizes], value=default_patch_size,
                                   description="patch size", continuous_update=False)
    sliders = {p: widgets.IntSlider(value=chosen[p], min=0, max=(H // p) * (W // p) - 1, description="patch",
                                    continuous_update=False) for p in sizes}  # one per page: right on a static page
    captions = {p: widgets.HTML() for p in sizes}
    pictures = {p: widgets.Image(format="png", layout=widgets.Layout(width="100%", max_width="1100px"))
                for p in sizes}
    drawn: dict[int, int] = {}

    def draw(P: int) -> None:
        """The page of patch size P (caption and picture), if its chosen patch changed."""
        if drawn.get(P) == chosen[P]:
            return
        rows, cols = H // P, W // P
        r, c = divmod(chosen[P], cols)
        captions[P].value = (f"<b>{P}×{P} patches</b>: a {rows}×{cols} grid, a sequence of {rows * cols} tokens "
                             f"(plus the class token the model puts in front). Patch {chosen[P]} is row {r}, "
                             f"column {c}.")
        pictures[P].value = figure_to_png(patch_grid(data, P, chosen[P], cmap=cmap, title=title,
                                                     grid_color=grid_color))
        drawn[P] = chosen[P]

    for p in sizes:
        draw(p)
    stack = widgets.Stack(children=[widgets.VBox([sliders[p], captions[p], pictures[p]]) for p in sizes],
                          selected_index=sizes.index(default_patch_size))
    link = widgets.jslink((size, "index"), (stack, "selected_index"))  # switches pages in the browser alone
    state = {"size": default_patch_size}

    def on_size(change: Any) -> None:
        P_old, P = state["size"], change["new"]
        state["size"] = P
        chosen[P] = relocate(chosen[P_old], P_old, P)  # the same place in the image
        sliders[P].value = chosen[P]  # (draws, through on_patch, if it changed)
        stack.selected_index = sizes.index(P)  # (the browser link does this too; here for a kernel-only run)
        draw(P)

    def on_patch(P: int, change: Any) -> None:
        chosen[P] = change["new"]
        draw(P)

    size.observe(on_size, names="value")
    for p in sizes:
        sliders[p].observe(functools.partial(on_patch, p), names="value")
    box = widgets.VBox([size, stack])
    box.link = link  # keep the browser-side link with the explorer
    return box


def _attention_view(view: Any, where: str) -> dict[str, tuple[np.ndarray, list[str] | None, list[str] | None]]:
    """Check one explorer view {kind: (attn, query_labels, key_labels)}; attn becomes (L, H, T, S)."""
    if not isinstance(view, Mapping) or not view:
        raise ValueError(f"{where} must be a non-empty dict {{kind: (attn, query_labels, key_labels)}}, "
                         f"got {type(view).__name__ if not isinstance(view, Mapping) else 'an empty dict'}")
    out = {}
    for kind, entry in view.items():
        name = f"{where}[{kind!r}]"
        if not isinstance(entry, (tuple, list)) or len(entry) != 3:
            raise ValueError(f"{name} must be a triple (attn, query_labels, key_labels); use None for missing labels")
        attn = _attention_stack(entry[0], f"{name} attn")
        if attn.ndim in (2, 3):
            attn = attn.reshape((1,) * (4 - attn.ndim) + attn.shape)
        if attn.ndim != 4 or attn.size == 0:
            raise ValueError(f"{name} attn must have shape (L, H, T, S), (H, T, S) or (T, S) and not be empty, "
                             f"got {tuple(attn.shape)}; for a batch, pick one example first, e.g. attn[:, 0]")
        _, _, T, S = attn.shape
        out[str(kind)] = (attn, _check_labels(entry[1], T, f"{name} query_labels", "query row"),
                          _check_labels(entry[2], S, f"{name} key_labels", "key column"))
    return out


def attention_explorer(maps: Mapping[str, Mapping[str, tuple[Any, Any, Any]]] | Callable[[str], Mapping[str, Any]],
                       default: str | None = None, examples: Sequence[str] = (), title: str = "Attention",
                       max_ticks: int = 40, vmax: float | None = 1.0) -> Any:
    """An explorer for attention maps: choose an example, the kind of attention, the layer and the head.

    maps:     {example name: view}, precomputed, or a function compute(text) -> view, so the reader can
              type an input of their own (a KeyError or ValueError it raises, e.g. an unknown character,
              is shown as a message).
    view:     {kind: (attn, query_labels, key_labels)}, e.g. {"encoder self-attention": ...,
              "cross-attention": ...} or {"additive": ..., "dot-product": ...}; attn has shape
              (L, H, T, S) (layers, heads, queries, keys), or (H, T, S), or (T, S); a list of L
              per-layer (H, T, S) maps works too.
    default:  the example shown first (and on a static page); default: the first of `examples` or of maps.
    examples: the examples offered in the list (default: the keys of `maps`).
    The head menu offers all heads as a grid (`attention_grid`), their mean, or one head; controls for a
    single kind, layer or head are hidden. Switching example keeps the controls, clamped to the new
    example's layers and heads. Returns an ipywidgets VBox.
    """
    import html

    import ipywidgets as widgets

    if callable(maps) and not isinstance(maps, Mapping):
        compute, views = maps, None
        options = [str(e) for e in examples]
        if default is None:
            if not options:
                raise ValueError("attention_explorer with a compute function needs default= (or examples=) "
                                 "to know what to show first")
            default = options[0]
        options = list(dict.fromkeys([str(default), *options]))
    elif isinstance(maps, Mapping):
        if not maps:
            raise ValueError("maps is empty: pass {example name: {kind: (attn, query_labels, key_labels)}}")
        compute = None
        views = {str(name): _attention_view(view, f"maps[{name!r}]") for name, view in maps.items()}
        options = [str(e) for e in examples] or list(views)
        unknown = [e for e in options if e not in views]
        if unknown:
            raise ValueError(f"examples {unknown} are not in maps; maps has {list(views)}")
        default = options[0] if default is None else str(default)
        if default not in views:
            raise ValueError(f"default {default!r} is not in maps; maps has {list(views)}")
    else:
        raise TypeError(f"maps must be a dict {{example: view}} or a function text -> view, got {type(maps).__name__}")

    def get_view(name: str) -> dict[str, tuple[np.ndarray, list[str] | None, list[str] | None]]:
        if views is not None:
            if name not in views:
                raise KeyError(f"no example named {name!r}; choose one of {list(views)}")
            return views[name]
        return _attention_view(compute(name), f"compute({name!r})")

    first = get_view(default)  # errors in the first view are the author's, so they are raised
    state: dict[str, Any] = {"name": default, "view": first, "busy": False}

    example = widgets.Combobox(value=default, options=options, description="example",
                               placeholder="type an input" if compute else "choose an example",
                               ensure_option=compute is None, continuous_update=False,
                               layout=widgets.Layout(width="100%", max_width="600px"))
    kind = widgets.ToggleButtons(options=list(first), description="attention")
    layer = widgets.IntSlider(value=0, min=0, max=0, description="layer", continuous_update=False)
    head = widgets.Dropdown(options=["all heads", "mean over heads", "head 0"], value="all heads",
                            description="head")
    caption = widgets.HTML()
    picture = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))

    def sync() -> tuple[np.ndarray, list[str] | None, list[str] | None]:
        """Fit the controls to the current view (keeping their values where they still exist)."""
        view = state["view"]
        if list(kind.options) != list(view):
            keep = kind.value if kind.value in view else next(iter(view))
            kind.options = list(view)
            kind.value = keep
        attn, q, k = view[kind.value]
        L, H = attn.shape[:2]
        kind.layout.display = "none" if len(view) == 1 else None
        layer.value, layer.max = min(layer.value, L - 1), max(L - 1, 1)
        layer.disabled = L == 1
        layer.layout.display = "none" if L == 1 else None
        wanted = head.value
        if wanted.startswith("head ") and int(wanted.split()[1]) >= H:
            wanted = f"head {H - 1}"
        heads = ["all heads", "mean over heads", *(f"head {h}" for h in range(H))]
        if list(head.options) != heads:
            head.options = heads
        head.value = wanted
        head.layout.display = "none" if H == 1 else None
        return attn, q, k

    def draw(*_: Any) -> None:
        if state["busy"]:
            return
        state["busy"] = True
        try:
            attn, q, k = sync()
            L, H, T, S = attn.shape
            maps_l = attn[layer.value]  # (H, T, S)
            where = f"{kind.value}" + (f", layer {layer.value}" if L > 1 else "")
            if H == 1:
                fig = attention_grid(maps_l[0], q, k, max_ticks=max_ticks, vmax=vmax, title=f"{title}: {where}")
                which = ""
            elif head.value == "all heads":
                fig = attention_grid(maps_l, q, k, max_ticks=max_ticks, vmax=vmax, title=f"{title}: {where}")
                which = f"all {H} heads"
            elif head.value == "mean over heads":
                fig = attention_grid(maps_l.mean(0), q, k, max_ticks=max_ticks, vmax=vmax,
                                     title=f"{title}: {where}, mean over {H} heads")
                which = f"mean over {H} heads"
            else:
                h = int(head.value.split()[1])
                fig = attention_grid(maps_l[h], q, k, max_ticks=max_ticks, vmax=vmax,
                                     title=f"{title}: {where}, head {h}")
                which = head.value
            picture.value = figure_to_png(fig)
            parts = [f"<b>{html.escape(state['name'])}</b>", html.escape(kind.value)]
            if L > 1:
                parts.append(f"layer {layer.value} of {L}")
            if which:
                parts.append(which)
            caption.value = (" · ".join(parts) + f" <span style='color:#666'>(L, H, T, S) = {(L, H, T, S)}: "
                             f"{T} queries × {S} keys</span>")
        finally:
            state["busy"] = False

    def choose(change: Any) -> None:
        name = change["new"]
        if not name:
            caption.value = "<i>type an input</i>" if compute else "<i>choose an example</i>"
            return
        try:
            view = get_view(name)
        except (KeyError, ValueError) as err:
            message = str(err.args[0] if err.args else err)
            caption.value = (f"<span style='color:{HIGHLIGHT}'><b>cannot show “{html.escape(name)}”:</b> "
                             f"{html.escape(message)}</span>")
            return
        state["name"], state["view"] = name, view
        draw()

    example.observe(choose, names="value")
    for control in (kind, layer, head):
        control.observe(draw, names="value")
    draw()
    return widgets.VBox([example, kind, widgets.HBox([layer, head]), caption, picture])


# ---------------------------------------------------------------------------------------------- image-text similarity

def _png(image: np.ndarray, pixels: int) -> bytes:
    """An (h, w, 3) image in [0, 1] as PNG bytes, enlarged by whole pixels to about `pixels` on its long side."""
    k = max(1, pixels // max(image.shape[:2]))
    big = np.repeat(np.repeat(image, k, axis=0), k, axis=1)  # crisp (nearest) enlargement
    buffer = io.BytesIO()
    plt.imsave(buffer, np.clip(big, 0.0, 1.0), format="png")
    return buffer.getvalue()


def _unit_rows(x: Any, name: str) -> np.ndarray:
    data = _to_numpy(x, name)
    if data.ndim != 2 or 0 in data.shape:
        raise ValueError(f"{name} must be a non-empty (N, E) matrix of embeddings, got shape {tuple(data.shape)}")
    return data / np.maximum(np.linalg.norm(data, axis=1, keepdims=True), 1e-12)


def similarity_explorer(images: Any, captions: Sequence[str], image_features: Any, text_features: Any,
                        encode_text: Callable[[str], Any] | None = None, default_caption: str | None = None,
                        default_image: int = 0, grid: int = 8, top: int = 5, thumbnail: int = 96,
                        title: str = "Cosine similarity of images and captions") -> Any:
    """An explorer for a CLIP-style embedding: images and captions ranked by cosine similarity.

    images (N_i, ...) as for `similarity_matrix`; captions (N_t strings); image_features (N_i, E) and
    text_features (N_t, E) their embeddings (normalised here). Three parts:
    - the similarity matrix of the first `grid` images × the first `grid` captions (`similarity_matrix`);
    - caption → images: choose a caption, or type one if `encode_text(text) -> (E,)` is given, and see the
      `top` most similar images; each has a button that ranks the captions for it;
    - image → captions: choose an image (slider or button) and see the `top` most similar captions.
    A ValueError or KeyError from `encode_text` is shown as a message. Returns an ipywidgets VBox; a static
    page shows `default_caption` (default: the first caption) and image `default_image`.
    """
    import html

    import ipywidgets as widgets

    thumbs = _thumbnails(images)
    captions = [str(c) for c in captions]
    img, txt = _unit_rows(image_features, "image_features"), _unit_rows(text_features, "text_features")
    if len(img) != len(thumbs) or len(txt) != len(captions) or img.shape[1] != txt.shape[1]:
        raise ValueError(f"{len(thumbs)} images with image_features {img.shape} and {len(captions)} captions with "
                         f"text_features {txt.shape}: need one feature row per image and per caption, same width E")
    for name, value in (("grid", grid), ("top", top), ("thumbnail", thumbnail)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not (isinstance(default_image, int) and 0 <= default_image < len(thumbs)):
        raise ValueError(f"default_image must be an index in [0, {len(thumbs)}), got {default_image!r}")
    default_caption = captions[0] if default_caption is None else str(default_caption)
    if encode_text is None and default_caption not in captions:
        raise ValueError(f"default_caption {default_caption!r} is not one of the captions, and without encode_text "
                         "no other caption can be embedded")
    top_i, top_t = min(top, len(thumbs)), min(top, len(captions))
    pngs: dict[int, bytes] = {}

    def png(i: int) -> bytes:
        if i not in pngs:
            pngs[i] = _png(thumbs[i], thumbnail)
        return pngs[i]

    g_i, g_t = min(grid, len(thumbs)), min(grid, len(captions))
    matrix = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"),
                           value=figure_to_png(similarity_matrix(img[:g_i] @ txt[:g_t].T, thumbs[:g_i], captions[:g_t],
                                                                 title=title, mark_best=True)))
    text_box = widgets.Combobox(value=default_caption, options=list(dict.fromkeys(captions)),
                                description="caption", placeholder="type a caption" if encode_text else "choose",
                                ensure_option=encode_text is None, continuous_update=False,
                                layout=widgets.Layout(width="100%", max_width="600px"))
    text_note = widgets.HTML()
    results = [widgets.Image(format="png", layout=widgets.Layout(width=f"{thumbnail}px")) for _ in range(top_i)]
    scores = [widgets.HTML() for _ in range(top_i)]
    buttons = [widgets.Button(description="captions ↓", layout=widgets.Layout(width=f"{thumbnail}px"))
               for _ in range(top_i)]
    shown = list(range(top_i))  # which image each result slot shows
    image_slider = widgets.IntSlider(value=default_image, min=0, max=max(len(thumbs) - 1, 1), description="image",
                                     continuous_update=False, disabled=len(thumbs) == 1)
    chosen = widgets.Image(format="png", layout=widgets.Layout(width=f"{thumbnail}px"))
    ranking = widgets.HTML()

    def feature_of(text: str) -> np.ndarray:
        if encode_text is None:
            return txt[captions.index(text)]
        vector = _to_numpy(encode_text(text), "encode_text(text)").reshape(-1)
        if vector.shape != (txt.shape[1],):
            raise ValueError(f"encode_text returned {vector.size} numbers, the text features have E = {txt.shape[1]}")
        return vector / max(np.linalg.norm(vector), 1e-12)

    def rank_images(*_: Any) -> None:
        text = text_box.value
        if not text.strip():
            text_note.value = "<i>type a caption</i>"
            return
        try:
            sims = img @ feature_of(text)  # (N_i,)
        except (KeyError, ValueError) as err:
            msg = err.args[0] if err.args else err
            text_note.value = (f"<span style='color:{HIGHLIGHT}'><b>cannot embed “{html.escape(text)}”:</b> "
                               f"{html.escape(str(msg))}</span>")
            return
        order = np.argsort(-sims, kind="stable")[:top_i]
        for slot, i in enumerate(order):
            shown[slot] = int(i)
            results[slot].value = png(int(i))
            scores[slot].value = f"<div style='text-align:center'>#{i}: {sims[i]:.3f}</div>"
        text_note.value = (f"the {top_i} images (of {len(thumbs)}) most similar to <b>“{html.escape(text)}”</b> "
                           "(cosine similarity)")

    def rank_captions(*_: Any) -> None:
        i = image_slider.value
        chosen.value = png(i)
        sims = txt @ img[i]  # (N_t,)
        order = np.argsort(-sims, kind="stable")[:top_t]
        lo = min(0.0, float(sims.min()))
        span = max(float(sims.max()) - lo, 1e-12)
        rows = "".join(
            f"<tr><td style='padding:1px 8px'>{html.escape(captions[j])}</td>"
            f"<td style='padding:1px 8px;width:160px'><div style='background:{BASE};height:12px;"
            f"width:{max(1.0, 160 * (sims[j] - lo) / span):.0f}px'></div></td>"
            f"<td style='padding:1px 8px;text-align:right'>{sims[j]:.3f}</td></tr>" for j in order)
        ranking.value = (f"<b>image #{i}</b>: the {top_t} captions (of {len(captions)}) most similar to it"
                         f"<table>{rows}</table>")

    def pick(slot: int) -> Callable[[Any], None]:
        def on_click(_: Any) -> None:
            image_slider.value = shown[slot]
        return on_click

    text_box.observe(rank_images, names="value")
    image_slider.observe(rank_captions, names="value")
    for slot, button in enumerate(buttons):
        button.on_click(pick(slot))
    rank_images()
    rank_captions()
    gallery = widgets.HBox([widgets.VBox([r, s, b]) for r, s, b in zip(results, scores, buttons)])
    return widgets.VBox([matrix, widgets.HTML("<b>caption → images</b>"), text_box, text_note, gallery,
                         widgets.HTML("<b>image → captions</b>"), image_slider,
                         widgets.HBox([chosen, ranking], layout=widgets.Layout(align_items="flex-start"))])
