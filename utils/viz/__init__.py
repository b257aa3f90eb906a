"""The book's pictures: static figures (`figures.py`), interactive explorers (`explorers.py`, and
`compression.py`, `answer_explorer.py`, `generation.py` for chapters 10-12) and drawn
diagrams of the models (`diagrams.py`, used as `viz.diagrams.gpt_stack()`).

Chapters write `from utils import viz` and call `viz.heatmap(...)`, `viz.attention_explorer(...)`:
every public name of both modules is available here.
"""
from . import diagrams
from .answer_explorer import answer_explorer
from .compression import compression_explorer
from .generation import code_grid_explorer, denoising_explorer, generation_explorer
from .explorers import (attention_explorer, decoding_explorer, gate_viewer, patch_explorer, sampling_explorer,
                        similarity_explorer, word_explorer)
from .figures import (BASE, HIGHLIGHT, STYLE, accuracy_by_length, attention_grid, attention_on_images,
                      figure_to_png, heatmap, loss_curves, patch_grid, patch_sequence, scatter_2d,
                      similarity_matrix, style, use_style)

__all__ = ["BASE", "HIGHLIGHT", "STYLE", "accuracy_by_length", "answer_explorer", "attention_explorer", "attention_grid",
           "attention_on_images", "code_grid_explorer", "compression_explorer", "decoding_explorer", "denoising_explorer", "diagrams", "figure_to_png", "gate_viewer", "generation_explorer", "heatmap", "loss_curves",
           "patch_explorer", "patch_grid", "patch_sequence", "sampling_explorer", "scatter_2d", "similarity_explorer",
           "similarity_matrix", "style", "use_style", "word_explorer"]
