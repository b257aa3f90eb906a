"""The exercise checks (utils.exercises): right answers pass, wrong ones fail with the right hint,
the chapters carry the cells, and the grading script grades."""
from __future__ import annotations

import csv
import json
import math
import re

import nbformat
import pytest
import torch
import torch.nn.functional as F

from scripts import exercise_cells
from scripts.setup_cell import ROOT, chapter_paths
from utils.exercises import EXERCISES, LOG_ENV, check

pytestmark = pytest.mark.usefixtures("one_thread")

CELLS = {c.id: c for c in exercise_cells.CELLS}


def solved(ex_id: str, solution: str | None = None):
    """The learner's function of exercise `ex_id` with `solution` (default: the book's) as its body."""
    cell = CELLS[ex_id]
    ns: dict = {}
    exec(exercise_cells.IMPORTS + cell.imports, ns)
    exec(solution if solution is not None else cell.solution, ns)
    return ns[cell.name]


# ----------------------------------------------------------------------------------------------
# Every check passes on the book's solution, and every chapter 1-9 has at least two

def test_every_exercise_has_cells_and_every_chapter_two():
    assert sorted(EXERCISES) == sorted(CELLS)
    per_chapter = {f"{n:02d}": [i for i in EXERCISES if i.startswith(f"{n:02d}.")] for n in range(1, 11)}
    assert all(len(v) >= 2 for v in per_chapter.values()), per_chapter


@pytest.mark.parametrize("ex_id", sorted(CELLS))
def test_book_solution_passes(ex_id, capsys):
    result = check(ex_id, solved(ex_id))
    out = capsys.readouterr().out
    assert result.status == "pass", out
    assert out.count("\n") == 1 and out.startswith(f"✓ Exercise {ex_id}"), out  # one line on success


@pytest.mark.parametrize("ex_id", sorted(CELLS))
def test_stub_is_not_attempted(ex_id, capsys):
    ns: dict = {}
    exec(CELLS[ex_id].code(), ns)  # the cell as the chapter shows it: the stub and the check call
    out = capsys.readouterr().out
    assert out.startswith(f"… Exercise {ex_id}") and "not attempted yet" in out, out
    assert check(ex_id, ns[CELLS[ex_id].name], quiet=True).status == "not attempted"


# ----------------------------------------------------------------------------------------------
# Wrong answers fail, naming the case and the mistake, and never print the answer

W = {  # exercise -> [(wrong function body, status, a phrase the message must contain)]
    "01.5": [("def my_sgns_loss(W, U, c, t, n):\n"
              "    w = W[c]\n    return (-F.logsigmoid((U[t] * w).sum(-1))"
              " - F.logsigmoid(-torch.einsum('bkd,bd->bk', U[n], w)).sum(-1)).sum()", "fail", "the sum over the batch"),
             ("def my_sgns_loss(W, U, c, t, n):\n"
              "    w = U[c]\n    return (-F.logsigmoid((W[t] * w).sum(-1))"
              " - F.logsigmoid(-torch.einsum('bkd,bd->bk', W[n], w)).sum(-1)).mean()", "fail", "tables are swapped"),
             ("def my_sgns_loss(W, U, c, t, n):\n"
              "    w = W[c]\n    return (-F.logsigmoid((U[t] * w).sum(-1))"
              " - F.logsigmoid(torch.einsum('bkd,bd->bk', U[n], w)).sum(-1)).mean()", "fail", "minus inside the σ")],
    "01.6": [(CELLS["01.6"].solution.replace("-lr *", "lr *"), "fail", "goes uphill"),
             ("def my_sgns_step(W, U, c, t, n, lr):\n"  # indexed assignment: repeated words lose updates
              "    W, U = W.clone(), U.clone()\n"
              "    ids = torch.cat([t[:, None], n], 1)\n"
              "    w, u = W[c], U[ids]\n"
              "    s = torch.einsum('bkd,bd->bk', u, w)\n"
              "    y = torch.zeros_like(s); y[:, 0] = 1\n"
              "    g = torch.sigmoid(s) - y\n"
              "    U[ids] = u - lr * g[:, :, None] * w[:, None, :]\n"
              "    W[c] = w - lr * torch.einsum('bk,bkd->bd', g, u)\n"
              "    return W, U", "fail", "index_add_")],
    "02.5": [("def my_rnn_step(x, h, Wi, Wh, bi, bh):\n    return torch.tanh(x @ Wi.T + bi + h @ Wh + bh)",
              "fail", "W_hh is used transposed"),
             ("def my_rnn_step(x, h, Wi, Wh, bi, bh):\n    return torch.tanh(x @ Wi.T + bi + h @ Wh.T)",
              "fail", "biases is missing"),
             ("def my_rnn_step(x, h, Wi, Wh, bi, bh):\n    return torch.tanh(x @ Wi.T + bi + h @ Wh.T + bh).float()",
              "fail", "expected dtype torch.float64, got torch.float32")],
    "02.6": [("def my_lm_batch(d, s, T):\n    w = d[s[:, None] + torch.arange(T)]\n    return w, w",
              "fail", "shift by one"),
             ("def my_lm_batch(d, s, T):\n    w = d[s[:, None] + torch.arange(T)]\n    return w[:, :-1], w[:, 1:]",
              "fail", "expected shape (4, 8), got (4, 7)")],
    "03.5": [(CELLS["03.5"].solution.replace("i, f, g, o = gates", "i, f, o, g = gates"), "fail", "i, f, g, o"),
             (CELLS["03.5"].solution.replace("torch.sigmoid(f) * c", "torch.sigmoid(f) * h"), "fail", "values differ")],
    "03.6": [(CELLS["03.6"].solution.replace("(1 - z) * n + z * h", "z * n + (1 - z) * h"), "fail", "(1 - z) * n"),
             (CELLS["03.6"].solution.replace("r, z = torch", "z, r = torch"), "fail", "r and z are swapped")],
    "04.5": [(CELLS["04.5"].solution.replace("torch.where(done, PAD, y)", "y"), "fail", "write <pad>"),
             (CELLS["04.5"].solution.replace("if done.all():", "if False:"), "fail", "stop as soon as"),
             (CELLS["04.5"].solution.replace("SOS,", "PAD,"), "fail", "tokens: values differ")],
    "04.6": [("def my_seq2seq_loss(logits, tgt):\n    return F.cross_entropy(logits.flatten(0, 1), tgt.flatten())",
              "fail", "padding counts")],
    "05.5": [(CELLS["05.5"].solution.replace("masked_fill(~mask", "masked_fill(mask"), "fail", "wrong sign"),
             (CELLS["05.5"].solution.replace("scores = scores.masked_fill(~mask, float(\"-inf\"))", "pass"),
              "fail", "padded keys were not masked"),
             (CELLS["05.5"].solution.replace("softmax(scores, dim=-1)", "softmax(scores, dim=0)"), "fail", "case 1/5")],
    "05.6": [(CELLS["05.6"].solution.replace("query @ W_q.T", "query @ W_q"), "error", "raised RuntimeError"),
             (CELLS["05.6"].solution.replace("masked_fill(~mask", "masked_fill(mask"), "fail", "wrong sign")],
    "06.5": [(CELLS["06.5"].solution.replace(" / math.sqrt(q.shape[-1])", ""), "fail", "not divided by √D"),
             (CELLS["06.5"].solution.replace("masked_fill(~mask", "masked_fill(mask"), "fail", "wrong sign"),
             (CELLS["06.5"].solution.replace("softmax(scores, dim=-1)", "softmax(scores, dim=-2)"),
              "fail", "case 1/5")],
    "06.6": [(CELLS["06.6"].solution.replace("pe[:, 0::2], pe[:, 1::2]", "pe[:, :C // 2], pe[:, C // 2:]"),
              "fail", "interleaves"),
             (CELLS["06.6"].solution.replace("return pe.float()", "return pe"), "fail", "dtype")],
    "07.6": [(CELLS["07.6"].solution.replace("masked_fill(~causal", "masked_fill(causal & False"), "fail",
              "no causal mask"),
             (CELLS["07.6"].solution.replace("y.transpose(1, 2).reshape(B, T, C)", "y.reshape(B, T, C)"), "fail",
              "case 1/4")],
    "07.7": [(CELLS["07.7"].solution.replace("i += 2", "i += 1"), "fail", "skip both ids of the pair"),
             (CELLS["07.7"].solution.replace("i + 1 < len(ids)", "i + 2 < len(ids)"), "fail", "the last two ids")],
    "08.6": [(CELLS["08.6"].solution.replace("permute(0, 2, 4, 1, 3, 5)", "permute(0, 2, 4, 3, 5, 1)"), "fail",
              "channel first"),
             (CELLS["08.6"].solution.replace("permute(0, 2, 4, 1, 3, 5)", "permute(0, 4, 2, 1, 3, 5)"), "fail",
              "row by row"),
             (CELLS["08.6"].solution.replace("permute(0, 2, 4, 1, 3, 5)", "permute(0, 2, 4, 1, 5, 3)"), "fail",
              "transposed patch")],
    "08.7": [(CELLS["08.7"].solution.replace("rollout = (a / a.sum(dim=-1, keepdim=True)) @ rollout",
                                             "rollout = rollout @ (a / a.sum(dim=-1, keepdim=True))"),
              "fail", "wrong order"),
             (CELLS["08.7"].solution.replace("0.5 * eye + 0.5 * layer.mean(dim=0)", "layer.mean(dim=0)"), "fail",
              "residual")],
    "09.5": [("def my_clip_loss(x):\n    return F.cross_entropy(x, torch.arange(len(x)))", "fail", "only the image"),
             (CELLS["09.5"].solution.replace(") / 2", ")"), "fail", "summed"),
             ("def my_clip_loss(x):\n    y = torch.arange(len(x))\n"
              "    p = x.exp() / x.exp().sum(-1, keepdim=True)\n    q = x.T.exp() / x.T.exp().sum(-1, keepdim=True)\n"
              "    return -(p[y, y].log().mean() + q[y, y].log().mean()) / 2", "fail", "exp overflows")],
    "09.6": [(CELLS["09.6"].solution.replace("image_features = image_features / image_features.norm(dim=-1, keepdim=True)",
                                             "pass").replace("text_features = text_features / text_features.norm("
                                                             "dim=-1, keepdim=True)", "pass"), "fail", "not normalised"),
             (CELLS["09.6"].solution.replace("logits_per_image, logits_per_image.T", "logits_per_image, "
                                             "logits_per_image"), "fail", "not the transpose"),
             (CELLS["09.6"].solution.replace(".exp() *", " *"), "fail", "exp(logit_scale)")],
    "10.5": [(CELLS["10.5"].solution.replace("= visual[b].to(embeds.dtype)", "= visual[b].flip(0).to(embeds.dtype)"),
              "fail", "reverse order"),
             (CELLS["10.5"].solution.replace("out[b, positions] = visual[b]", "out[b, positions] = visual[b - 1]"),
              "fail", "wrong sequences")],
    "10.6": [(CELLS["10.6"].solution.replace("range(max(start - 1, 0),", "range(start,"), "fail", "off by one"),
             (CELLS["10.6"].solution.replace("targets[b, t] = ids[b, t + 1]", "targets[b, t] = ids[b, t]")
              .replace("range(max(start - 1, 0), ids.shape[1] - 1)", "range(start, ids.shape[1])"),
              "fail", "not shifted")],
    "11.6": [(CELLS["11.6"].solution.replace("I // group_size, group_size)", "1, I)"), "fail", "one scale per row"),
             (CELLS["11.6"].solution.replace("/ qmax  # (O, G, 1)", "/ (2 ** bits - 1)  # (O, G, 1)"), "fail",
              "2^b - 1"),
             (CELLS["11.6"].solution.replace("    scale = torch.where(scale > 0, scale, torch.ones_like(scale))"
                                             "  # an all-zero group\n", ""), "fail", "all-zero group")],
    "11.7": [(CELLS["11.7"].solution.replace("alpha * T ** 2 * kl", "alpha * kl"), "fail", "T²"),
             (CELLS["11.7"].solution.replace("(log_p - log_q)", "(log_q - log_p)").replace("log_p.exp()", "log_q.exp()"),
              "fail", "wrong way"),
             (CELLS["11.7"].solution.replace(".sum(dim=-1).mean()", ".mean()"), "fail", "every (position")],
    "12.1": [(CELLS["12.1"].solution.replace("abar.sqrt() * x0 + (1 - abar).sqrt() * noise",
                                             "abar * x0 + (1 - abar) * noise"), "fail", "square roots"),
             (CELLS["12.1"].solution.replace("abar = alphas_cumprod[t]", "abar = (alphas_cumprod / torch.cat("
                                             "[alphas_cumprod.new_ones(1), alphas_cumprod[:-1]]))[t]"),
              "fail", "one step's α_t"),
             (CELLS["12.1"].solution.replace("alphas_cumprod[t]", "alphas_cumprod.cumprod(0)[t]"), "fail",
              "already the cumulative product"),
             (CELLS["12.1"].solution.replace(".view(-1, 1, 1, 1)", ""), "fail", "along the last axis"),
             (CELLS["12.1"].solution.replace(".view(-1, 1, 1, 1)", ".view(1, -1, 1, 1)"), "error",
              "case 1/6")],
    "12.2": [("def my_nearest_codes(z, codebook):\n    return (z @ codebook.T).argmax(dim=-1)", "fail",
              "largest dot product"),
             (CELLS["12.2"].solution.replace("sum(dim=-1)", "sum(dim=-2)"), "fail", "summed over the codes"),
             (CELLS["12.2"].solution.replace(".argmin(dim=-1)", ".argmin(dim=-1).int()"), "fail",
              "expected dtype torch.int64, got torch.int32")],
}


@pytest.mark.parametrize("ex_id,k", [(i, k) for i in sorted(W) for k in range(len(W[i]))])
def test_wrong_answer_fails_with_hint(ex_id, k):
    body, status, phrase = W[ex_id][k]
    assert body != CELLS[ex_id].solution, "the mutation did not apply"
    result = check(ex_id, solved(ex_id, body), quiet=True)
    assert result.status == status and phrase in result.detail, result.detail
    assert re.match(rf"✗ Exercise {re.escape(ex_id)} \(.*\), case \d+/\d+ \(", result.detail), result.detail
    assert "def " not in result.detail and "return" not in result.detail  # never the solution's code


def test_every_exercise_has_wrong_answers():
    assert sorted(W) == sorted(CELLS)


# ----------------------------------------------------------------------------------------------
# The check itself

def test_unknown_exercise_lists_the_known_ones():
    with pytest.raises(KeyError, match="06.5"):
        check("6.5", lambda: None)


def test_not_a_function_and_a_crash_are_reported_not_raised(capsys):
    assert check("06.5", 3.0).status == "error"
    result = check("06.5", lambda q, k, v, mask=None: 1 / 0)
    assert result.status == "error" and "ZeroDivisionError" in result.detail and "case 1/5" in result.detail
    assert "✗" in capsys.readouterr().out


def test_answer_cannot_change_the_next_case_by_editing_its_inputs():
    reference = solved("02.5")

    def edits_in_place(x, h, W_ih, W_hh, b_ih, b_hh):
        out = reference(x, h, W_ih, W_hh, b_ih, b_hh)
        W_ih.zero_(), h.zero_()
        return out
    assert check("02.5", edits_in_place, quiet=True).passed


def test_result_shows_nothing_more_in_a_notebook():
    result = check("07.7", solved("07.7"), quiet=True)
    assert result._ipython_display_() is None and repr(result) == "<07.7: pass>"


def test_log_for_grading(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv(LOG_ENV, str(log))
    check("07.7", solved("07.7"), quiet=True)
    check("09.5", solved("09.5", "def my_clip_loss(x):\n    raise NotImplementedError"), quiet=True)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["exercise"], r["status"]) for r in lines] == [("07.7", "pass"), ("09.5", "not attempted")]


# ----------------------------------------------------------------------------------------------
# The chapters carry the cells, and the solutions in the pages pass

def _chapter_cells():
    for path in chapter_paths():
        nb = nbformat.read(path, as_version=4)
        mine = [c for c in nb.cells if exercise_cells.TAG in c.metadata.get("tags", [])]
        for md, code in zip(mine[0::2], mine[1::2]):
            yield path, md, code


def test_chapters_carry_the_exercise_cells():
    found = {}
    for path, md, code in _chapter_cells():
        assert md.cell_type == "markdown" and code.cell_type == "code", path.name
        ex_id = re.search(r'check\("(\d\d\.\d+)"', code.source).group(1)
        assert path.name.startswith(ex_id[:2]), f"{path.name} holds exercise {ex_id}"
        assert code.source == CELLS[ex_id].code() and md.source == CELLS[ex_id].markdown(), \
            f"{path.name}: exercise {ex_id}'s cells differ from scripts/exercise_cells.py; run it on the chapter"
        assert ":class: dropdown" in md.source
        text = "".join(o.get("text", "") for o in code.get("outputs", []))
        if code.get("execution_count") is not None:
            assert "not attempted yet" in text, f"{path.name}: exercise {ex_id} was executed with a solution"
        found[ex_id] = path.name
    in_book = {p.name[:2] for p in chapter_paths()}  # a chapter still being written (not in _toc.yml) waits
    missing = sorted(i for i in set(CELLS) - set(found) if i[:2] in in_book)
    assert not missing, f"exercises not yet in their chapters: {missing}; run python -m scripts.exercise_cells"


def test_solutions_in_the_pages_pass():
    for path, md, code in _chapter_cells():
        ex_id = re.search(r'check\("(\d\d\.\d+)"', code.source).group(1)
        fenced = re.search(r"```python\n(.*?)\n\s*```", md.source, re.S).group(1)
        solution = "\n".join(line[3:] if line.startswith("   ") else line for line in fenced.splitlines())
        assert check(ex_id, solved(ex_id, solution), quiet=True).passed, f"{path.name}: {ex_id}'s solution"


# ----------------------------------------------------------------------------------------------
# The grading script, on two tiny fake submissions

def _submission(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)


def test_grade_two_submissions(tmp_path):
    from scripts.grade_exercises import main
    sub = tmp_path / "submissions"
    sub.mkdir()
    merge, clip = CELLS["07.7"], CELLS["09.5"]
    _submission(sub / "alice.ipynb", [  # both right
        "print('training...')",
        exercise_cells.IMPORTS + merge.solution + f'\ncheck("07.7", {merge.name})',
        exercise_cells.IMPORTS + clip.solution + f'\ncheck("09.5", {clip.name})'])
    _submission(sub / "bob.ipynb", [  # a wrong merge, a crash before the loss, which is never reached
        exercise_cells.IMPORTS + merge.solution.replace("i += 2", "i += 1") + f'\ncheck("07.7", {merge.name})',
        "raise RuntimeError('oops')",
        exercise_cells.IMPORTS + "undefined_name\n" + clip.stub + f'\ncheck("09.5", {clip.name})',
        exercise_cells.IMPORTS + merge.stub + f'\ncheck("07.7", {merge.name})'])  # the last report counts
    out = tmp_path / "grades.csv"
    assert main([str(sub), "--out", str(out), "--timeout", "120"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["submission"] for r in rows] == ["alice.ipynb", "bob.ipynb"]
    alice, bob = rows
    assert (alice["passed"], alice["07.7"], alice["09.5"], alice["notes"]) == ("2", "pass", "pass", "")
    assert (bob["passed"], bob["07.7"], bob["09.5"]) == ("0", "not attempted", "not run")
    assert bob["notes"] == "2 cell(s) raised an error"
