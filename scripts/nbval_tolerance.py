"""Compare a notebook cell's outputs at a stated tolerance under nbval, for cells tagged `nbval-tolerant`.

Numbers a chapter prints from training (losses, accuracies, deltas) differ between CPUs and thread counts
in the third decimal, because kernels add in different orders. nbval compares outputs character for
character; for a tagged cell, `install()` makes it accept a fresh output that reads as the saved one up to
its numbers, each within the cell's tolerance (`tolerant_match`). The text between the numbers must be
identical, and the cell's asserts run as before. The tolerance is the cell's metadata
`onehot.nbval_tolerance` = {"rtol": .., "atol": ..}, else `DEFAULT_TOLERANCE`. The root conftest.py
installs it for every pytest run.
"""
from __future__ import annotations

import copy
import math
import re

TOLERANT_TAG = "nbval-tolerant"
DEFAULT_TOLERANCE = {"rtol": 0.05, "atol": 0.0}
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _tolerance(cell) -> dict[str, float]:
    """The cell's tolerance: metadata `onehot.nbval_tolerance` ({"rtol": .., "atol": ..}) or the default."""
    stated = cell.metadata.get("onehot", {}).get("nbval_tolerance", {})
    unknown = set(stated) - set(DEFAULT_TOLERANCE)
    if unknown:
        raise ValueError(f"onehot.nbval_tolerance has unknown keys {sorted(unknown)}; use rtol and atol")
    return {**DEFAULT_TOLERANCE, **stated}


def _to_float(token: str) -> float:
    return float(token.replace(",", ""))


def tolerant_match(fresh: str, saved: str, rtol: float, atol: float) -> bool:
    """True when `fresh` reads as `saved` up to its numbers: the text between the numbers is identical,
    both hold as many numbers, and each pair agrees as |fresh - saved| <= atol + rtol * |saved|.
    A changed word, a missing line or a number off by more than the tolerance is a mismatch."""
    if _NUMBER.split(fresh) != _NUMBER.split(saved):
        return False
    pairs = zip(_NUMBER.findall(fresh), _NUMBER.findall(saved))
    for a, b in pairs:
        x, y = _to_float(a), _to_float(b)
        if not (math.isfinite(x) and math.isfinite(y)) or abs(x - y) > atol + rtol * abs(y):
            return False
    return True


def _texts(output) -> dict[str, str]:
    """The comparable texts of one output: a stream's text, or each text/* value of a result."""
    if output.get("output_type") == "stream":
        return {"text": output.get("text", "")}
    return {k: v for k, v in output.get("data", {}).items() if k.startswith("text/") and isinstance(v, str)}


def install() -> None:
    """Patch nbval's IPyNbCell.compare_outputs (once) to compare tagged cells at their tolerance."""
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:  # nbval is not installed: nothing to compare
        return
    original = IPyNbCell.compare_outputs
    if getattr(original, "_onehot_tolerant", False):
        return

    def compare_outputs(self, test, ref, skip_compare=None):
        tags = self.cell.metadata.get("tags", [])
        if TOLERANT_TAG in tags:
            tol = _tolerance(self.cell)
            test = [copy.deepcopy(o) for o in test]  # both sides arrive with their streams coalesced
            for fresh, saved in zip(test, ref):
                # where a text agrees up to the tolerance, compare the saved text against itself
                for key, text in _texts(fresh).items():
                    old = _texts(saved).get(key)
                    if old is not None and text != old and tolerant_match(text, old, **tol):
                        if key == "text":
                            fresh["text"] = old
                        else:
                            fresh["data"] = {**fresh["data"], key: old}
        return original(self, test, ref, skip_compare)

    compare_outputs._onehot_tolerant = True
    IPyNbCell.compare_outputs = compare_outputs

