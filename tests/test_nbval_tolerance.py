"""The tolerant comparison of training outputs (scripts/nbval_tolerance.py, cell tag `nbval-tolerant`): numbers may move
within the cell's stated tolerance, nothing else may change, and untagged cells stay exact."""
from __future__ import annotations

import nbformat
import pytest

from scripts import nbval_tolerance
from scripts.nbval_tolerance import TOLERANT_TAG, tolerant_match

nbval_plugin = pytest.importorskip("nbval.plugin")


@pytest.mark.parametrize("fresh, saved, ok", [
    ("loss 2.084 (0.088)", "loss 2.122 (0.088)", True),        # 1.8% off: inside 5%
    ("loss 2.300 (0.088)", "loss 2.122 (0.088)", False),       # 8% off
    ("loss 2.122 (0.088)", "loss 2.122 (0.088)", True),
    ("loss 2.122 (0.088)", "loss 2.122 (0.088) done", False),  # text added
    ("lost 2.122", "loss 2.122", False),                        # a word changed
    ("loss 2.122 0.5", "loss 2.122", False),                    # a number added
    ("delta -0.0441", "delta +0.0441", False),                  # a flipped sign
    ("1,520 steps", "1,500 steps", True),                       # thousands separators read as one number
    ("12.5%", "12.0%", True),
])
def test_tolerant_match_relative(fresh, saved, ok):
    assert tolerant_match(fresh, saved, rtol=0.05, atol=0.0) is ok


def test_tolerant_match_absolute_tolerance_for_values_near_zero():
    assert not tolerant_match("0.017", "0.033", rtol=0.05, atol=0.0)
    assert tolerant_match("0.017", "0.033", rtol=0.05, atol=0.05)
    assert not tolerant_match("0.117", "0.033", rtol=0.05, atol=0.05)


class _Parent:
    skip_compare = ("metadata", "traceback", "output_type", "name", "execution_count")
    sanitize_patterns: dict = {}


class _Cell:
    """Just what IPyNbCell.compare_outputs uses, without a kernel."""
    compare_outputs = nbval_plugin.IPyNbCell.compare_outputs
    sanitize = nbval_plugin.IPyNbCell.sanitize

    def format_output_compare(self, key, left, right):  # nbval's own formats the diff through pytest hooks
        self.comparison_traceback.append(f"{key}: {left!r} != {right!r}")
    colors = nbval_plugin.nocolors

    def __init__(self, tags, tolerance=None):
        metadata = {"tags": tags}
        if tolerance is not None:
            metadata["onehot"] = {"nbval_tolerance": tolerance}
        self.cell = nbformat.v4.new_code_cell(metadata=metadata)
        self.parent = _Parent()
        self.comparison_traceback = []


def _stream(text):
    return nbformat.v4.new_output("stream", name="stdout", text=text)


def _result(text):
    return nbformat.v4.new_output("execute_result", data={"text/plain": text}, execution_count=1)


def test_nbval_compare_is_patched():
    assert getattr(nbval_plugin.IPyNbCell.compare_outputs, "_onehot_tolerant", False)
    assert nbval_tolerance.DEFAULT_TOLERANCE == {"rtol": 0.05, "atol": 0.0}


@pytest.mark.parametrize("make", [_stream, _result])
def test_tagged_cell_accepts_numbers_within_tolerance_and_nothing_else(make):
    cell = _Cell([TOLERANT_TAG])
    assert cell.compare_outputs([make("val loss 3.835\n")], [make("val loss 3.831\n")])
    assert not cell.compare_outputs([make("val loss 4.200\n")], [make("val loss 3.831\n")])
    assert not cell.compare_outputs([make("test loss 3.831\n")], [make("val loss 3.831\n")])


def test_untagged_cell_stays_exact():
    cell = _Cell([])
    assert not cell.compare_outputs([_stream("val loss 3.835\n")], [_stream("val loss 3.831\n")])
    assert cell.compare_outputs([_stream("val loss 3.831\n")], [_stream("val loss 3.831\n")])


def test_stated_tolerance_is_used_and_checked():
    loose = _Cell([TOLERANT_TAG], {"rtol": 0.05, "atol": 0.05})
    assert loose.compare_outputs([_stream("0.017\n")], [_stream("0.033\n")])
    strict = _Cell([TOLERANT_TAG])
    assert not strict.compare_outputs([_stream("0.017\n")], [_stream("0.033\n")])
    with pytest.raises(ValueError, match="unknown keys"):
        _Cell([TOLERANT_TAG], {"relative": 0.1}).compare_outputs([_stream("1\n")], [_stream("1\n")])


def test_the_saved_outputs_are_not_changed():
    saved = [_stream("val loss 3.831\n")]
    fresh = [_stream("val loss 3.835\n")]
    _Cell([TOLERANT_TAG]).compare_outputs(fresh, saved)
    assert fresh[0]["text"] == "val loss 3.835\n" and saved[0]["text"] == "val loss 3.831\n"
