"""Helpers for the explorer tests (tests/test_viz.py, tests/test_viz_generation.py): what a static page shows
of an explorer after the reader changed its controls, and the explorer's controls."""
from __future__ import annotations


def on_the_page(box):
    """What a static page shows of an explorer after the reader changed its controls: the browser-side
    links (jslink) are applied as the browser would, then the visible pages' text and pictures collected."""
    import ipywidgets as widgets

    for link in box.links:
        (source, s_trait), (target, t_trait) = link.source, link.target
        setattr(target, t_trait, getattr(source, s_trait))
    shown = []

    def walk(w):
        if isinstance(w, widgets.Stack):
            walk(w.children[w.selected_index])
        elif isinstance(w, widgets.Box):
            for child in w.children:
                walk(child)
        elif isinstance(w, widgets.Image):
            shown.append(bytes(w.value))
        elif isinstance(w, widgets.HTML) and w.value:
            shown.append(w.value)

    walk(box)
    return shown


def controls_of(box):
    """The explorer's controls by description (its menus, sliders and toggle buttons, nested boxes included)."""
    import ipywidgets as widgets

    found = {}

    def walk(w):
        if isinstance(w, widgets.Stack):
            return
        if isinstance(w, widgets.Box):
            for child in w.children:
                walk(child)
        elif isinstance(w, (widgets.Dropdown, widgets.ToggleButtons, widgets.SelectionSlider, widgets.IntSlider,
                            widgets.Text)):
            found[w.description] = w

    walk(box)
    return found
