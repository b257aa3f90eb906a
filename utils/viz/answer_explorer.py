"""Chapter 10's explorer: a vision-language model's answers and where each answer token looked on the image."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .explorers import image_widget
from .figures import _to_numpy, attention_on_images, figure_to_png, style


def _check_view(view: Mapping[str, Any], where: str) -> tuple[str, list[str], np.ndarray, str]:
    for key in ("question", "answer", "attention"):
        if key not in view:
            raise ValueError(f"{where} has no {key!r}; a view is {{'question': str, 'answer': [tokens], "
                             "'attention': (n_tokens, G, G), 'expected': str (optional)}")
    answer = list(view["answer"])
    maps = _to_numpy(view["attention"], f"{where}['attention']")
    if maps.ndim != 3 or maps.shape[0] != max(1, len(answer)):
        raise ValueError(f"{where}: attention must be (n_tokens, G, G), one map per answer token ({len(answer)}), "
                         f"got shape {tuple(maps.shape)}")
    return str(view["question"]), answer, maps, str(view.get("expected", ""))


def answer_explorer(images: Any, views: Sequence[Sequence[Mapping[str, Any]]], labels: Sequence[str] | None = None,
                    title: str = "where each answer token looked") -> Any:
    """Pick a scene, pick a question: the model's answer and, per answer token, its attention over the patch grid.

    images: K scenes (K, H, W, 3) or (K, 3, H, W) in [0, 1]; views[k]: the prepared questions about scene k,
    each {"question": str, "answer": [generated tokens], "attention": (n_tokens, G, G), "expected": str}.
    Everything is drawn up front: a scene dropdown switches a Stack of scene pages and each page's question
    dropdown a Stack of pictures, all linked in the browser (`jslink`), so the static website shows every
    prepared answer without a kernel. Returns an ipywidgets VBox (`.links` holds the links).
    """
    import ipywidgets as widgets

    imgs = _to_numpy(images, "images")
    if imgs.ndim == 4 and imgs.shape[1] == 3 and imgs.shape[-1] != 3:
        imgs = imgs.transpose(0, 2, 3, 1)  # (K, 3, H, W) → (K, H, W, 3)
    if imgs.ndim != 4 or imgs.shape[-1] != 3 or len(imgs) != len(views) or not len(views):
        raise ValueError(f"images must be K colour images (K, H, W, 3) or (K, 3, H, W), one per entry of views "
                         f"({len(views)}), got shape {tuple(imgs.shape)}")
    labels = [f"scene {k}" for k in range(len(views))] if labels is None else list(labels)
    if len(labels) != len(views):
        raise ValueError(f"labels must name the {len(views)} scenes, got {len(labels)}")
    scene = widgets.Dropdown(options=[(name, k) for k, name in enumerate(labels)], value=0, description="scene")
    pages, links = [], []
    for k, scene_views in enumerate(views):
        if not scene_views:
            raise ValueError(f"views[{k}] is empty: prepare at least one question per scene")
        checked = [_check_view(v, f"views[{k}][{j}]") for j, v in enumerate(scene_views)]
        question = widgets.Dropdown(options=[(q, j) for j, (q, *_) in enumerate(checked)], value=0,
                                    description="question", layout=widgets.Layout(width="420px"))
        cards = []
        for q, answer, maps, expected in checked:
            said = " ".join(answer) if answer else "(nothing)"
            verdict = "" if not expected else (" ✓" if said == expected else f" ✗ (expected: {expected})")
            with style():
                fig = attention_on_images(imgs[k][None], maps[None], col_titles=[f"“{t}”" for t in answer] or ["—"],
                                          title=title)
            alt = (f"{labels[k]}, asked “{q}”, answered “{said}”: the scene and, for each of the "
                   f"{max(1, len(answer))} answer tokens, a map of where that token attended over the "
                   f"{maps.shape[1]}×{maps.shape[2]} patch grid.")
            cards.append(widgets.VBox([widgets.HTML(f"<b>Q:</b> {q} &nbsp; <b>A:</b> {said}{verdict}"),
                                       image_widget(value=figure_to_png(fig), format="png",
                                                     layout=widgets.Layout(max_width="640px"), tooltip=alt)]))
        stack = widgets.Stack(children=cards, selected_index=0)
        links.append(widgets.jslink((question, "index"), (stack, "selected_index")))
        question.observe(lambda change, s=stack: setattr(s, "selected_index", change["new"]), names="value")
        pages.append(widgets.VBox([question, stack]))
    scenes = widgets.Stack(children=pages, selected_index=0)
    links.append(widgets.jslink((scene, "index"), (scenes, "selected_index")))
    scene.observe(lambda change: setattr(scenes, "selected_index", change["new"]), names="value")
    box = widgets.VBox([scene, scenes])
    box.links = links
    return box
