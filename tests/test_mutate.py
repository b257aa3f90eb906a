"""scripts.mutate: after tests are added, only a module's survivors are tested again; killed mutants stay killed."""
import json

import pytest

from scripts import mutate


def test_forget_survivors_resets_survived_and_untested_only(tmp_path, monkeypatch):
    (tmp_path / "mutants" / "utils").mkdir(parents=True)
    codes = {"utils.m.x_f__mutmut_1": 1, "utils.m.x_f__mutmut_2": 0, "utils.m.x_f__mutmut_3": 33,
             "utils.m.x_f__mutmut_4": 36, "utils.m.x_f__mutmut_5": None, "utils.m.x_f__mutmut_6": 5}
    meta = tmp_path / "mutants" / "utils" / "m.py.meta"
    meta.write_text(json.dumps({"exit_code_by_key": codes, "hash_by_function_name": {"x_f": "aaa"}}))
    monkeypatch.setattr(mutate, "ROOT", tmp_path)
    assert mutate.forget_survivors("m") == ["utils.m.x_f__mutmut_2", "utils.m.x_f__mutmut_3",
                                            "utils.m.x_f__mutmut_5", "utils.m.x_f__mutmut_6"]
    after = json.loads(meta.read_text())
    assert after["exit_code_by_key"] == {"utils.m.x_f__mutmut_1": 1, "utils.m.x_f__mutmut_2": None,
                                         "utils.m.x_f__mutmut_3": None, "utils.m.x_f__mutmut_4": 36,
                                         "utils.m.x_f__mutmut_5": None, "utils.m.x_f__mutmut_6": None}
    assert after["hash_by_function_name"] == {"x_f": "aaa"}
    with pytest.raises(SystemExit, match="no results in mutants/"):
        mutate.forget_survivors("n")


def test_survivors_need_a_module():
    with pytest.raises(SystemExit, match="--survivors needs the modules"):
        mutate.run([], survivors=True)


def test_a_survivors_run_names_its_mutants_and_a_module_run_its_pattern(tmp_path, monkeypatch):
    """mutmut re-runs every mutant a pattern matches, killed ones too: a survivors run must name the survivors."""
    (tmp_path / "mutants" / "utils").mkdir(parents=True)
    codes = {"utils.m.x_f__mutmut_1": 1, "utils.m.x_f__mutmut_2": 0, "utils.m.x_f__mutmut_3": 1}
    (tmp_path / "mutants" / "utils" / "m.py.meta").write_text(json.dumps({"exit_code_by_key": codes}))
    calls = []

    class Done:
        returncode = 0
    monkeypatch.setattr(mutate, "ROOT", tmp_path)
    monkeypatch.setattr(mutate, "RUNS", tmp_path / "mutants" / "onehot-runs.json")
    monkeypatch.setattr(mutate, "modules", lambda: ["m"])
    monkeypatch.setattr(mutate, "commit", lambda: "abc1234")
    monkeypatch.setattr(mutate.subprocess, "run", lambda cmd, **kw: calls.append(cmd[3:]) or Done())
    monkeypatch.setattr(mutate.mutation_report, "main", lambda argv: None)
    assert mutate.run(["m"], survivors=True) == 0
    assert mutate.run(["m"]) == 0
    assert calls == [["run", "utils.m.x_f__mutmut_2"], ["run", "utils.m.*"]]
