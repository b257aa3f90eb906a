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
    assert mutate.forget_survivors("m") == 3
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
