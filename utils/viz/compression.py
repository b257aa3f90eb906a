"""The compression explorer of chapter 11: quantize or prune a model and see one weight matrix's histogram
and error, the model's validation loss and a sample, every view precomputed so the controls work on the
static website (pages in Stacks switched by `jslink`, as every explorer in `explorers.py`)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from .explorers import _picture, _small_png, _switched
from .figures import BASE, _to_numpy, style



def compression_explorer(original: Any, quantized: Mapping[tuple[int, str], Mapping[str, Any]],
                         pruned: Mapping[float, Mapping[str, Any]], reference: Mapping[str, Any],
                         default_bits: int = 4, default_granularity: str | None = None,
                         default_sparsity: float | None = None, matrix_name: str = "one weight matrix") -> Any:
    """An explorer of what compression does to a model (chapter 11): quantize (bits and granularity) or
    prune (sparsity), and see one weight matrix's histogram and error, the model's validation loss and a sample.

    original: the matrix (O, I) in float. quantized: {(bits, granularity label): view}, pruned:
    {sparsity: view}, where a view is {"weights": the compressed matrix (O, I), "val_loss": float,
    "bytes": float (storage relative to float32), "sample": str}; reference: {"val_loss", "sample"} of the
    uncompressed model. Every view is drawn up front and switched in the browser (linked Stacks), so all
    controls work on the static website. A (bits, granularity) pair not given shows a note. Returns a VBox.
    """
    import html

    import ipywidgets as widgets

    w = _to_numpy(original, "original")
    if w.ndim != 2:
        raise ValueError(f"original must be a matrix (O, I), got shape {w.shape}")
    if not quantized and not pruned:
        raise ValueError("give at least one quantized or pruned view")
    for key, view in [*quantized.items(), *pruned.items()]:
        missing = {"weights", "val_loss", "bytes", "sample"} - set(view)
        if missing:
            raise ValueError(f"view {key!r} lacks {sorted(missing)}")
        if np.shape(_to_numpy(view["weights"], "weights")) != w.shape:
            got = np.shape(_to_numpy(view["weights"], "weights"))
            raise ValueError(f"view {key!r}: weights have shape {got}, the original matrix {w.shape}")
    for s in pruned:
        if not 0.0 <= s < 1.0:
            raise ValueError(f"sparsities must be in [0, 1), got {s}")
    bits = sorted({b for b, _ in quantized}, reverse=True)
    grans = list(dict.fromkeys(g for _, g in quantized))
    sparsities = sorted(pruned)
    if quantized and default_bits not in bits:
        raise ValueError(f"default_bits {default_bits!r} is not among the quantized views' bits {bits}")
    default_granularity = grans[0] if default_granularity is None and grans else default_granularity
    if quantized and default_granularity not in grans:
        raise ValueError(f"default_granularity {default_granularity!r} is not one of {grans}")
    default_sparsity = sparsities[len(sparsities) // 2] if default_sparsity is None and sparsities else default_sparsity
    if pruned and default_sparsity not in sparsities:
        raise ValueError(f"default_sparsity {default_sparsity!r} is not one of {sparsities}")
    views = [*quantized.values(), *pruned.values()]
    limit = max(float(np.abs(w - _to_numpy(v["weights"], "weights")).max()) for v in views)
    limit = limit or 1.0
    edges = np.linspace(w.min(), w.max(), 81)

    def page(label: str, view: Mapping[str, Any]) -> Any:
        approx = _to_numpy(view["weights"], "weights")
        err = w - approx
        with style():
            fig, (ax_h, ax_e) = plt.subplots(1, 2, figsize=(10, 3.2), gridspec_kw={"width_ratios": [1.3, 1]})
            ax_h.hist(w.ravel(), bins=edges, color="0.6", label="float32")
            ax_h.hist(approx.ravel(), bins=edges, color=BASE, alpha=0.75, label=label)
            ax_h.set(yscale="log", xlabel="weight value", ylabel="count", title=f"{matrix_name}: histogram")
            ax_h.legend(loc="upper right")
            im = ax_e.imshow(err, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
            ax_e.set(title="error w − ŵ (same colour scale on every page)", xlabel="input", ylabel="output row")
            ax_e.grid(False)
            fig.colorbar(im, ax=ax_e, shrink=0.9)
        rel = float(np.linalg.norm(err) / (np.linalg.norm(w) or 1.0))
        d = view["val_loss"] - reference["val_loss"]
        text = (f"<b>{html.escape(label)}</b>: validation loss <b>{view['val_loss']:.3f}</b> nats/char "
                f"(float32 {reference['val_loss']:.3f}, {d:+.3f}) · storage {view['bytes']:.2f}× float32 · "
                f"this matrix: max |error| {np.abs(err).max():.4f}, relative error {rel:.1%}")
        sample = ("<pre style='white-space:pre-wrap;font-size:13px;line-height:1.35;border:1px solid #8888;"
                  f"padding:8px;margin-top:4px'>{html.escape(view['sample'])}</pre>")
        alt = (f"{label}: left, histograms of the values of {matrix_name} in float32 and compressed (log count); "
               f"right, a heatmap of the error w − ŵ, output rows by inputs, blue negative and red positive "
               f"(max |error| {np.abs(err).max():.4f}, relative error {rel:.1%}).")
        return widgets.VBox([widgets.HTML(text), _picture(_small_png(fig), "1000px", alt),
                             widgets.HTML("<i>a sample from the compressed model</i>" + sample)])

    links: list[Any] = []
    parts, names = [], []
    if quantized:
        bits_ = widgets.SelectionSlider(options=[(str(b), b) for b in bits], value=default_bits, description="bits",
                                        continuous_update=False)
        gran_ = widgets.ToggleButtons(options=grans, value=default_granularity, description="scale per")
        q_pages: dict[tuple[int, str], Any] = {}

        def q_page(bi: int, gi: int) -> Any:
            key = (bits[bi], grans[gi])
            if key not in quantized:
                return widgets.HTML(f"<i>{bits[bi]} bits with a scale per {html.escape(grans[gi])} was not computed</i>")
            if key not in q_pages:
                q_pages[key] = page(f"int{key[0]}, scale per {key[1]}", quantized[key])
            return q_pages[key]

        parts.append(widgets.VBox([bits_, gran_, _switched([bits_, gran_], q_page, links)]))
        names.append("quantize")
    if pruned:
        sp_ = widgets.SelectionSlider(options=[(f"{s:.0%}", s) for s in sparsities], value=default_sparsity,
                                      description="sparsity", continuous_update=False)
        parts.append(widgets.VBox([sp_, _switched([sp_], lambda i: page(
            f"{sparsities[i]:.0%} of weights pruned", pruned[sparsities[i]]), links)]))
        names.append("prune")
    mode = widgets.ToggleButtons(options=names, value=names[0], description="method")
    stack = widgets.Stack(children=parts, selected_index=0)
    links.append(widgets.jslink((mode, "index"), (stack, "selected_index")))
    box = widgets.VBox([mode, stack])
    box.links = links
    return box
