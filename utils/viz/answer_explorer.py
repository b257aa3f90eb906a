"""Chapter 10's explorer: vision-language models' answers and where each answer token looked on the image."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .explorers import image_widget
from .figures import _to_numpy, attention_on_images, figure_to_png, style

VIEW_FORMAT = ("a view is {'question': str, 'expected': str (optional), 'models': {name: {'answer': [tokens], "
               "'attention': (L, n_tokens, G, G), 'share': (L, n_tokens) (optional)}}}, or for one model "
               "{'question', 'answer', 'attention': (n_tokens, G, G), 'share': (n_tokens,), 'expected'}")


def _check_answer(entry: Mapping[str, Any], where: str) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """One model's answer: the tokens, the maps (L, n, G, G) and the shares (L, n) or None."""
    for key in ("answer", "attention"):
        if key not in entry:
            raise ValueError(f"{where} has no {key!r}; {VIEW_FORMAT}")
    answer = list(entry["answer"])
    n = max(1, len(answer))
    maps = _to_numpy(entry["attention"], f"{where}['attention']")
    maps = maps[None] if maps.ndim == 3 else maps  # (L, n, G, G)
    if maps.ndim != 4 or maps.shape[1] != n:
        raise ValueError(f"{where}: attention must be (L, n_tokens, G, G) (or (n_tokens, G, G)), one map per answer "
                         f"token ({len(answer)}) and layer, got shape {tuple(_to_numpy(entry['attention'], '').shape)}")
    share = None
    if entry.get("share") is not None:
        share = _to_numpy(entry["share"], f"{where}['share']")
        share = share[None] if share.ndim == 1 else share  # (L, n)
        if share.shape != maps.shape[:2]:
            raise ValueError(f"{where}: share must be (L, n_tokens) = {maps.shape[:2]} like the maps, got "
                             f"{tuple(share.shape)}")
    return answer, maps, share


def _check_view(view: Mapping[str, Any], where: str) -> tuple[str, str, dict[str, tuple]]:
    if "question" not in view:
        raise ValueError(f"{where} has no 'question'; {VIEW_FORMAT}")
    models = view["models"] if "models" in view else {"": view}
    if not isinstance(models, Mapping) or not models:
        raise ValueError(f"{where}['models'] must map each model's name to its answer; {VIEW_FORMAT}")
    checked = {name: _check_answer(entry, f"{where}" + (f"['models'][{name!r}]" if name else ""))
               for name, entry in models.items()}
    return str(view["question"]), str(view.get("expected", "")), checked


def answer_explorer(images: Any, views: Sequence[Sequence[Mapping[str, Any]]], labels: Sequence[str] | None = None,
                    title: str = "where each answer token looked", share_notes: Mapping[str, str] | None = None
                    ) -> Any:
    """Pick a scene, a question, a model and a layer: the model's answer and, per answer token, its attention over
    the patch grid at that layer (or the mean over layers), with the token's share of attention on the image.

    images: K scenes (K, H, W, 3) or (K, 3, H, W) in [0, 1]; views[k]: the prepared questions about scene k, each
    {"question": str, "expected": str, "models": {name: {"answer": [generated tokens], "attention":
    (L, n_tokens, G, G), "share": (L, n_tokens)}}}; every view names the same models, each with the same L.
    One model may also be given flat: {"question", "answer", "attention": (n_tokens, G, G), "share", "expected"}.
    "share" is a number per answer token and layer that says how much the token drew on the image (what it is
    depends on the model: `share_notes[name]` says it under the picture; e.g. for a prefix model the token's
    self-attention mass on the image positions, for a cross-attention model the gate tanh(α) of the layer, its
    attention then summing to 1 over the image). The maps are drawn each scaled to its maximum, so the share is
    the only amount shown. The "mean" layer is the mean of the layers' maps and shares.

    Everything is drawn up front: the scene, model and layer controls sit above the pages and switch Stacks, each
    scene page's question menu a Stack of its own, all linked in the browser (`jslink`), so the static website
    shows every prepared view without a kernel. Returns an ipywidgets VBox (`.links` holds the links,
    `.controls` the scene, model and layer widgets, None where there is one choice). The page carries one picture
    per scene, question, model and layer choice (L + 1 with the mean), about 20 KB each for two answer tokens:
    mind a chapter page's weight budget (tests/test_site.py, 6 MB).
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
    checked = []
    for k, scene_views in enumerate(views):
        if not scene_views:
            raise ValueError(f"views[{k}] is empty: prepare at least one question per scene")
        checked.append([_check_view(v, f"views[{k}][{j}]") for j, v in enumerate(scene_views)])
    first = checked[0][0][2]
    names, L = list(first), next(iter(first.values()))[1].shape[0]
    for k, scene_views in enumerate(checked):
        for j, (_, _, answers) in enumerate(scene_views):
            layers = {name: a[1].shape[0] for name, a in answers.items()}
            if list(answers) != names or set(layers.values()) != {L}:
                raise ValueError(f"views[{k}][{j}] answers for models {layers} (name: layers), but views[0][0] for "
                                 f"{ {n: L for n in names} }: every view needs the same models with the same layers")
    notes = dict(share_notes or {})
    layer_names = ["mean"] + [f"layer {i + 1}" for i in range(L)] if L > 1 else ["all"]

    def card(k: int, q: str, expected: str, name: str, answer: list[str], maps: np.ndarray,
             share: np.ndarray | None, layer: int) -> Any:
        said = " ".join(answer) if answer else "(nothing)"
        verdict = "" if not expected else (" ✓" if said == expected else f" ✗ (expected: {expected})")
        tokens = [f"“{t}”" for t in answer] or ["—"]
        titles = tokens if share is None else [f"{t} · {s:.2f}" for t, s in zip(tokens, share)]
        with style():
            fig = attention_on_images(imgs[k][None], maps[None], col_titles=titles, title=title)
        who = f" by {name}" if name else ""
        at = "" if L == 1 else (", mean over layers" if layer == 0 else f", layer {layer}")
        alt = (f"{labels[k]}, asked “{q}”, answered “{said}”{who}{at}: the scene and, for each of the "
               f"{max(1, len(answer))} answer tokens, a map of where that token attended over the "
               f"{maps.shape[1]}×{maps.shape[2]} patch grid"
               + ("." if share is None else ", titled with its share of attention on the image."))
        note = notes.get(name, "")
        head = f"<b>Q:</b> {q} &nbsp; <b>A{f' ({name})' if name else ''}:</b> {said}{verdict}"
        if share is not None:
            head += (f"<br><small>share on the image{'' if L == 1 else ' (' + layer_names[layer] + ')'}: "
                     + ", ".join(f"{t} {s:.2f}" for t, s in zip(tokens, share)) + (f"; {note}" if note else "")
                     + "</small>")
        return widgets.VBox([widgets.HTML(head), image_widget(value=figure_to_png(fig), format="png",
                                                              layout=widgets.Layout(max_width="640px"),
                                                              tooltip=alt)])

    scene = widgets.Dropdown(options=[(name, k) for k, name in enumerate(labels)], value=0, description="scene")
    model = (widgets.ToggleButtons(options=[(n, i) for i, n in enumerate(names)], value=0, description="model",
                                   tooltips=[f"the answers of {n}" for n in names])
             if len(names) > 1 else None)
    layer = (widgets.ToggleButtons(options=[(n, i) for i, n in enumerate(layer_names)], value=0, description="layer",
                                   tooltips=["attention maps and shares averaged over the layers"]
                                   + [f"attention at {n}" for n in layer_names[1:]])
             if L > 1 else None)
    links, pages = [], []

    def follow(control: Any, stack: Any) -> None:
        """The stack shows the control's choice: in the browser (jslink) and in a kernel (observe)."""
        links.append(widgets.jslink((control, "index"), (stack, "selected_index")))
        control.observe(lambda change, s=stack: setattr(s, "selected_index", change["new"]), names="value")

    for k, scene_views in enumerate(checked):
        question = widgets.Dropdown(options=[(q, j) for j, (q, *_) in enumerate(scene_views)], value=0,
                                    description="question", layout=widgets.Layout(width="420px"))
        per_question = []
        for q, expected, answers in scene_views:
            per_model = []
            for name, (answer, maps, share) in answers.items():
                by_layer = [np.mean(maps, axis=0)] + list(maps) if L > 1 else [maps[0]]  # (n, G, G) each
                shares = (None,) * len(by_layer) if share is None else (
                    [share.mean(axis=0)] + list(share) if L > 1 else [share[0]])
                cards = [card(k, q, expected, name, answer, m, s, i) for i, (m, s) in enumerate(zip(by_layer, shares))]
                if layer is None:
                    per_model.append(cards[0])
                else:
                    stack = widgets.Stack(children=cards, selected_index=0)
                    follow(layer, stack)
                    per_model.append(stack)
            if model is None:
                per_question.append(per_model[0])
            else:
                stack = widgets.Stack(children=per_model, selected_index=0)
                follow(model, stack)
                per_question.append(stack)
        stack = widgets.Stack(children=per_question, selected_index=0)
        follow(question, stack)
        pages.append(widgets.VBox([question, stack]))
    scenes = widgets.Stack(children=pages, selected_index=0)
    follow(scene, scenes)
    box = widgets.VBox([widgets.HBox([c for c in (scene, model, layer) if c is not None],
                                     layout=widgets.Layout(flex_flow="row wrap")), scenes])
    box.links, box.controls = links, (scene, model, layer)
    return box
