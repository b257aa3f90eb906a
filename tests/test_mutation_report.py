"""scripts.mutation_report: the mutation report counts what mutmut recorded, never judges a survivor itself."""
import json

import pytest

from scripts import mutation_report as mr

SOURCE = '''\
def x_f__mutmut_orig(a, b):
    return a + b
def x_f__mutmut_1(a, b):
    return a - b
def x_f__mutmut_2(a, b):
    return a + b + 0
def x_f__mutmut_3(a, b):
    return b + a
def x_g__mutmut_orig(n):
    if n < 0:
        return 0
    return n
def x_g__mutmut_1(n):
    if n <= 0:
        return 0
    return n
'''
SPANS = {"x_f__mutmut_orig": [1, 2], "x_f__mutmut_1": [3, 4], "x_f__mutmut_2": [5, 6], "x_f__mutmut_3": [7, 8],
         "x_g__mutmut_orig": [9, 12], "x_g__mutmut_1": [13, 16]}


@pytest.fixture
def mutants(tmp_path, monkeypatch):
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "m.py").write_text(SOURCE)
    (tmp_path / "utils" / "m.py.spans").write_text(json.dumps({"version": 1, "spans": SPANS}))
    meta = {"exit_code_by_key": {"utils.m.x_f__mutmut_1": 1, "utils.m.x_f__mutmut_2": 0,
                                 "utils.m.x_f__mutmut_3": 0, "utils.m.x_g__mutmut_1": 36},
            "hash_by_function_name": {"x_f": "aaa", "x_g": "bbb"}}
    (tmp_path / "utils" / "m.py.meta").write_text(json.dumps(meta))
    (tmp_path / "utils" / "n.py.meta").write_text(json.dumps(
        {"exit_code_by_key": {"utils.n.x_h__mutmut_1": None}, "hash_by_function_name": {"x_h": "ccc"}}))
    (tmp_path / "onehot-runs.json").write_text(json.dumps({"m": {"commit": "abc1234", "date": "2026-12-07"}}))
    monkeypatch.setattr(mr, "MUTANTS", tmp_path)
    monkeypatch.setattr(mr, "EQUIVALENT", {"utils.m.x_f__mutmut_3": ("aaa", "addition commutes")})
    return tmp_path


def test_counts_scores_and_equivalents(mutants):
    results = mr.collect()
    m = results["m"]
    assert m["total"] == 4 and m["counts"]["killed"] == 1 and m["counts"]["timeout"] == 1
    assert m["counts"]["survived"] == 1 and [s for s, _ in m["survivors"]] == ["utils.m.x_f__mutmut_2"]
    assert m["equivalent"] == [("utils.m.x_f__mutmut_3", "addition commutes")]
    text = mr.render(results)
    # (1 killed + 1 timed out) / (4 mutants - 1 equivalent)
    assert "| `m` | abc1234 2026-12-07 | 4 | 1 | 1 | 1 | 0 | 1 | 0 | 66.7% |" in text
    assert "| `n` | ? " in text and "| 1 | not run |" in text  # an unchecked module is never scored
    assert "- return a + b\n  + return a + b + 0" in text  # the survivor's change, without mutmut's names
    assert "`x_f__mutmut_3`: addition commutes" in text


def test_a_stale_equivalence_is_not_counted(mutants, monkeypatch):
    monkeypatch.setattr(mr, "EQUIVALENT", {"utils.m.x_f__mutmut_3": ("old", "addition commutes")})
    m = mr.collect()["m"]
    assert m["equivalent"] == [] and m["stale"] == ["utils.m.x_f__mutmut_3"] and m["counts"]["survived"] == 2


def test_the_change_is_read_from_the_mutated_file_not_a_stale_spans_file(mutants):
    assert mr.change("m", "utils.m.x_g__mutmut_1") == "- if n < 0:\n+ if n <= 0:"
    (mutants / "utils" / "m.py.spans").write_text(json.dumps({"version": 1, "spans": {}}))  # mutmut left it stale
    assert mr.change("m", "utils.m.x_f__mutmut_1") == "- return a + b\n+ return a - b"


def test_without_a_run_it_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(mr, "MUTANTS", tmp_path)
    with pytest.raises(SystemExit, match="make mutate"):
        mr.main([])


def test_a_module_run_at_an_earlier_sitting_keeps_its_row_and_section(mutants):
    """mutants/ is scratch: a module scored in the old report but not run in this mutants/ (all "not checked")
    keeps its row, its survivors' section and its share of the overall score; a module run now is rewritten."""
    old = mr.render(mr.collect())  # m scored (66.7%), n not run
    (mutants / "utils" / "n.py.meta").write_text(json.dumps(
        {"exit_code_by_key": {"utils.n.x_h__mutmut_1": 1}, "hash_by_function_name": {"x_h": "ccc"}}))
    meta = json.loads((mutants / "utils" / "m.py.meta").read_text())
    meta["exit_code_by_key"] = dict.fromkeys(meta["exit_code_by_key"])  # m not run in this mutants/
    (mutants / "utils" / "m.py.meta").write_text(json.dumps(meta))
    text = mr.render(mr.collect(), mr.earlier(old))
    assert "| `m` | abc1234 2026-12-07 | 4 | 1 | 1 | 1 | 0 | 1 | 0 | 66.7% |" in text
    assert "| `n` | ? " in text and "| 1 | 0 | 0 | 0 | 0 | 0 | 100.0% |" in text
    assert "- return a + b\n  + return a + b + 0" in text and "`x_f__mutmut_3`: addition commutes" in text
    assert text.count("## `utils/m.py`") == 1
    assert "Over the modules run in full: 75.0% of 4 non-equivalent mutants." in text  # (2 + 1) / (3 + 1)
    assert mr.render(mr.collect(), mr.earlier(text)) == text  # written again from itself: the same report


def test_a_second_look_at_the_survivors_is_named_in_the_row(mutants):
    runs = {"m": {"commit": "abc1234", "date": "2026-12-07", "survivors_again": {"commit": "def5678"}}}
    (mutants / "onehot-runs.json").write_text(json.dumps(runs))
    text = mr.render(mr.collect())
    assert "| `m` | abc1234 2026-12-07; survivors again at def5678 | 4 |" in text
    assert mr.earlier(text)["m"]["killed"] == 2  # the row is read back


def test_decorated_functions_are_named_as_not_measured():
    """mutmut 3.8.1 skips a function with any decorator but a lone @staticmethod or @classmethod: the report
    must say so rather than score the module as if they had been tested."""
    source = '''
import torch
from contextlib import contextmanager
@torch.no_grad()
def sample(x):
    return x
def plain(x):
    return x
@contextmanager
def ctx():
    yield
class A:
    @property
    def p(self):
        return 1
    @staticmethod
    def s():
        return 2
    @classmethod
    def c(cls):
        return 3
    @staticmethod
    @torch.no_grad()
    def both():
        return 4
    def m(self):
        return 5
'''
    assert mr.unmutated(source) == ["sample", "ctx", "A.p", "A.both"]


def test_a_survivor_only_a_gpu_tells_apart_is_said_so_and_still_counts(mutants, monkeypatch):
    monkeypatch.setattr(mr, "CUDA_ONLY", {"utils.m.x_f__mutmut_2": ("aaa", "the sum stays on the CPU")})
    m = mr.collect()["m"]
    assert m["counts"]["survived"] == 1 and m["cuda_only"] == {"utils.m.x_f__mutmut_2": "the sum stays on the CPU"}
    text = mr.render(mr.collect())
    assert "| 66.7% |" in text  # still a survivor in the score
    assert "`x_f__mutmut_2` (survived; only a CUDA device tells it apart: the sum stays on the CPU):" in text
    monkeypatch.setattr(mr, "CUDA_ONLY", {"utils.m.x_f__mutmut_2": ("old", "the sum stays on the CPU")})
    assert mr.collect()["m"]["cuda_only"] == {}  # judged on another version of the function: not said
