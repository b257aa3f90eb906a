"""Checkable exercises: a learner's answer run on prepared cases and compared with the book's reference.

    from utils.exercises import check
    check("06.5", my_attention)      # one line on success; on failure, which case and how it differs

Each exercise is named "NN.k", chapter NN, exercise k of that chapter's numbered list. Its check
calls the learner's function on a few prepared inputs (edge cases included: padding masks, a batch
of one, float64, a single key...) and compares the result with the tested `utils` implementation the
book builds (the reference), never with a copy of it. A failure names the case, the expected and the
received shape, dtype or value (one entry, never the whole answer) and, when the answer matches a
known mistake (a transposed matrix, a missing scale, a mask of the wrong sign...), says which.
A stub that still raises NotImplementedError is reported as "not attempted", calmly.

Grading: with the environment variable ONEHOT_EXERCISE_LOG set to a file path, every check also
appends one JSON line {"exercise", "status", "detail"} to that file; `scripts/grade_exercises.py`
runs submitted notebooks that way and collects a CSV. Statuses: "pass", "fail", "error" (the answer
raised), "not attempted" (NotImplementedError).

Shapes: B batch, T time/queries, S keys, C channels, H hidden or heads, D head dim, V vocabulary,
K negatives, N patches, P patch size, L layers.
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import Tensor, nn

__all__ = ["check", "Result", "EXERCISES", "exercise_ids"]

LOG_ENV = "ONEHOT_EXERCISE_LOG"


@dataclass
class Case:
    """One prepared input: `args` are passed to the learner's function (fresh copies every call)."""
    name: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    hint: str = ""  # said when this case fails (what the case is there to catch)
    reference_args: tuple | None = None  # what the reference is called with, when it differs from `args`


@dataclass
class Mistake:
    """A known wrong answer, computed from the reference (`wrong(*args, **kwargs)`); if the learner's
    output equals it on a failing case, `hint` is said."""
    hint: str
    wrong: Callable[..., Any]
    from_expected: bool = False  # wrong(expected) instead of wrong(*args, **kwargs)


@dataclass
class Exercise:
    id: str
    title: str
    what: str  # the function the learner writes, e.g. "attention(q, k, v, mask) -> (out, weights)"
    cases: Callable[[], list[Case]]
    reference: Callable[..., Any]
    outputs: tuple[str, ...] = ()  # names of the outputs when the answer returns a tuple
    mistakes: list[Mistake] = field(default_factory=list)
    hints: Callable[[Case, Any, Any], str] | None = None  # extra diagnosis (case, expected, got) -> text
    masked: bool = False  # a NaN in the answer most likely comes from a fully masked softmax row


class Result(NamedTuple):
    exercise: str
    status: str  # "pass", "fail", "error", "not attempted"
    detail: str

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def __repr__(self) -> str:
        return f"<{self.exercise}: {self.status}>"

    def _ipython_display_(self) -> None:  # check(...) as a cell's last line: the printed line is enough
        pass


EXERCISES: dict[str, Exercise] = {}


def exercise_ids() -> list[str]:
    return sorted(EXERCISES)


def _register(ex: Exercise) -> Exercise:
    if ex.id in EXERCISES:
        raise ValueError(f"exercise {ex.id} registered twice")
    EXERCISES[ex.id] = ex
    return ex


# ----------------------------------------------------------------------------------------------
# Comparing an answer with the reference

def _tolerances(dtype: torch.dtype) -> tuple[float, float]:
    return (1e-7, 1e-10) if dtype == torch.float64 else (1e-4, 1e-5)  # (rtol, atol)


def _index(flat: int, shape: Sequence[int]) -> tuple[int, ...]:
    idx = []
    for n in reversed(shape):
        idx.append(flat % n)
        flat //= n
    return tuple(reversed(idx))


def _diff(expected: Any, got: Any, what: str) -> str | None:
    """None if `got` matches `expected`, else a one-line description of the first difference."""
    if isinstance(expected, Tensor):
        if not isinstance(got, Tensor):
            return f"{what}: expected a tensor of shape {tuple(expected.shape)}, got {type(got).__name__}"
        got = got.detach()
        if got.shape != expected.shape:
            return f"{what}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
        if got.device != expected.device:
            got = got.to(expected.device)
        if expected.is_floating_point():
            if got.dtype != expected.dtype:
                return (f"{what}: expected dtype {expected.dtype}, got {got.dtype} (keep the inputs' dtype, or "
                        f"torch's default float32 when there are no tensor inputs)")
            bad = ~torch.isfinite(got) & torch.isfinite(expected)
            if bad.any():
                i = _index(int(bad.flatten().nonzero()[0]), got.shape)
                return (f"{what}: got {got[i].item()}{f' at index {i}' if i else ''} where a finite value is expected "
                        f"({expected[i].item():.4g})")
            rtol, atol = _tolerances(expected.dtype)
            if torch.allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True):
                return None
            err = (got - expected).abs().nan_to_num(0.0)
            i = _index(int(err.flatten().argmax()), got.shape)
            at = f" at index {i}" if i else ""
            return (f"{what}: values differ, the largest difference is {err[i].item():.3g}{at} "
                    f"(expected {expected[i].item():.6g}, got {got[i].item():.6g})")
        if got.dtype != expected.dtype:
            return f"{what}: expected dtype {expected.dtype}, got {got.dtype}"
        if torch.equal(got, expected):
            return None
        i = _index(int((got != expected).flatten().nonzero()[0]), got.shape)
        return f"{what}: values differ first at index {i} (expected {expected[i].item()}, got {got[i].item()})"
    if isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            n = len(got) if isinstance(got, (tuple, list)) else type(got).__name__
            return f"{what}: expected a tuple of {len(expected)}, got {n}"
        return None
    if isinstance(expected, list):
        if not isinstance(got, (list, tuple)):
            return f"{what}: expected a list, got {type(got).__name__}"
        got = list(got)
        if got == expected:
            return None
        return f"{what}: expected {expected}, got {got}"
    if got != expected:
        return f"{what}: expected {expected!r}, got {got!r}"
    return None


def _compare(ex: Exercise, expected: Any, got: Any) -> str | None:
    if isinstance(expected, tuple):
        names = ex.outputs or tuple(f"output {k}" for k in range(len(expected)))
        shape = _diff(expected, got, "the answer")
        if shape:
            return shape + f" ({', '.join(names)})"
        for name, e, g in zip(names, expected, got):
            d = _diff(e, g, name)
            if d:
                return d
        return None
    return _diff(expected, got, ex.outputs[0] if ex.outputs else "the answer")


def _fresh(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Deep copies, so an answer that edits its inputs in place cannot change the next call's."""
    return copy.deepcopy(args), copy.deepcopy(kwargs)


def _call(fn: Callable, case: Case, reference: bool = False) -> Any:
    if reference and case.reference_args is not None:
        return fn(*case.reference_args)
    args, kwargs = _fresh(case.args, case.kwargs)
    return fn(*args, **kwargs)


def _log(result: Result) -> None:
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(result._asdict()) + "\n")


def _finish(result: Result, quiet: bool) -> Result:
    _log(result)
    if not quiet:
        print(result.detail)
    return result


def check(exercise: str, answer: Callable | Any, *, quiet: bool = False) -> Result:
    """Run `answer` (the learner's function) on exercise `exercise`'s cases and print one line.

    Returns a Result (status "pass", "fail", "error" or "not attempted"); prints its detail unless
    `quiet`. Never raises because of the answer, so a notebook runs on to the end.
    """
    ex = EXERCISES.get(str(exercise))
    if ex is None:
        raise KeyError(f"no exercise {exercise!r}; the checkable exercises are {', '.join(exercise_ids())} "
                       "(chapter.number, e.g. check('06.5', my_attention))")
    label = f"Exercise {ex.id} ({ex.title})"
    if not callable(answer):
        return _finish(Result(ex.id, "error", f"✗ {label}: expected your function {ex.what.split('(')[0]}, "
                                              f"got a {type(answer).__name__}"), quiet)
    cases = ex.cases()
    for k, case in enumerate(cases, 1):
        expected = _call(ex.reference, case, reference=True)
        try:
            got = _call(answer, case)
        except NotImplementedError:
            return _finish(Result(ex.id, "not attempted",
                                  f"… {label}: not attempted yet. Write your {ex.what.split('(')[0]} above "
                                  "(in place of `raise NotImplementedError`) and run the cell again."), quiet)
        except Exception as err:  # the learner's code failed: say where, keep going with the notebook
            return _finish(Result(ex.id, "error", f"✗ {label}, case {k}/{len(cases)} ({case.name}): your function "
                                                  f"raised {type(err).__name__}: {err}"), quiet)
        problem = _compare(ex, expected, got)
        if problem:
            return _finish(Result(ex.id, "fail", f"✗ {label}, case {k}/{len(cases)} ({case.name}): {problem}."
                                                 + _diagnose(ex, case, expected, got)), quiet)
    return _finish(Result(ex.id, "pass", f"✓ {label}: all {len(cases)} cases pass."), quiet)


def _diagnose(ex: Exercise, case: Case, expected: Any, got: Any) -> str:
    notes = []
    for m in ex.mistakes:
        try:
            wrong = m.wrong(expected) if m.from_expected else _call(m.wrong, case)
        except Exception:  # the mistake does not apply to this case (e.g. a fully masked row)
            continue
        if _compare(ex, wrong, got) is None and _compare(ex, wrong, expected) is not None:
            notes.append(m.hint)
            break
    if ex.hints is not None:
        extra = ex.hints(case, expected, got)
        if extra:
            notes.append(extra)
    if ex.masked and not notes and _has_nan(got):
        notes.append("NaN comes from a softmax over a row whose every score is -inf: is the mask the right way "
                     "round (True = may attend)?")
    if case.hint and not notes:
        notes.append(case.hint)
    return "".join(f" Hint: {n}" for n in notes)


def _has_nan(x: Any) -> bool:
    if isinstance(x, Tensor):
        return x.is_floating_point() and bool(x.isnan().any())
    return isinstance(x, (tuple, list)) and any(_has_nan(y) for y in x)


# ----------------------------------------------------------------------------------------------
# Helpers for the cases

def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(g: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> Tensor:
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _lengths_mask(lengths: Sequence[int], S: int) -> Tensor:
    return torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]  # (B, S) True = real


# ----------------------------------------------------------------------------------------------
# Chapter 1: skip-gram with negative sampling

def _word2vec(W: Tensor, U: Tensor):
    from utils.word2vec import Word2Vec
    model = Word2Vec(W.shape[0], W.shape[1]).to(W.dtype)
    with torch.no_grad():
        model.in_embed.weight.copy_(W)
        model.out_embed.weight.copy_(U)
    return model


def _sgns_cases(with_lr: bool) -> Callable[[], list[Case]]:
    def cases() -> list[Case]:
        out = []
        for name, V, D, B, K, dtype, seed in [("batch of 8, 3 negatives each", 40, 6, 8, 3, torch.float32, 1),
                                              ("a batch of one, one negative", 5, 4, 1, 1, torch.float32, 2),
                                              ("words repeated in the batch", 4, 3, 6, 2, torch.float32, 3),
                                              ("float64", 30, 5, 5, 4, torch.float64, 4)]:
            g = _gen(seed)
            W, U = _randn(g, V, D, dtype=dtype, scale=0.5), _randn(g, V, D, dtype=dtype, scale=0.5)
            if "repeated" in name:  # every id several times
                ids = [torch.randint(V, shape, generator=g) for shape in [(B,), (B,), (B, K)]]
            else:  # each output id once, each centre once: only the repeated case tests accumulation
                out_ids = torch.randperm(V, generator=g)[:B * (1 + K)]
                ids = [torch.randperm(V, generator=g)[:B], out_ids[:B], out_ids[B:].view(B, K)]
            hint = "a word can appear several times in one batch: every occurrence adds its gradient (index_add_, " \
                   "not indexed assignment)" if "repeated" in name else ""
            out.append(Case(name, (W, U, *ids) + ((0.1,) if with_lr else ()), hint=hint))
        return out
    return cases


def _sgns_loss_ref(W, U, centers, contexts, negatives):
    return _word2vec(W, U).loss(centers, contexts, negatives).detach()


def _sgns_wrong_sign(W, U, centers, contexts, negatives):
    model = _word2vec(W, U)
    s = model.scores(model.hidden(centers), contexts, negatives).detach()  # (B, 1+K)
    return (-nn.functional.logsigmoid(s[:, 0]) - nn.functional.logsigmoid(s[:, 1:]).sum(1)).mean()


def _sgns_step_ref(W, U, centers, contexts, negatives, lr):
    model = _word2vec(W, U)
    model.sgd_step(centers, contexts, negatives, lr)
    return model.in_embed.weight.detach().clone(), model.out_embed.weight.detach().clone()


_register(Exercise(
    "01.5", "skip-gram negative-sampling loss",
    "my_sgns_loss(W, U, centers, contexts, negatives) -> loss",
    _sgns_cases(False), _sgns_loss_ref, outputs=("the loss",),
    mistakes=[Mistake("this is the sum over the batch; the book's loss is the mean over the batch.",
                      lambda W, U, c, t, n: _sgns_loss_ref(W, U, c, t, n) * len(c)),
              Mistake("the two tables are swapped: centre words use W (the word vectors), contexts and "
                      "negatives use U (the output vectors).",
                      lambda W, U, c, t, n: _sgns_loss_ref(U, W, c, t, n)),
              Mistake("the negatives' scores have the wrong sign: each negative adds -log σ(-u_n·w_c), with a minus "
                      "inside the σ.", lambda W, U, c, t, n: _sgns_wrong_sign(W, U, c, t, n)),
              Mistake("the negatives' term is missing: each negative adds -log σ(-u_n·w_c).",
                      lambda W, U, c, t, n: _sgns_loss_ref(W, U, c, t, n[:, :0]))]))

_register(Exercise(
    "01.6", "one skip-gram SGD step by hand",
    "my_sgns_step(W, U, centers, contexts, negatives, lr) -> (W, U)",
    _sgns_cases(True), _sgns_step_ref, outputs=("W (word vectors) after the step", "U (output vectors) after the step"),
    mistakes=[Mistake("your step goes uphill: move against the gradient, W ← W - lr · ∂loss/∂W.",
                      lambda W, U, c, t, n, lr: _sgns_step_ref(W, U, c, t, n, -lr)),
              Mistake("this is a step on the mean loss; the book (like word2vec.c) steps on the summed loss.",
                      lambda W, U, c, t, n, lr: _sgns_step_ref(W, U, c, t, n, lr / len(c)))]))


# ----------------------------------------------------------------------------------------------
# Chapter 2: the RNN step, language-model windows

def _rnn_cases() -> list[Case]:
    out = []
    for name, B, C, H, dtype, zero_h, seed in [("batch of 3, C=4, H=5", 3, 4, 5, torch.float32, False, 1),
                                               ("a batch of one", 1, 3, 3, torch.float32, False, 2),
                                               ("zero initial state", 2, 4, 4, torch.float32, True, 3),
                                               ("float64", 4, 6, 5, torch.float64, False, 4)]:
        g = _gen(seed)
        x, h = _randn(g, B, C, dtype=dtype), _randn(g, B, H, dtype=dtype)
        if zero_h:
            h = torch.zeros_like(h)
        w_ih, w_hh = _randn(g, H, C, dtype=dtype, scale=0.5), _randn(g, H, H, dtype=dtype, scale=0.5)
        b_ih, b_hh = _randn(g, H, dtype=dtype, scale=0.5), _randn(g, H, dtype=dtype, scale=0.5)
        out.append(Case(name, (x, h, w_ih, w_hh, b_ih, b_hh)))
    return out


def _rnn_ref(x, h, w_ih, w_hh, b_ih, b_hh):
    from utils.rnn import rnn_step
    return rnn_step(x, h, w_ih, w_hh, b_ih, b_hh)


_register(Exercise(
    "02.5", "the RNN step",
    "my_rnn_step(x, h, W_ih, W_hh, b_ih, b_hh) -> h_next",
    _rnn_cases, _rnn_ref, outputs=("h_next",),
    mistakes=[Mistake("W_hh is used transposed: torch.nn stores weights as (out, in), so the step is "
                      "h @ W_hh.T (F.linear(h, W_hh)).",
                      lambda x, h, wi, wh, bi, bh: _rnn_ref(x, h, wi, wh.T, bi, bh)),
              Mistake("one of the two biases is missing: torch.nn adds both b_ih and b_hh.",
                      lambda x, h, wi, wh, bi, bh: _rnn_ref(x, h, wi, wh, bi, torch.zeros_like(bh))),
              Mistake("one of the two biases is missing: torch.nn adds both b_ih and b_hh.",
                      lambda x, h, wi, wh, bi, bh: _rnn_ref(x, h, wi, wh, torch.zeros_like(bi), bh))]))


def _lm_cases() -> list[Case]:
    out = []
    for name, N, B, T, seed in [("4 windows of 8 characters", 100, 4, 8, 1), ("a batch of one", 30, 1, 5, 2),
                                ("windows that end on the last character", 9, 3, 8, 3)]:
        data = torch.randint(65, (N,), generator=_gen(seed))
        # random_lm_batch draws its starts with torch.randint(N - T, (B,), generator): the same draw, shown
        starts = torch.randint(N - T, (B,), generator=_gen(100 + seed))  # (B,)
        hint = "the data holds exactly T + 1 characters: the inputs are the first T, the targets the last T" \
            if "last" in name else ""
        out.append(Case(name, (data, starts, T), hint=hint, reference_args=(data, B, T, _gen(100 + seed))))
    return out


def _lm_ref(data, batch_size, block_size, generator):
    from utils.rnn import random_lm_batch
    return random_lm_batch(data, batch_size, block_size, generator=generator)


_register(Exercise(
    "02.6", "language-model windows",
    "my_lm_batch(data, starts, block_size) -> (inputs, targets)",
    _lm_cases, _lm_ref, outputs=("inputs", "targets"),
    mistakes=[Mistake("the targets equal the inputs: each target is the character that comes *after* its input "
                      "(shift by one).", lambda e: (e[0], e[0]), from_expected=True),
              Mistake("inputs and targets are swapped.", lambda e: (e[1], e[0]), from_expected=True)]))


# ----------------------------------------------------------------------------------------------
# Chapter 3: LSTM and GRU cells

def _gated_cases(blocks: int, with_c: bool) -> Callable[[], list[Case]]:
    def cases() -> list[Case]:
        out = []
        for name, B, C, H, dtype, seed in [("batch of 3, C=4, H=5", 3, 4, 5, torch.float32, 1),
                                           ("a batch of one", 1, 2, 3, torch.float32, 2),
                                           ("float64", 4, 6, 4, torch.float64, 3)]:
            g = _gen(seed)
            x, h = _randn(g, B, C, dtype=dtype), _randn(g, B, H, dtype=dtype, scale=0.5)
            c = (_randn(g, B, H, dtype=dtype),) if with_c else ()
            w = (_randn(g, blocks * H, C, dtype=dtype, scale=0.5), _randn(g, blocks * H, H, dtype=dtype, scale=0.5),
                 _randn(g, blocks * H, dtype=dtype, scale=0.5), _randn(g, blocks * H, dtype=dtype, scale=0.5))
            out.append(Case(name, (x, h, *c, *w)))
        return out
    return cases


def _permute_blocks(order: Sequence[int], *tensors: Tensor) -> list[Tensor]:
    """Reorder the gate blocks (dim 0) of weights and biases."""
    return [torch.cat([t.chunk(len(order), 0)[k] for k in order], 0) for t in tensors]


def _negate_block(k: int, n: int, *tensors: Tensor) -> list[Tensor]:
    out = []
    for t in tensors:
        parts = list(t.chunk(n, 0))
        parts[k] = -parts[k]
        out.append(torch.cat(parts, 0))
    return out


def _lstm_ref(x, h, c, w_ih, w_hh, b_ih, b_hh):
    from utils.rnn import lstm_step
    h, c, _ = lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh)
    return h, c


def _gru_ref(x, h, w_ih, w_hh, b_ih, b_hh):
    from utils.rnn import gru_step
    return gru_step(x, h, w_ih, w_hh, b_ih, b_hh)[0]


_register(Exercise(
    "03.5", "the LSTM cell",
    "my_lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh) -> (h_next, c_next)",
    _gated_cases(4, True), _lstm_ref, outputs=("h_next", "c_next"),
    mistakes=[Mistake("the gates are read in the wrong order: torch.nn stacks the four blocks as i, f, g, o.",
                      lambda x, h, c, *w: _lstm_ref(x, h, c, *_permute_blocks([0, 1, 3, 2], *w))),
              Mistake("the input and forget gates are swapped: the blocks are i, f, g, o.",
                      lambda x, h, c, *w: _lstm_ref(x, h, c, *_permute_blocks([1, 0, 2, 3], *w))),
              Mistake("the gates are read in the wrong order: torch.nn stacks the four blocks as i, f, g, o.",
                      lambda x, h, c, *w: _lstm_ref(x, h, c, *_permute_blocks([0, 1, 3, 2][::-1], *w)))]))

_register(Exercise(
    "03.6", "the GRU cell",
    "my_gru_cell(x, h, W_ih, W_hh, b_ih, b_hh) -> h_next",
    _gated_cases(3, False), _gru_ref, outputs=("h_next",),
    mistakes=[Mistake("z and 1 - z are swapped: in torch.nn's convention h' = (1 - z) * n + z * h (z near 1 keeps "
                      "the old state).", lambda x, h, *w: _gru_ref(x, h, *_negate_block(1, 3, *w))),
              Mistake("r and z are swapped: torch.nn stacks the blocks as r, z, n.",
                      lambda x, h, *w: _gru_ref(x, h, *_permute_blocks([1, 0, 2], *w)))]))


# ----------------------------------------------------------------------------------------------
# Chapter 4: batched greedy decoding, the padded loss

class _ScriptedDecoder(nn.Module):
    """A stand-in for a trained decoder: deterministic logits from the previous token and the source, and
    <eos> exactly at step `ends[b]` for row b (never, if that is beyond max_len)."""

    def __init__(self, V: int, seed: int) -> None:
        super().__init__()
        from utils.seq2seq import EOS, PAD, SOS
        g = _gen(seed)
        table = torch.randn(V, V, generator=g)  # (V, V) next-token scores given the previous token
        table[:, [PAD, SOS, EOS]] = -10.0  # never chosen, except <eos> when the script says so
        self.register_buffer("table", table)
        self.eos = EOS

    def init_state(self, memory):
        ends, bias = memory
        return torch.zeros_like(ends)  # (B,) steps taken

    def step(self, y: Tensor, state: Tensor, memory):
        ends, bias = memory
        logits = self.table[y] + bias  # (B, V)
        t = state + 1
        logits[:, self.eos] = torch.where(t == ends, 20.0, -10.0)
        return logits, t, None


class _ScriptedSeq2Seq(nn.Module):
    def __init__(self, V: int = 12, seed: int = 0) -> None:
        super().__init__()
        self.decoder = _ScriptedDecoder(V, seed)
        self.bias = nn.Parameter(torch.randn(V, V, generator=_gen(seed + 1)))  # source token -> logit bias

    def encode(self, src: Tensor, src_len: Tensor):
        """Memory: (when each row says <eos>, a per-row bias from its first source token)."""
        return src_len.clone(), self.bias.detach()[src[:, 0]]

    def __deepcopy__(self, memo):  # the cases reuse one model; it holds no state that calls change
        return self


def _greedy_cases() -> list[Case]:
    out = []
    model = _ScriptedSeq2Seq()
    for name, ends, max_len, seed in [("3 rows that end at steps 4, 2 and 6", [4, 2, 6], 10, 1),
                                      ("a batch of one", [3], 10, 2),
                                      ("a row that never says <eos> within max_len", [2, 30], 8, 3),
                                      ("every row ends at the first step", [1, 1], 5, 4)]:
        g = _gen(seed)
        src = torch.randint(4, 12, (len(ends), 3), generator=g)
        hint = ""
        if "never" in name:
            hint = "stop after max_len steps even if a row has not produced <eos>"
        out.append(Case(name, (model, src, torch.tensor(ends)), {"max_len": max_len}, hint=hint))
    return out


def _greedy_ref(model, src, src_len, max_len):
    from utils.seq2seq import greedy_decode
    return greedy_decode(model, src, src_len, max_len=max_len).tokens


def _greedy_hints(case: Case, expected: Any, got: Any) -> str:
    from utils.seq2seq import EOS, PAD
    if not isinstance(got, Tensor) or got.dim() != 2 or got.shape[0] != expected.shape[0]:
        return "return one row of token ids per source, shape (B, number of steps)."
    if got.shape[1] > expected.shape[1]:
        return "stop as soon as every row has produced <eos> (or after max_len steps)."
    if got.shape[1] < expected.shape[1]:
        return "keep going until every row has produced <eos>, not just the first one."
    after = torch.cumsum(expected == EOS, 1) - (expected == EOS).long() > 0  # positions after a row's <eos>
    if after.any() and not torch.equal(got[after], expected[after]):
        return f"after a row's <eos>, write <pad> (id {PAD}) in its remaining positions."
    return "feed back each step's most likely token (argmax), starting from <sos>."


_register(Exercise(
    "04.5", "batched greedy decoding",
    "my_greedy_decode(model, src, src_len, max_len) -> tokens",
    _greedy_cases, _greedy_ref, outputs=("tokens",), hints=_greedy_hints))


def _loss_cases() -> list[Case]:
    from utils.seq2seq import EOS, PAD
    out = []
    for name, lengths, T, V, dtype, seed in [("no padding", [5, 5], 5, 7, torch.float32, 1),
                                             ("rows of 6, 3 and 1 tokens, padded to 6", [6, 3, 1], 6, 9, torch.float32, 2),
                                             ("a batch of one", [4], 4, 6, torch.float32, 3),
                                             ("float64", [3, 5], 5, 8, torch.float64, 4)]:
        g = _gen(seed)
        logits = _randn(g, len(lengths), T, V, dtype=dtype, scale=2.0)
        tgt = torch.randint(4, V, (len(lengths), T), generator=g)
        mask = _lengths_mask(lengths, T)
        tgt[~mask] = PAD
        for b, n in enumerate(lengths):
            tgt[b, n - 1] = EOS
        out.append(Case(name, (logits, tgt)))
    return out


def _loss_ref(logits, tgt_out):
    from utils.seq2seq import seq2seq_loss
    return seq2seq_loss(logits, tgt_out)


def _loss_with_padding(logits, tgt_out):
    return nn.functional.cross_entropy(logits.flatten(0, 1), tgt_out.flatten())


_register(Exercise(
    "04.6", "the padded sequence loss",
    "my_seq2seq_loss(logits, tgt_out) -> loss",
    _loss_cases, _loss_ref, outputs=("the loss",),
    mistakes=[Mistake("the padding counts in your mean: positions whose target is <pad> (id 0) must be left out.",
                      _loss_with_padding)]))


# ----------------------------------------------------------------------------------------------
# Chapter 5: dot-product and additive attention over padded sources

def _attn_cases(dims: Callable[[int], tuple[int, int, int]], with_weights: bool) -> Callable[[], list[Case]]:
    def cases() -> list[Case]:
        out = []
        for name, lengths, S, dtype, seed in [("padding: 4, 2 and 1 real keys out of 5", [4, 2, 1], 5, torch.float32, 1),
                                              ("no padding (every key real)", [3, 3], 3, torch.float32, 2),
                                              ("a batch of one", [2], 4, torch.float32, 3),
                                              ("a single key", [1, 1], 1, torch.float32, 4),
                                              ("float64, padded", [3, 5], 5, torch.float64, 5)]:
            g = _gen(seed)
            Q, K, A = dims(seed)
            B = len(lengths)
            query, keys = _randn(g, B, Q, dtype=dtype), _randn(g, B, S, K, dtype=dtype)
            w = ((_randn(g, A, Q, dtype=dtype, scale=0.5), _randn(g, A, K, dtype=dtype, scale=0.5),
                  _randn(g, 1, A, dtype=dtype)) if with_weights else ())
            hint = "padded keys (mask False) must get weight exactly 0" if "padding:" in name else ""
            out.append(Case(name, (query, keys, _lengths_mask(lengths, S), *w), hint=hint))
        return out
    return cases


def _dot_ref(query, keys, mask):
    from utils.attention import DotProductAttention
    return DotProductAttention(query.shape[-1], keys.shape[-1], kind="dot")(query, keys, mask)


def _additive_ref(query, keys, mask, w_q, w_k, v):
    from utils.attention import AdditiveAttention
    module = AdditiveAttention(w_q.shape[1], w_k.shape[1], w_q.shape[0]).to(query.dtype)
    with torch.no_grad():
        module.w_q.weight.copy_(w_q)
        module.w_k.weight.copy_(w_k)
        module.v.weight.copy_(v)
        return module(query, keys, mask)


_WRONG_SIGN = "the mask has the wrong sign: True marks a real key (it may be attended), False the padding."

_register(Exercise(
    "05.5", "dot-product attention with a padding mask",
    "my_dot_attention(query, keys, mask) -> (context, weights)",
    _attn_cases(lambda s: (6, 6, 0), False), _dot_ref, masked=True, outputs=("context", "weights"),
    mistakes=[Mistake(_WRONG_SIGN, lambda q, k, m: _dot_ref(q, k, ~m)),
              Mistake("the padded keys were not masked.", lambda q, k, m: _dot_ref(q, k, torch.ones_like(m)))]))

_register(Exercise(
    "05.6", "additive (Bahdanau) attention",
    "my_additive_attention(query, keys, mask, W_q, W_k, v) -> (context, weights)",
    _attn_cases(lambda s: (3 + s % 3, 4, 5), True), _additive_ref, masked=True, outputs=("context", "weights"),
    mistakes=[Mistake(_WRONG_SIGN, lambda q, k, m, *w: _additive_ref(q, k, ~m, *w)),
              Mistake("the padded keys were not masked.",
                      lambda q, k, m, *w: _additive_ref(q, k, torch.ones_like(m), *w))]))


# ----------------------------------------------------------------------------------------------
# Chapter 6: scaled dot-product attention with masks, sinusoidal positions

def _sdpa_cases() -> list[Case]:
    from utils.attention import causal_mask
    out = []
    for name, qs, ks, vs, mask, dtype, seed in [
            ("(B, T, D) without a mask", (2, 4, 8), (2, 4, 8), (2, 4, 8), None, torch.float32, 1),
            ("heads (B, H, T, D) with a padding mask (B, 1, 1, S)", (2, 3, 5, 4), (2, 3, 5, 4), (2, 3, 5, 4),
             _lengths_mask([4, 2], 5)[:, None, None, :], torch.float32, 2),
            ("a causal mask (T, T)", (2, 6, 4), (2, 6, 4), (2, 6, 4), causal_mask(6), torch.float32, 3),
            ("cross-attention: T=3 queries, S=5 keys, values of width 2", (1, 3, 4), (1, 5, 4), (1, 5, 2),
             None, torch.float32, 4),
            ("float64 with a padding mask", (3, 4, 6), (3, 4, 6), (3, 4, 6), _lengths_mask([4, 3, 1], 4)[:, None, :],
             torch.float64, 5)]:
        g = _gen(seed)
        q, k, v = (_randn(g, *s, dtype=dtype) for s in (qs, ks, vs))
        hint = {1: "", 2: "a blocked key gets weight exactly 0: fill its score with -inf before the softmax",
                3: "query t may attend to keys 0..t only (True = may attend)"}.get(seed, "")
        out.append(Case(name, (q, k, v), {"mask": mask}, hint=hint))
    return out


def _sdpa_ref(q, k, v, mask=None):
    from utils.attention import scaled_dot_product_attention
    return scaled_dot_product_attention(q, k, v, mask=mask, return_attn=True)


_register(Exercise(
    "06.5", "scaled dot-product attention with masks",
    "my_attention(q, k, v, mask=None) -> (out, weights)",
    _sdpa_cases, _sdpa_ref, masked=True, outputs=("out", "weights"),
    mistakes=[Mistake("the scores are not divided by √D (D = q.shape[-1]).",
                      lambda q, k, v, mask=None: _sdpa_ref(q * math.sqrt(q.shape[-1]), k, v, mask)),
              Mistake("the scores are divided by D instead of √D.",
                      lambda q, k, v, mask=None: _sdpa_ref(q / math.sqrt(q.shape[-1]), k, v, mask)),
              Mistake("the mask has the wrong sign: True marks a key that may be attended, False a blocked one.",
                      lambda q, k, v, mask=None: _sdpa_ref(q, k, v, None if mask is None else ~mask)),
              Mistake("the mask was ignored.", lambda q, k, v, mask=None: _sdpa_ref(q, k, v, None))]))


def _pe_cases() -> list[Case]:
    return [Case(f"T={T}, C={C}", (T, C)) for T, C in [(6, 4), (1, 2), (64, 16), (10, 32)]]


def _pe_ref(T, C):
    from utils.transformer import sinusoidal_positions
    return sinusoidal_positions(T, C)


_register(Exercise(
    "06.6", "sinusoidal positions",
    "my_sinusoids(T, C) -> (T, C) table",
    _pe_cases, _pe_ref, outputs=("the table",),
    mistakes=[Mistake("sin and cos are in two halves; the book interleaves them: even columns sin, odd columns cos.",
                      lambda T, C: torch.cat([_pe_ref(T, C)[:, 0::2], _pe_ref(T, C)[:, 1::2]], 1)),
              Mistake("sin and cos are swapped: even columns hold sin, odd columns cos.",
                      lambda T, C: _pe_ref(T, C).view(T, C // 2, 2).flip(-1).reshape(T, C))]))


# ----------------------------------------------------------------------------------------------
# Chapter 7: causal self-attention (GPT's attention block), BPE merges

def _csa_cases() -> list[Case]:
    out = []
    for name, B, T, C, H, dtype, seed in [("B=2, T=5, C=8, 2 heads", 2, 5, 8, 2, torch.float32, 1),
                                          ("a batch of one, 4 heads", 1, 6, 8, 4, torch.float32, 2),
                                          ("a single position (T=1)", 2, 1, 6, 3, torch.float32, 3),
                                          ("float64, one head", 2, 4, 4, 1, torch.float64, 4)]:
        g = _gen(seed)
        out.append(Case(name, (_randn(g, B, T, C, dtype=dtype), _randn(g, 3 * C, C, dtype=dtype, scale=0.5),
                               _randn(g, 3 * C, dtype=dtype, scale=0.1), _randn(g, C, C, dtype=dtype, scale=0.5),
                               _randn(g, C, dtype=dtype, scale=0.1), H)))
    return out


def _csa_ref(x, w_attn, b_attn, w_proj, b_proj, n_head, causal=True):
    from utils.attention import MultiHeadAttention
    C = x.shape[-1]
    mha = MultiHeadAttention(C, n_head).to(x.dtype)
    with torch.no_grad():
        mha.in_proj.weight.copy_(w_attn)
        mha.in_proj.bias.copy_(b_attn)
        mha.out_proj.weight.copy_(w_proj)
        mha.out_proj.bias.copy_(b_proj)
        return mha(x, is_causal=causal)[0]


_register(Exercise(
    "07.6", "causal self-attention",
    "my_causal_self_attention(x, W_attn, b_attn, W_proj, b_proj, n_head) -> y",
    _csa_cases, _csa_ref, masked=True, outputs=("y",),
    mistakes=[Mistake("there is no causal mask: position t must not see positions after t.",
                      lambda *a: _csa_ref(*a, causal=False)),
              Mistake("one head of width C: split C into n_head heads of C / n_head each, attend in each, "
                      "then join them.", lambda x, wa, ba, wp, bp, H: _csa_ref(x, wa, ba, wp, bp, 1))]))


def _merge_cases() -> list[Case]:
    a, b, c = 5, 7, 9
    return [Case("the pair once, in the middle", ([c, a, b, c], (a, b), 20)),
            Case("the pair twice, side by side", ([a, b, a, b], (a, b), 20)),
            Case("the pair at the end", ([c, c, a, b], (a, b), 20), hint="check the last two ids too"),
            Case("the pair absent", ([a, c, b, a], (a, b), 20)),
            Case("an empty list", ([], (a, b), 20)),
            Case("overlapping: (a, a) in [a, a, a]", ([a, a, a], (a, a), 20),
                 hint="overlaps resolve from the left: [a, a, a] becomes [new, a]; after a merge, skip both ids"),
            Case("a pair that is (b, a), not (a, b)", ([b, a, b], (a, b), 20))]


def _merge_ref(ids, pair, new_id):
    from utils.text import merge_pair
    return merge_pair(ids, pair, new_id)


def _merge_hints(case: Case, expected: Any, got: Any) -> str:
    if not isinstance(got, (list, tuple)) or len(got) <= len(expected):
        return ""
    if list(got[-2:]) == list(case.args[1]):
        return "a pair at the very end of the list is merged too (check the last two ids)."
    return "after a merge, skip both ids of the pair (overlaps resolve from the left)."


_register(Exercise(
    "07.7", "a BPE merge",
    "my_merge(ids, pair, new_id) -> list of ids",
    _merge_cases, _merge_ref, outputs=("the merged ids",), hints=_merge_hints))


# ----------------------------------------------------------------------------------------------
# Chapter 8: patches, attention rollout

def _patch_cases() -> list[Case]:
    out = []
    for name, shape, P, dtype, seed in [("one 1×4×4 image, P=2", (1, 1, 4, 4), 2, torch.float32, 1),
                                        ("two RGB 8×8 images, P=4", (2, 3, 8, 8), 4, torch.float32, 2),
                                        ("non-square 4×8 images, P=2", (2, 3, 4, 8), 2, torch.float32, 3),
                                        ("one patch: P equals the image side", (2, 2, 4, 4), 4, torch.float32, 4),
                                        ("float64", (1, 3, 6, 6), 3, torch.float64, 5)]:
        out.append(Case(name, (_randn(_gen(seed), *shape, dtype=dtype), P),
                        hint="patches are numbered row by row: N = (height / P) · (width / P)"
                        if "non-square" in name else ""))
    return out


def _patch_ref(images, P):
    from utils.vit import patchify
    return patchify(images, P)


def _columns_first(images, P):
    B, C, Hh, W = images.shape
    ref = _patch_ref(images, P).view(B, Hh // P, W // P, -1)
    return ref.transpose(1, 2).reshape(B, (Hh // P) * (W // P), -1)


_register(Exercise(
    "08.6", "patchify",
    "my_patchify(images, P) -> (B, N, C·P·P) patches",
    _patch_cases, _patch_ref, outputs=("the patches",),
    mistakes=[Mistake("each patch is flattened channel-last; the book flattens it channel first (channel, row, "
                      "column), the order of a Conv2d weight's .flatten(1).",
                      lambda im, P: _patch_ref(im, P).unflatten(-1, (im.shape[1], P * P)).transpose(-1, -2).flatten(-2)),
              Mistake("the patches are numbered column by column; number them row by row (left to right, "
                      "then top to bottom).", _columns_first),
              Mistake("the rows and columns inside each patch are swapped (a transposed patch).",
                      lambda im, P: _patch_ref(im, P).unflatten(-1, (im.shape[1], P, P)).transpose(-1, -2).flatten(-3))]))


def _rollout_cases() -> list[Case]:
    out = []
    for name, L, H, T, dtype, seed in [("3 layers, 2 heads, 5 tokens", 3, 2, 5, torch.float32, 1),
                                       ("one layer", 1, 4, 4, torch.float32, 2),
                                       ("one head", 2, 1, 3, torch.float32, 3),
                                       ("float64, 4 layers", 4, 3, 6, torch.float64, 4)]:
        attn = torch.softmax(_randn(_gen(seed), L, H, T, T, dtype=dtype, scale=2.0), dim=-1)
        out.append(Case(name, (attn,), hint="with one layer the rollout is that layer's head-averaged map mixed with "
                        "the identity: 0.5 · I + 0.5 · A" if L == 1 else ""))
    return out


def _rollout_ref(attn, residual=0.5):
    from utils.vit import attention_rollout
    return attention_rollout(attn, residual=residual)


_register(Exercise(
    "08.7", "attention rollout",
    "my_rollout(attn) -> (T, T) rollout",
    _rollout_cases, _rollout_ref, outputs=("the rollout",),
    mistakes=[Mistake("the layers are multiplied in the wrong order: later layers go on the left, "
                      "R = Â_L ⋯ Â_2 Â_1.", lambda a: _rollout_ref(a.flip(0))),
              Mistake("the residual connection is missing: use Â = 0.5 · I + 0.5 · A (rows renormalised).",
                      lambda a: _rollout_ref(a, residual=0.0))]))


# ----------------------------------------------------------------------------------------------
# Chapter 9: CLIP's logits and symmetric loss

def _clip_loss_cases() -> list[Case]:
    out = []
    for name, B, scale, dtype, seed in [("a batch of 4", 4, 3.0, torch.float32, 1),
                                        ("a batch of one (the loss is 0)", 1, 3.0, torch.float32, 2),
                                        ("large logits (scale 100)", 6, 100.0, torch.float32, 3),
                                        ("float64", 5, 3.0, torch.float64, 4)]:
        hint = "with logits near 100, exp overflows: use F.cross_entropy (or log_softmax)" if scale > 10 else ""
        out.append(Case(name, (_randn(_gen(seed), B, B, dtype=dtype, scale=scale),), hint=hint))
    return out


def _ce_rows(logits: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits, torch.arange(logits.shape[0]))


def _clip_loss_ref(logits_per_image):
    from utils.clip import clip_loss
    return clip_loss(logits_per_image)


_register(Exercise(
    "09.5", "CLIP's symmetric contrastive loss",
    "my_clip_loss(logits_per_image) -> loss",
    _clip_loss_cases, _clip_loss_ref, outputs=("the loss",),
    mistakes=[Mistake("only the image → text direction (rows) is there; average it with text → image (the "
                      "columns, i.e. the transposed logits).", _ce_rows),
              Mistake("only the text → image direction (columns) is there; average it with image → text (rows).",
                      lambda x: _ce_rows(x.T)),
              Mistake("the two directions are summed; the loss is their mean.", lambda x: 2 * _clip_loss_ref(x))]))


_TINY_CLIP: list = []


def _tiny_clip():
    """A tiny CLIP (random weights) whose forward gives the reference logits."""
    if not _TINY_CLIP:
        from utils.clip import CLIP, CLIPConfig
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = CLIP(CLIPConfig(embed_dim=8, vision=dict(image_size=8, patch_size=4, width=16, layers=1,
                                                                 head_width=8),
                                    text=dict(context_length=5, vocab_size=20, width=16, layers=1, head_width=8)))
        _TINY_CLIP.append(model.eval())
    return _TINY_CLIP[0]


def _clip_logits_cases() -> list[Case]:
    model = _tiny_clip()
    out = []
    for name, Bi, Bt, logit_scale, seed in [("4 images, 4 captions, temperature 0.07", 4, 4, math.log(1 / 0.07), 1),
                                            ("3 images, 5 captions", 3, 5, math.log(1 / 0.07), 2),
                                            ("a batch of one", 1, 1, 1.0, 3),
                                            ("logit_scale = 0 (scale 1)", 2, 3, 0.0, 4),
                                            ("logit_scale = ln 100, the largest training allows", 3, 2,
                                             math.log(100.0), 5)]:
        g = _gen(seed)
        images, text = _randn(g, Bi, 3, 8, 8), torch.randint(1, 20, (Bt, 5), generator=g)
        with torch.no_grad():
            image_features, text_features = model.encode_image(images), model.encode_text(text)  # not normalised
        out.append(Case(name, (image_features, text_features, torch.tensor(logit_scale)),
                        reference_args=(images, text, logit_scale)))
    return out


def _clip_logits_ref(images, text, logit_scale):
    """CLIP.forward's logits for these images and captions, at this logit_scale."""
    with torch.no_grad():
        model = _tiny_clip()
        saved = model.logit_scale.detach().clone()
        model.logit_scale.fill_(logit_scale)
        try:
            return model(images, text)
        finally:
            model.logit_scale.copy_(saved)


def _scaled(image_features: Tensor, text_features: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    logits = scale * image_features @ text_features.T  # (B_i, B_t)
    return logits, logits.T


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


_register(Exercise(
    "09.6", "CLIP's logits",
    "my_clip_logits(image_features, text_features, logit_scale) -> (logits_per_image, logits_per_text)",
    _clip_logits_cases, _clip_logits_ref, outputs=("logits_per_image", "logits_per_text"),
    mistakes=[Mistake("the features are not normalised: divide each row by its length first (cosine similarity).",
                      lambda i, t, s: _scaled(i, t, s.exp())),
              Mistake("the scale is logit_scale itself; it is exp(logit_scale) (logit_scale is a log).",
                      lambda i, t, s: _scaled(_unit(i), _unit(t), s)),
              Mistake("logits_per_text is not the transpose of logits_per_image.",
                      lambda e: (e[0], e[0]), from_expected=True)]))


# ----------------------------------------------------------------------------------------------
# Chapter 10: LLaVA's image-token merge, and targets that score the answer only

def _merge_cases() -> list[Case]:
    out = []
    IMG = 7  # the <image> id of these cases
    for name, rows, N, C, dtype, seed in [
            ("one sequence, 4 image tokens first", [[IMG] * 4 + [1, 2, 3]], 4, 6, torch.float32, 1),
            ("two sequences, the image after a start token and after a word", [[0, IMG, IMG, IMG, 4, 5, 6],
                                                                            [0, 9, IMG, IMG, IMG, 4, 5]], 3, 8,
             torch.float32, 2),
            ("one pooled visual token per image, float64", [[0, IMG, 3, 4], [0, 5, IMG, 4], [IMG, 1, 2, 3]], 1, 4,
             torch.float64, 3)]:
        g = _gen(seed)
        ids = torch.tensor(rows)  # (B, T)
        embeds = _randn(g, *ids.shape, C, dtype=dtype)  # (B, T, C)
        visual = _randn(g, ids.shape[0], N, C, dtype=dtype)  # (B, N, C)
        out.append(Case(name, (embeds, ids, IMG, visual),
                        hint="image b's N visual tokens go, in order, to the N image positions of sequence b"))
    return out


def _merge_ref(embeds, ids, image_token_id, visual):
    from utils.vlm import merge_image_tokens
    return merge_image_tokens(embeds, ids, image_token_id, visual)


_register(Exercise(
    "10.5", "merge the visual tokens into the text",
    "my_merge(embeds, ids, image_token_id, visual) -> (B, T, C)",
    _merge_cases, _merge_ref,
    mistakes=[Mistake("the visual tokens are in reverse order: the first image position gets visual token 0.",
                      lambda e, i, t, v: _merge_ref(e, i, t, v.flip(1))),
              Mistake("the image positions still hold the <image> embedding: write the visual tokens there.",
                      lambda e, i, t, v: e),
              Mistake("the images are paired with the wrong sequences: sequence b reads image b.",
                      lambda e, i, t, v: _merge_ref(e, i, t, v.roll(1, 0)))]))


def _targets_cases() -> list[Case]:
    return [Case("one sequence, the answer in its last two tokens", (torch.tensor([[5, 5, 1, 2, 3, 8, 9]]), [5])),
            Case("two sequences with answers starting at different places",
                 (torch.tensor([[5, 1, 2, 3, 8, 9, 0], [5, 5, 1, 8, 9, 4, 0]]), [4, 3])),
            Case("an answer of one token at the very end", (torch.tensor([[5, 1, 2, 3, 9]]), [4]),
                 hint="the last position predicts nothing: its target is -100")]


def _targets_ref(ids, answer_start):
    from utils.vlm import answer_targets
    return answer_targets(ids, answer_start)


def _targets_unshifted(ids, answer_start):
    keep = torch.arange(ids.shape[1])[None] >= torch.as_tensor(answer_start).reshape(-1, 1)  # (B, T)
    return ids.masked_fill(~keep, -100)


_register(Exercise(
    "10.6", "targets that score the answer only",
    "my_targets(ids, answer_start) -> (B, T) long, -100 where nothing is scored",
    _targets_cases, _targets_ref,
    mistakes=[Mistake("the targets are not shifted: position t predicts token t + 1.", _targets_unshifted),
              Mistake("the image and the question are scored too: only positions that predict an answer token "
                      "(t + 1 ≥ answer_start) get a target.",
                      lambda ids, s: _targets_ref(ids, [0] * ids.shape[0])),
              Mistake("off by one: the first answer token must be predicted too (by the position before it).",
                      lambda ids, s: _targets_ref(ids, [a + 1 for a in s]))]))


# ----------------------------------------------------------------------------------------------
# Chapter 11: group-wise weight quantization and the distillation loss

def _groups_cases() -> list[Case]:
    out = []
    for name, O, I, bits, g, seed in [("4 bits, groups of 4, a 3 × 8 matrix", 3, 8, 4, 4, 1),
                                      ("8 bits, groups of 16, a 2 × 32 matrix", 2, 32, 8, 16, 2),
                                      ("4 bits, groups of 8, one large weight in row 0", 4, 16, 4, 8, 3)]:
        w = _randn(_gen(seed), O, I)  # (O, I)
        if seed == 3:
            w[0, 1] = 20.0  # stretches the scale of its own group only
        out.append(Case(name, (w, bits, g), hint="each group of g consecutive weights of a row has its own scale"))
    w = _randn(_gen(4), 2, 8)
    w[1, :4] = 0.0
    out.append(Case("a group of zeros (4 bits, groups of 4)", (w, 4, 4),
                    hint="an all-zero group has max|w| = 0, so its scale would be 0 and w / scale NaN: "
                         "give it any positive scale (its weights come back as 0)"))
    return out


def _groups_ref(w, bits, group_size):
    from utils.quantize import quantize
    return quantize(w, bits, group_size).dequantize()


def _groups_wrong_levels(w, bits, group_size):
    # the asymmetric count of levels in a symmetric scheme: scale = max|w| / (2^b - 1), clamped to ±(2^(b-1) - 1)
    O, I = w.shape
    x = w.reshape(O, I // group_size, group_size)
    qmax = 2 ** (bits - 1) - 1
    scale = (x.abs().amax(-1, keepdim=True) / (2 ** bits - 1)).clamp(min=1e-12)
    return (torch.clamp(torch.round(x / scale), -qmax, qmax) * scale).reshape(O, I)


_register(Exercise(
    "11.6", "int4 weights in groups, by hand",
    "my_fake_quantize(w, bits, group_size) -> (O, I), the dequantized weights",
    _groups_cases, _groups_ref,
    mistakes=[Mistake("one scale per row: cut each row into groups of group_size and give each group its own scale.",
                      lambda w, b, g: _groups_ref(w, b, w.shape[1])),
              Mistake("one scale for the whole matrix: each group of a row needs its own.",
                      lambda w, b, g: _groups_ref(w.reshape(1, -1), b, w.numel()).reshape(w.shape)),
              Mistake("the scale divides by 2^b - 1, the count of an unsigned range: symmetric b-bit integers go "
                      "from -(2^(b-1) - 1) to 2^(b-1) - 1, so scale = max|w| / (2^(b-1) - 1).",
                      _groups_wrong_levels)]))


def _kd_cases() -> list[Case]:
    out = []
    for name, shape, T, alpha, dtype, seed in [("a batch of 2 × 5 positions, T = 2, α = 0.5", (2, 5, 7), 2.0, 0.5,
                                                torch.float32, 1),
                                               ("T = 1, α = 0.3", (3, 4, 6), 1.0, 0.3, torch.float32, 2),
                                               ("T = 4, α = 0.9, float64", (2, 3, 9), 4.0, 0.9, torch.float64, 3)]:
        g = _gen(seed)
        student, teacher = _randn(g, *shape, dtype=dtype, scale=2.0), _randn(g, *shape, dtype=dtype, scale=2.0)
        targets = torch.randint(0, shape[-1], shape[:-1], generator=g)  # (B, T)
        out.append(Case(name, (student, teacher, targets, T, alpha)))
    g = _gen(4)
    same = _randn(g, 2, 4, 5, scale=2.0)
    out.append(Case("the student equals the teacher, α = 1 (the loss is 0)",
                    (same, same.clone(), torch.randint(0, 5, (2, 4), generator=g), 3.0, 1.0),
                    hint="KL(p ‖ p) = 0 whatever T is"))
    return out


def _kd_ref(student_logits, teacher_logits, targets, temperature, alpha):
    from utils.compress import distillation_loss
    return distillation_loss(student_logits, teacher_logits, targets, temperature, alpha)


def _kd_parts(s, t, y, T, alpha, reverse=False, t_squared=True, per_element=False):
    V = s.shape[-1]
    log_q, log_p = torch.log_softmax(s.reshape(-1, V) / T, -1), torch.log_softmax(t.reshape(-1, V) / T, -1)
    if reverse:
        log_p, log_q = log_q, log_p
    kl = (log_p.exp() * (log_p - log_q)).sum() / (log_p.numel() if per_element else log_p.shape[0])
    ce = nn.functional.cross_entropy(s.reshape(-1, V), y.reshape(-1))
    return alpha * (T ** 2 if t_squared else 1) * kl + (1 - alpha) * ce


_register(Exercise(
    "11.7", "Hinton's distillation loss",
    "my_kd_loss(student_logits, teacher_logits, targets, T, alpha) -> a scalar",
    _kd_cases, _kd_ref,
    mistakes=[Mistake("the KL term is not multiplied by T²: without it the soft loss's gradient shrinks as 1/T².",
                      lambda s, t, y, T, a: _kd_parts(s, t, y, T, a, t_squared=False)),
              Mistake("the KL runs the wrong way: it is KL(teacher ‖ student), the teacher's probabilities weight "
                      "the log ratio.", lambda s, t, y, T, a: _kd_parts(s, t, y, T, a, reverse=True)),
              Mistake("the KL is averaged over every (position, character) entry: sum over the vocabulary, then "
                      "average over positions.", lambda s, t, y, T, a: _kd_parts(s, t, y, T, a, per_element=True))]))


# ----------------------------------------------------------------------------------------------
# Chapter 12: DDPM's forward process, and vector quantization's nearest code

def _linear_abar(T: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0).to(dtype)  # (T,) DDPM's ᾱ


def _cosine_abar(T: int, dtype: torch.dtype = torch.float32) -> Tensor:
    from utils.diffusion import NoiseSchedule
    return NoiseSchedule(T, schedule="cosine").alphas_cumprod.to(dtype)  # (T,)


def _add_noise_cases() -> list[Case]:
    out = []
    for name, shape, T, schedule, t, dtype, seed in [
            ("4 images (4, 3, 4, 4), T = 1000, a random t per image", (4, 3, 4, 4), 1000, "linear", None,
             torch.float32, 1),
            ("t = 0 everywhere: almost the clean image", (2, 1, 4, 4), 1000, "linear", [0, 0], torch.float32, 2),
            ("t = T - 1 everywhere: almost pure noise (cosine schedule, T = 50)", (3, 2, 5, 5), 50, "cosine",
             [49, 49, 49], torch.float32, 3),
            ("a batch of one (1, 3, 2, 6), t = 500", (1, 3, 2, 6), 1000, "linear", [500], torch.float32, 4),
            ("one t per row, 0, T/2 and T - 1, each row its own (3, 2, 3, 3)", (3, 2, 3, 3), 20, "cosine",
             [0, 10, 19], torch.float32, 5),
            ("float64, T = 1000", (2, 3, 4, 4), 1000, "linear", [999, 1], torch.float64, 6)]:
        g = _gen(seed)
        x0, noise = _randn(g, *shape, dtype=dtype), _randn(g, *shape, dtype=dtype)
        abar = (_linear_abar if schedule == "linear" else _cosine_abar)(T, dtype)
        t = torch.randint(0, T, (shape[0],), generator=g) if t is None else torch.tensor(t)
        hint = ("row b of the batch has its own timestep t[b]: its coefficients multiply that row only"
                if len(set(t.tolist())) > 1 else "")
        out.append(Case(name, (x0, noise, t, abar), hint=hint))
    return out


def _add_noise_ref(x0, noise, t, alphas_cumprod):
    from utils.diffusion import NoiseSchedule
    schedule = NoiseSchedule(len(alphas_cumprod))
    schedule.alphas_cumprod = alphas_cumprod  # the case's ᾱ: linear or cosine, any T, float32 or float64
    return schedule.add_noise(x0, noise, t)


def _add_noise_formula(x0, noise, a):
    """a (B,) → a x0 + (1 - a) noise per row, the coefficients without their square roots."""
    a = a.view(-1, *[1] * (x0.dim() - 1))  # (B, 1, ...)
    return a * x0 + (1 - a) * noise


def _one_step_alphas(abar: Tensor) -> Tensor:
    return abar / torch.cat([abar.new_ones(1), abar[:-1]])  # (T,) α_t = ᾱ_t / ᾱ_{t-1}


_register(Exercise(
    "12.1", "noising in one jump",
    "my_add_noise(x0, noise, t, alphas_cumprod) -> (B, C_in, height, width) x_t",
    _add_noise_cases, _add_noise_ref, outputs=("x_t",),
    mistakes=[Mistake("the coefficients are square roots: x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε (the variances "
                      "ᾱ_t and 1 - ᾱ_t add up to 1, not the coefficients).",
                      lambda x0, n, t, ab: _add_noise_formula(x0, n, ab[t])),
              Mistake("this uses one step's α_t = 1 - β_t; jumping from x0 to x_t in one go takes the product "
                      "ᾱ_t = α_1 ⋯ α_t, which is alphas_cumprod[t] as given.",
                      lambda x0, n, t, ab: _add_noise_ref(x0, n, t, _one_step_alphas(ab))),
              Mistake("alphas_cumprod is already the cumulative product: index it, do not take cumprod again.",
                      lambda x0, n, t, ab: _add_noise_ref(x0, n, t, torch.cumprod(ab, 0))),
              Mistake("the per-image coefficients (B,) are multiplied along the last axis (the width): reshape "
                      "them to (B, 1, 1, 1) so that image b gets its own t[b].",
                      lambda x0, n, t, ab: ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * n)]))


def _nearest_cases() -> list[Case]:
    out = []
    for name, z_shape, K, dtype, seed in [("8 vectors of 4 numbers, 16 codes", (8, 4), 16, torch.float32, 1),
                                          ("a grid of codes (2, 3, 3, 4) per image, 10 codes", (2, 3, 3, 4), 10,
                                           torch.float32, 2),
                                          ("a codebook of one code (K = 1)", (5, 3), 1, torch.float32, 3),
                                          ("float64, (2, 4, 4, 6), 32 codes", (2, 4, 4, 6), 32, torch.float64, 4)]:
        g = _gen(seed)
        z = _randn(g, *z_shape, dtype=dtype)
        lengths = torch.rand(K, 1, generator=g, dtype=torch.float64).to(dtype) * 2 + 0.3  # codes of unequal length
        codebook = _randn(g, K, z_shape[-1], dtype=dtype) * lengths  # (K, D)
        out.append(Case(name, (z, codebook)))
    g = _gen(5)
    z = _randn(g, 6, 3).abs()  # (6, 3) all in the positive octant
    codebook = torch.cat([_randn(g, 4, 3, scale=0.5).abs(), torch.full((1, 3), 40.0)])  # (5, 3) the last far away
    out.append(Case("a code far away, in the direction of every vector", (z, codebook),
                    hint="the nearest code is the one at the smallest distance ||z - e_k||², wherever the others "
                         "point"))
    return out


def _nearest_ref(z, codebook):
    from utils.vq import VectorQuantizer
    K, D = codebook.shape
    quantizer = VectorQuantizer(K, D).to(codebook.dtype)
    with torch.no_grad():
        quantizer.embedding.weight.copy_(codebook)
        return quantizer.nearest(z)


_register(Exercise(
    "12.2", "the nearest code",
    "my_nearest_codes(z, codebook) -> (...,) int64 code indices",
    _nearest_cases, _nearest_ref, outputs=("the codes",),
    mistakes=[Mistake("the largest dot product z · e_k picks the nearest code only when every code has the same "
                      "length: take the smallest squared distance ||z - e_k||² = ||z||² - 2 z · e_k + ||e_k||².",
                      lambda z, e: (z @ e.T).argmax(-1)),
              Mistake("the squared differences are summed over the codes: sum them over the D features (the last "
                      "axis) to get one distance per code, then take the argmin over the K codes.",
                      lambda z, e: (z[..., None, :] - e).pow(2).sum(-2).argmin(-1))]))
