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


# ---------------------------------------------------------------------------------------------- pages switched in the browser
#
# Every explorer works on the static website, where no Python runs: its views are drawn up front for a
# finite set of control values and put in `Stack`s, one level per control, whose `selected_index` is linked
# to the control in the browser (`jslink`). Choosing a value then shows another page without a kernel.
# Free text (a typed word, date or prompt) needs the model, so it works in a running kernel only: the
# page for a typed input is drawn there and added to the menu of prepared examples.

def _small_png(fig: Any) -> bytes:
    """The figure as a PNG with a 256-colour palette (about 2.5x smaller than matplotlib's RGBA, the same to
    the eye for these flat-coloured plots), so a page of precomputed views stays light."""
    from PIL import Image

    png = figure_to_png(fig)
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    image.save(buffer, format="png", optimize=True)
    return buffer.getvalue() if buffer.tell() < len(png) else png


_IMAGE_CLASS: Any = None


def image_widget(**kwargs: Any) -> Any:
    """An `ipywidgets.Image` that may carry a `tooltip`. ipywidgets' own front end (8.1, in JupyterLab, Colab
    and the website's HTML manager) reads `description.length` when a widget has a tooltip, and an Image has
    no description: the view fails to draw. This Image syncs an empty `description` (read by nothing else),
    so the tooltip works everywhere."""
    global _IMAGE_CLASS
    if _IMAGE_CLASS is None:
        import ipywidgets as widgets
        from traitlets import Unicode

        class DescribedImage(widgets.Image):
            description = Unicode("").tag(sync=True)

        _IMAGE_CLASS = DescribedImage
    return _IMAGE_CLASS(**kwargs)


def _picture(png: bytes, max_width: str = "100%", alt: str | None = None) -> Any:
    """An Image widget; `alt` says what the picture shows, for readers who cannot see it. It is the widget's
    tooltip: the browser shows it as the picture's title, and the website makes it the alt text."""
    import ipywidgets as widgets

    if not alt or not str(alt).strip():
        raise ValueError("every explorer picture needs an alt text that says what it shows")
    return image_widget(value=png, format="png", layout=widgets.Layout(max_width=max_width), tooltip=str(alt))


def _choices(control: Any) -> tuple[str, int]:
    """The trait of `control` that numbers its current choice (0, 1, ...), and how many choices it has."""
    if control.has_trait("index"):  # Dropdown, ToggleButtons, SelectionSlider
        return "index", len(control.options)
    if getattr(control, "min", None) == 0 and getattr(control, "step", 1) == 1:  # IntSlider from 0
        return "value", int(control.max) + 1
    raise TypeError(f"a {type(control).__name__} cannot switch pages: use a Dropdown, ToggleButtons, "
                    "SelectionSlider or an IntSlider from 0")


def _switched(controls: Sequence[Any], page: Callable[..., Any], links: list[Any]) -> Any:
    """A page for every combination of the controls' choices, in nested Stacks linked to the controls in
    the browser: `page(i_1, ..., i_n)` (the choices' numbers, first control outermost) returns a widget.
    A page may be returned for several combinations (e.g. greedy decoding for every beam width); the widget
    is then shown in each place and stored once. Adds the browser links to `links`."""
    import ipywidgets as widgets

    if not controls:
        return page()
    control, rest = controls[0], controls[1:]
    trait, n = _choices(control)
    children = [_switched(rest, functools.partial(page, i), links) for i in range(n)]
    if n == 1:
        return children[0]
    stack = widgets.Stack(children=children, selected_index=getattr(control, trait))
    links.append(widgets.jslink((control, trait), (stack, "selected_index")))
    return stack


class _Examples:
    """The outer level of an explorer: a menu of examples (`Dropdown`), each with its pages (`_switched`
    over the inner controls), and, when the explorer can compute a view of any input, a text box that adds
    the typed input to the menu (in a running kernel; on the website the prepared examples are the choice).

    `prepare(name)` checks an input and returns what the pages need (raising KeyError or ValueError for an
    input the model cannot take); `page(prepared, *choices)` returns a page. A box of controls and pages:
    `self.menu`, `self.typed` (None without free text), `self.note` (messages), `self.pages` (the Stack).
    """

    def __init__(self, names: Sequence[str], prepare: Callable[[str], Any], inner: Sequence[Any],
                 page: Callable[..., Any], description: str, free_text: bool, placeholder: str = "type your own",
                 width: str = "600px") -> None:
        import ipywidgets as widgets

        names = list(dict.fromkeys(str(n) for n in names))
        if not names:
            raise ValueError(f"need at least one {description} to show")
        self._prepare, self._inner, self._page, self.links = prepare, list(inner), page, []
        self.menu = widgets.Dropdown(options=names, value=names[0], description=description,
                                     layout=widgets.Layout(width="100%", max_width=width))
        self.note = widgets.HTML()
        self.pages = widgets.Stack(children=[self._subtree(prepare(n)) for n in names], selected_index=0)
        self.links.append(widgets.jslink((self.menu, "index"), (self.pages, "selected_index")))
        self.typed = None
        if free_text:
            self.typed = widgets.Text(placeholder=f"{placeholder} (with a running kernel), then press Enter",
                                      description="or type", continuous_update=False,
                                      layout=widgets.Layout(width="100%", max_width=width))
            self.typed.observe(lambda change: self.add(change["new"]), names="value")

    def _subtree(self, prepared: Any) -> Any:
        return _switched(self._inner, functools.partial(self._page, prepared), self.links)

    def add(self, name: str) -> bool:
        """Show `name` (adding its pages if it is new); False, with a message in `note`, if it cannot be shown."""
        import html

        name = str(name)
        if not name.strip():
            return False
        if name not in self.menu.options:
            try:
                pages = self._subtree(self._prepare(name))
            except (KeyError, ValueError) as err:
                message = str(err.args[0] if err.args else err)
                self.note.value = (f"<span style='color:{HIGHLIGHT}'><b>cannot show “{html.escape(name)}”:</b> "
                                   f"{html.escape(message)}</span>")
                return False
            self.pages.children = (*self.pages.children, pages)
            self.menu.options = (*self.menu.options, name)
        self.note.value = ""
        self.menu.value = name
        self.pages.selected_index = self.menu.index  # (the browser link does this too)
        return True

    def head(self) -> list[Any]:
        """The example controls, for the top of the explorer's box."""
        return [self.menu] + ([self.typed] if self.typed is not None else []) + [self.note]


def word_explorer(neighbours: Mapping[str, Callable[[str], Sequence[tuple[str, float]]]], points: Any,
                  labels: Sequence[str], default: str, examples: Sequence[str] = (), topn: int = 8,
                  map_labels: int = 25, title: str = "2-D map of the word vectors") -> Any:
    """An explorer for word vectors: choose a word (or type one, in a running kernel); see its nearest
    neighbours under each method side by side, and where it and its neighbours sit on a 2-D map of
    `labels` (`points` (N, 2)).

    `neighbours` maps a method's name to a function word -> [(neighbour, cosine similarity), ...]
    that raises KeyError for a word it does not know. The map highlights the word and the first
    method's neighbours. `default` and `examples` are the words drawn up front, so the menu works on
    the static website too. Returns an ipywidgets VBox.
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

    def page(word: str) -> Any:
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
                    cells.append("<td style='padding:2px 10px;opacity:.6'>not in vocabulary</td>" if r == 0 else "<td></td>")
                elif r < len(found):
                    w, sim = found[r]
                    cells.append(f"<td style='padding:2px 10px;white-space:nowrap'>{html.escape(w)} "
                                 f"<span style='opacity:.6'>{sim:.2f}</span></td>")
                else:
                    cells.append("<td></td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        table = widgets.HTML(f"<b>nearest neighbours of “{html.escape(word)}”</b> (cosine similarity)"
                             f"<table style='font-family:monospace'><tr>{header}</tr>{''.join(rows)}</table>")
        highlight = [w for w in [word, *(first or [])] if w in on_map]
        ax = scatter_2d(xy, labels, highlight=highlight, max_labels=map_labels,
                        title=title if word in on_map else f"{title} (“{word}” is not on the map)")
        marked = [w for w in highlight if w != word]
        alt = (f"{title}: {len(labels)} words as points, up to {map_labels} of them labelled. "
               + (f"“{word}” is highlighted" if word in on_map else f"“{word}” is not on the map")
               + (f"; so are its nearest neighbours by {next(iter(neighbours))} that are on it: {', '.join(marked)}."
                  if marked else "."))
        return widgets.VBox([table, _picture(_small_png(ax), "640px", alt)])

    words = [w.strip().lower() for w in [default, *examples]]
    chooser = _Examples(words, lambda w: w.strip().lower(), [], page, "word", free_text=True,
                        placeholder="type a word", width="420px")
    box = widgets.VBox([*chooser.head(), chooser.pages])
    box.links = chooser.links  # keep the browser-side links with the explorer
    box.add = chooser.add
    return box


def decoding_explorer(decode: Callable[[str, str, int, float], Sequence[tuple[str, float, float]]],
                      default: str, examples: Sequence[str] = (), method: str = "beam", width: int = 4,
                      max_width: int = 10, alpha: float = 0.0, widths: Sequence[int] | None = None,
                      alphas: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0)) -> Any:
    """An explorer for a sequence-to-sequence model's decoder: choose an input (or type one, in a running
    kernel), greedy or beam search, the beam width and the length-normalisation alpha, and see the
    candidate outputs with their scores.

    `decode(text, method, width, alpha)` with method "greedy" or "beam" returns the candidates, best
    first, as (output text, log-probability, score) triples; it may raise ValueError (e.g. an unknown
    character), whose message is shown in the explorer instead of a traceback. The results for `default`,
    `examples`, every width in `widths` (default 1, 2, 4, 6, 8, 10 up to `max_width`) and every alpha in
    `alphas` are computed up front, so the controls work on the static website too. Returns an ipywidgets VBox.
    """
    import html
    import math

    import ipywidgets as widgets

    if method not in ("greedy", "beam"):
        raise ValueError(f"method must be 'greedy' or 'beam', got {method!r}")
    if not (isinstance(max_width, int) and max_width >= 1 and isinstance(width, int) and 1 <= width <= max_width):
        raise ValueError(f"need 1 ≤ width ≤ max_width, got width={width!r}, max_width={max_width!r}")
    widths = sorted({w for w in (widths or (1, 2, 4, 6, 8, 10)) if 1 <= w <= max_width} | {width})
    alphas = sorted({round(float(a), 3) for a in alphas} | {round(float(alpha), 3)})
    chooser_ = widgets.ToggleButtons(options=["greedy", "beam"], value=method, description="decoding")
    beam = widgets.SelectionSlider(options=widths, value=width, description="beam width", continuous_update=False)
    length = widgets.SelectionSlider(options=[(f"{a:g}", a) for a in alphas], value=round(float(alpha), 3),
                                     description="alpha", continuous_update=False)
    cache: dict[tuple[Any, ...], Any] = {}

    def page(text: str, m: int, w: int, a: int) -> Any:
        how_ = ("greedy",) if m == 0 else ("beam", widths[w], alphas[a])
        key = (text, *how_)
        if key not in cache:
            candidates = list(decode(text, how_[0], *(how_[1:] or (1, 0.0))))
            rows = "".join(
                f"<tr><td style='padding:2px 10px'>{i}</td><td style='padding:2px 10px'><b>{html.escape(out)}</b></td>"
                f"<td style='padding:2px 10px;text-align:right'>{lp:.3f}</td>"
                f"<td style='padding:2px 10px;text-align:right'>{math.exp(lp):.1%}</td>"
                f"<td style='padding:2px 10px;text-align:right'>{score:.3f}</td></tr>"
                for i, (out, lp, score) in enumerate(candidates, 1))
            how = ("greedy decoding (beam width and alpha apply to beam search)" if m == 0 else
                   f"beam search, width {how_[1]}, alpha {how_[2]:g}")
            cache[key] = widgets.HTML(
                f"<b>“{html.escape(text)}”</b> → {how}"
                "<table style='font-family:monospace'><tr><th>#</th><th>output</th><th>log p</th>"
                f"<th>p</th><th>score</th></tr>{rows}</table>")
        return cache[key]

    chooser = _Examples([default, *examples], str, [chooser_, beam, length], page, "input", free_text=True,
                        placeholder="type an input", width="420px")
    box = widgets.VBox([*chooser.head(), chooser_, widgets.HBox([beam, length]), chooser.pages])
    box.links = chooser.links
    box.add = chooser.add
    return box



def gate_viewer(compute: Callable[[str], Mapping[str, Any]], default: str, examples: Sequence[str] = (),
                ranges: Mapping[str, tuple[float, float]] | None = None, max_chars: int = 100,
                title: str = "Activations per character") -> Any:
    """A viewer for per-character activations of a recurrent network (LSTM gates, cell state, ...).

    Choose one of `examples` (or type a line, in a running kernel): `compute(text)` returns
    {name: (T, U) array}, one row per character of `text` and one column per unit, and every map is
    drawn as a heatmap with units as rows and the characters along the bottom. `ranges` fixes a map's
    colour range, e.g. {"forget": (0, 1), "cell": (-2, 2)} (a range around 0 gets a diverging colour
    map); other maps are scaled to their own values. Text longer than `max_chars` is cut. If `compute`
    raises KeyError or ValueError for a typed line (e.g. a character the model does not know), the
    message is shown instead. `default` and `examples` are drawn up front, so the menu works on the
    static website too. Returns an ipywidgets VBox.
    """
    import html

    import ipywidgets as widgets

    if not isinstance(default, str) or not default:
        raise ValueError("default must be a non-empty line of text to show first")
    if not isinstance(max_chars, int) or max_chars < 1:
        raise ValueError(f"max_chars must be a positive int, got {max_chars!r}")
    ranges = dict(ranges or {})

    def prepare(text: str) -> tuple[str, dict[str, np.ndarray]]:
        text = text[:max_chars]
        if not text:
            raise ValueError("type some text")
        maps = {name: _to_numpy(m, f"compute(text)[{name!r}]") for name, m in compute(text).items()}
        if not maps:
            raise TypeError("compute(text) returned no maps to draw")
        for name, m in maps.items():
            if m.ndim != 2 or m.shape[0] != len(text):
                raise TypeError(f"compute(text)[{name!r}] must have shape ({len(text)}, units): one row per "
                                f"character, got {tuple(m.shape)}")
        return text, maps

    def page(prepared: tuple[str, dict[str, np.ndarray]]) -> Any:
        text, maps = prepared
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
            png = _small_png(fig)
        units = next(iter(maps.values())).shape[1]
        alt = (f"{title} for the text “{text}”: {len(maps)} heatmap{'s' if len(maps) > 1 else ''} "
               f"({', '.join(maps)}), each with the {units} units as rows and the {len(text)} characters as "
               "columns; the colour is the unit's value at that character.")
        return widgets.VBox([widgets.HTML(f"<b>{html.escape(text)}</b> ({len(text)} characters)"),
                             _picture(png, "1000px", alt)])

    try:
        prepare(default)
    except TypeError as err:
        raise ValueError(str(err)) from err
    chooser = _Examples([default, *examples], prepare, [], page, "text", free_text=True,
                        placeholder="type a line", width="900px")
    box = widgets.VBox([*chooser.head(), chooser.pages])
    box.links = chooser.links
    box.add = chooser.add
    return box


def sampling_explorer(sample: Callable[[str, float, int | None, float | None, int], str],
                      distribution: Callable[[str, float, int | None, float | None], Sequence[tuple[str, float]]]
                      | None = None, default: str = "", examples: Sequence[str] = (), temperature: float = 0.8,
                      top_k: int | None = None, top_p: float | None = None, seed: int = 0, vocab_size: int = 256,
                      temperatures: Sequence[float] = (0.0, 0.5, 0.8, 1.2), top_ks: Sequence[int | None] = (None, 10),
                      top_ps: Sequence[float | None] = (None, 0.9), title: str = "Sampling") -> Any:
    """An explorer for sampling from a language model: a prompt, the temperature, top-k and top-p.

    `sample(prompt, temperature, top_k, top_p, seed)` returns the continuation (text after the prompt);
    top_k None and top_p None mean no filter. If `distribution(prompt, temperature, top_k, top_p)` is
    given, it returns the next-token candidates after the prompt as (token, probability) pairs once
    temperature and filters are applied, most likely first; the explorer shows them as bars, so the
    reader sees what each knob does to the distribution before a token is drawn.
    The samples for `default` and `examples` (prompts; another can be typed in a running kernel) at every
    value of `temperatures`, `top_ks` and `top_ps` (plus the given temperature, top_k and top_p) are drawn
    up front with `seed`, so the controls work on the static website too; at temperature 0 (greedy) the
    filters change nothing and the sample is drawn once. ValueError or KeyError for a typed prompt (an
    unknown character) is shown as a message. Returns an ipywidgets VBox.
    """
    import html

    import ipywidgets as widgets

    if not isinstance(default, str):
        raise TypeError(f"default must be a str (the first prompt), got {type(default).__name__}")
    if not (isinstance(vocab_size, int) and vocab_size >= 1):
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    for t in (temperature, *temperatures):
        if not 0.0 <= t <= 2.0:
            raise ValueError(f"temperature must be in [0, 2] (0 = greedy), got {t}")
    for k in (top_k, *top_ks):
        if k is not None and not (isinstance(k, int) and 1 <= k <= vocab_size):
            raise ValueError(f"top_k must be None or an int in [1, vocab_size={vocab_size}], got {k!r}")
    for p in (top_p, *top_ps):
        if p is not None and not 0.0 < p <= 1.0:
            raise ValueError(f"top_p must be None or in (0, 1], got {p}")
    temps = sorted({float(t) for t in (*temperatures, temperature)})
    ks = [None, *sorted({k for k in (*top_ks, top_k) if k is not None})]
    ps = [None, *sorted({p for p in (*top_ps, top_p) if p is not None and p < 1.0}, reverse=True)]
    style_ = {"description_width": "90px"}
    wide = widgets.Layout(width="420px")
    temp = widgets.SelectionSlider(options=[(f"{t:g}", t) for t in temps], value=float(temperature),
                                   description="temperature", continuous_update=False, layout=wide, style=style_)
    k_ = widgets.SelectionSlider(options=[("off" if k is None else str(k), k) for k in ks], index=ks.index(top_k),
                                 description="top-k", continuous_update=False, layout=wide, style=style_)
    p_ = widgets.SelectionSlider(options=[("off" if p is None else f"{p:g}", p) for p in ps],
                                 index=ps.index(top_p if top_p is not None and top_p < 1.0 else None),
                                 description="top-p", continuous_update=False, layout=wide, style=style_)
    cache: dict[tuple[Any, ...], Any] = {}

    def page(prompt: str, ti: int, ki: int, pi: int) -> Any:
        t = temps[ti]
        kk, pp = (None, None) if t == 0 else (ks[ki], ps[pi])
        key = (prompt, t, kk, pp)
        if key not in cache:
            how = (f"temperature {t:g}" + ("" if kk is None else f", top-k {kk}") + ("" if pp is None else f", top-p {pp:g}")
                   + (" (greedy: the filters change nothing)" if t == 0 else ""))
            parts = []
            if distribution is not None:
                rows = "".join(
                    f"<tr><td style='padding:1px 8px;font-family:monospace'>{html.escape(repr(tok))}</td>"
                    f"<td style='padding:1px 8px;width:240px'><div style='background:{BASE};height:12px;"
                    f"width:{max(1.0, 240 * prob):.0f}px'></div></td>"
                    f"<td style='padding:1px 8px;text-align:right'>{prob:.1%}</td></tr>"
                    for tok, prob in list(distribution(prompt, t, kk, pp))[:10])
                parts.append(widgets.HTML(f"<b>next token after the prompt</b> ({how}; the 10 most likely)"
                                          f"<table>{rows}</table>"))
            out = sample(prompt, t, kk, pp, seed)
            parts.append(widgets.HTML(
                f"<div style='margin-top:6px'>{html.escape(title)}: {how}, seed {seed}</div>"
                "<pre style='white-space:pre-wrap;font-size:13px;line-height:1.35;border:1px solid #8888;"
                f"padding:8px'><b>{html.escape(prompt)}</b>{html.escape(out)}</pre>"))
            cache[key] = widgets.VBox(parts)
        return cache[key]

    chooser = _Examples([default, *examples], str, [temp, k_, p_], page, "prompt", free_text=True,
                        placeholder="type a prompt", width="700px")
    box = widgets.VBox([*chooser.head(), temp, widgets.HBox([k_, p_]), chooser.pages])
    box.links = chooser.links
    box.add = chooser.add
    return box


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
    pictures = {p: image_widget(format="png", layout=widgets.Layout(width="100%", max_width="1100px"))
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
        pictures[P].tooltip = (f"The image cut into a {rows}×{cols} grid of {P}×{P}-pixel patches, patch "
                               f"{chosen[P]} (row {r}, column {c}) outlined; beside it that patch enlarged, and the "
                               f"sequence the model reads, one row of pixels per patch ({rows * cols} rows), "
                               "with the patch's row outlined.")
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
                       max_ticks: int = 60, vmax: float | None = 1.0, max_examples: int = 4) -> Any:
    """An explorer for attention maps: choose an example, the kind of attention, the layer and the head.

    maps:     {example name: view}, precomputed, or a function compute(text) -> view, with which the reader
              can also type an input of their own in a running kernel (a KeyError or ValueError it raises,
              e.g. an unknown character, is shown as a message).
    view:     {kind: (attn, query_labels, key_labels)}, e.g. {"encoder self-attention": ...,
              "cross-attention": ...} or {"additive": ..., "dot-product": ...}; attn has shape
              (L, H, T, S) (layers, heads, queries, keys), or (H, T, S), or (T, S); a list of L
              per-layer (H, T, S) maps works too.
    default:  the example shown first; default: the first of `examples` or of maps.
    examples: the examples offered in the menu (default: the keys of `maps`); the first `max_examples`
              (the default first) are drawn up front for every kind, layer and head, so every control
              works on the static website too (each is a picture: keep the product small).
    The head menu offers all heads as a grid (`attention_grid`), their mean, or one head; controls for a
    single kind, layer or head are hidden; a kind with fewer layers or heads than another shows its last.
    Returns an ipywidgets VBox.
    """
    import html

    import ipywidgets as widgets

    if not isinstance(max_examples, int) or max_examples < 1:
        raise ValueError(f"max_examples must be a positive int, got {max_examples!r}")
    if callable(maps) and not isinstance(maps, Mapping):
        compute, views = maps, None
        options = [str(e) for e in examples]
        if default is None:
            if not options:
                raise ValueError("attention_explorer with a compute function needs default= (or examples=) "
                                 "to know what to show first")
            default = options[0]
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
    options = list(dict.fromkeys([str(default), *options]))[:max_examples]

    def get_view(name: str) -> tuple[str, dict[str, tuple[np.ndarray, list[str] | None, list[str] | None]]]:
        if views is not None:
            if name not in views:
                raise KeyError(f"no example named {name!r}; choose one of {list(views)}")
            return name, views[name]
        if not name.strip():
            raise ValueError("type an input")
        return name, _attention_view(compute(name), f"compute({name!r})")

    prepared = {name: get_view(name) for name in options}  # errors here are the author's, so they are raised
    kinds = list(dict.fromkeys(k for _, view in prepared.values() for k in view))
    L_max = max(a.shape[0] for _, view in prepared.values() for a, _, _ in view.values())
    H_max = max(a.shape[1] for _, view in prepared.values() for a, _, _ in view.values())
    kind = widgets.ToggleButtons(options=kinds, description="attention")
    layer = widgets.IntSlider(value=0, min=0, max=L_max - 1, description="layer", continuous_update=False)
    head = widgets.Dropdown(options=["all heads", "mean over heads", *(f"head {h}" for h in range(H_max))],
                            value="all heads", description="head")
    kind.layout.display = "none" if len(kinds) == 1 else None
    layer.layout.display = "none" if L_max == 1 else None
    head.layout.display = "none" if H_max == 1 else None
    cache: dict[tuple[Any, ...], Any] = {}

    def page(prepared: tuple[str, dict[str, Any]], k: int, layer_: int, h: int) -> Any:
        name, view = prepared
        kind_ = kinds[k] if kinds[k] in view else next(iter(view))
        attn, q, keys = view[kind_]
        L, H, T, S = attn.shape
        layer_ = min(layer_, L - 1)
        which = "one" if H == 1 else "all" if h == 0 else "mean" if h == 1 else min(h - 2, H - 1)
        key = (name, kind_, layer_, which)
        if key not in cache:
            maps_l = attn[layer_]  # (H, T, S)
            where = kind_ + (f", layer {layer_}" if L > 1 else "")
            if which == "one":
                fig, note = attention_grid(maps_l[0], q, keys, max_ticks=max_ticks, vmax=vmax,
                                           title=f"{title}: {where}"), ""
            elif which == "all":
                fig, note = attention_grid(maps_l, q, keys, max_ticks=max_ticks, vmax=vmax,
                                           title=f"{title}: {where}"), f"all {H} heads"
            elif which == "mean":
                fig, note = attention_grid(maps_l.mean(0), q, keys, max_ticks=max_ticks, vmax=vmax,
                                           title=f"{title}: {where}, mean over {H} heads"), f"mean over {H} heads"
            else:
                fig, note = attention_grid(maps_l[which], q, keys, max_ticks=max_ticks, vmax=vmax,
                                           title=f"{title}: {where}, head {which}"), f"head {which}"
            parts = [f"<b>{html.escape(name)}</b>", html.escape(kind_)]
            if L > 1:
                parts.append(f"layer {layer_} of {L}")
            if note:
                parts.append(note)
            caption = (" · ".join(parts) + f" <span style='opacity:.7'>(L, H, T, S) = {(L, H, T, S)}: "
                       f"{T} queries × {S} keys</span>")
            shown = {"one": "one heatmap", "all": f"one heatmap per head, {H} heads",
                     "mean": f"one heatmap, the mean over {H} heads"}.get(which, f"one heatmap, head {which}")
            alt = (f"{title} ({where}) for “{name}”: {shown}, with the {T} queries as rows and the {S} keys "
                   "as columns; a bright cell is a key that query attends to.")
            cache[key] = widgets.VBox([widgets.HTML(caption), _picture(_small_png(fig), alt=alt)])
        return cache[key]

    chooser = _Examples(options, lambda name: prepared[name] if name in prepared else get_view(name),
                        [kind, layer, head], page, "example", free_text=compute is not None,
                        placeholder="type an input")
    box = widgets.VBox([*chooser.head(), kind, widgets.HBox([layer, head]), chooser.pages])
    box.links = chooser.links
    box.add = chooser.add
    return box


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
    - caption → images: choose a caption (or type one, in a running kernel, if `encode_text(text) -> (E,)`
      is given) and see the `top` most similar images, each with its number and similarity;
    - image → captions: choose an image by its number and see the `top` most similar captions.
    Every caption's and every image's ranking is computed up front, so both work on the static website.
    A ValueError or KeyError from `encode_text` is shown as a message. Returns an ipywidgets VBox, showing
    `default_caption` (default: the first caption) and image `default_image` first.
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
    pictures: dict[int, Any] = {}

    def picture(i: int) -> Any:  # one Image widget per image, shown wherever the image is ranked
        if i not in pictures:
            pictures[i] = image_widget(value=_png(thumbs[i], thumbnail), format="png",
                                        layout=widgets.Layout(width=f"{thumbnail}px"),
                                        tooltip=f"image #{i} of the {len(thumbs)}; the caption it scores highest: "
                                                f"“{captions[int(np.argmax(txt @ img[i]))]}”")
        return pictures[i]

    g_i, g_t = min(grid, len(thumbs)), min(grid, len(captions))
    matrix = _picture(_small_png(similarity_matrix(img[:g_i] @ txt[:g_t].T, thumbs[:g_i], captions[:g_t],
                                                   title=title, mark_best=True)),
                      alt=f"{title}: a heatmap with the first {g_i} images as rows (each shown as a thumbnail) and the "
                          f"first {g_t} captions as columns; the caption each image scores highest is outlined.")

    def feature_of(text: str) -> tuple[str, np.ndarray]:
        if not text.strip():
            raise ValueError("type a caption")
        if encode_text is None or text in captions:
            return text, txt[captions.index(text)]
        vector = _to_numpy(encode_text(text), "encode_text(text)").reshape(-1)
        if vector.shape != (txt.shape[1],):
            raise TypeError(f"encode_text returned {vector.size} numbers, the text features have E = {txt.shape[1]}")
        return text, vector / max(np.linalg.norm(vector), 1e-12)

    def images_for(prepared: tuple[str, np.ndarray]) -> Any:
        text, feature = prepared
        sims = img @ feature  # (N_i,)
        order = np.argsort(-sims, kind="stable")[:top_i]
        gallery = widgets.HBox([widgets.VBox([picture(int(i)), widgets.HTML(
            f"<div style='text-align:center'>#{i}: {sims[i]:.3f}</div>")]) for i in order])
        return widgets.VBox([widgets.HTML(f"the {top_i} images (of {len(thumbs)}) most similar to "
                                          f"<b>“{html.escape(text)}”</b> (cosine similarity)"), gallery])

    def captions_for(i: int) -> Any:
        sims = txt @ img[i]  # (N_t,)
        order = np.argsort(-sims, kind="stable")[:top_t]
        lo = min(0.0, float(sims.min()))
        span = max(float(sims.max()) - lo, 1e-12)
        rows = "".join(
            f"<tr><td style='padding:1px 8px'>{html.escape(captions[j])}</td>"
            f"<td style='padding:1px 8px;width:160px'><div style='background:{BASE};height:12px;"
            f"width:{max(1.0, 160 * (sims[j] - lo) / span):.0f}px'></div></td>"
            f"<td style='padding:1px 8px;text-align:right'>{sims[j]:.3f}</td></tr>" for j in order)
        ranking = widgets.HTML(f"<b>image #{i}</b>: the {top_t} captions (of {len(captions)}) most similar to it"
                               f"<table>{rows}</table>")
        return widgets.HBox([picture(i), ranking], layout=widgets.Layout(align_items="flex-start"))

    chooser = _Examples([default_caption, *captions], feature_of, [], images_for, "caption",
                        free_text=encode_text is not None, placeholder="type a caption")
    image_slider = widgets.IntSlider(value=default_image, min=0, max=len(thumbs) - 1, description="image",
                                     continuous_update=False)
    links = chooser.links
    by_image = _switched([image_slider], captions_for, links)
    box = widgets.VBox([matrix, widgets.HTML("<b>caption → images</b>"), *chooser.head(), chooser.pages,
                        widgets.HTML("<b>image → captions</b>"), image_slider, by_image])
    box.links = links
    box.add = chooser.add
    return box
