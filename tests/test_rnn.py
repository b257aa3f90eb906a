"""utils.rnn: from-scratch RNN/LSTM/GRU equal torch.nn's with the same (scrambled) weights."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from utils import rnn as R
from weights import scramble_

KINDS = {"rnn": (R.RNN, nn.RNN), "lstm": (R.LSTM, nn.LSTM), "gru": (R.GRU, nn.GRU)}
CELLS = {"rnn": (R.RNNCell, nn.RNNCell), "lstm": (R.LSTMCell, nn.LSTMCell), "gru": (R.GRUCell, nn.GRUCell)}
TOL = {torch.float64: dict(atol=1e-10, rtol=0), torch.float32: dict(atol=1e-5, rtol=1e-5)}
C, H = 5, 7




def pair(kind: str, dtype, num_layers=2, batch_first=False, **kw):
    """(ours, reference) with identical scrambled weights, loaded with strict=True."""
    ours_cls, ref_cls = KINDS[kind]
    ref = scramble_(ref_cls(C, H, num_layers=num_layers, batch_first=batch_first, **kw).to(dtype), seed=1)
    ours = ours_cls(C, H, num_layers=num_layers, batch_first=batch_first, **kw).to(dtype)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def _states(kind, out):
    """(output, [final state tensors]) of a forward result."""
    output, final = out[0], out[1]
    return output, list(final) if kind == "lstm" else [final]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", list(KINDS))
def test_layers_equal_torch_outputs_states_and_gradients(kind, batch_first, dtype):
    ours, ref = pair(kind, dtype, num_layers=3, batch_first=batch_first)
    T, B, L = 6, 4, 3
    g = torch.Generator().manual_seed(2)
    x = torch.randn((B, T, C) if batch_first else (T, B, C), generator=g, dtype=dtype)
    h0 = torch.randn(L, B, H, generator=g, dtype=dtype)
    c0 = torch.randn(L, B, H, generator=g, dtype=dtype)
    w_out = torch.randn(x.shape[:2] + (H,), generator=g, dtype=dtype)  # a loss touching every output
    w_fin = torch.randn(L, B, H, generator=g, dtype=dtype)

    results = []
    for module in (ours, ref):
        inputs = [t.clone().requires_grad_() for t in (x, h0, c0)]
        xi, hi, ci = inputs
        out = module(xi, (hi, ci) if kind == "lstm" else hi)
        output, finals = _states(kind, out)
        loss = (output * w_out).sum() + sum(((f * w_fin) ** 2).sum() for f in finals)
        used = inputs if kind == "lstm" else inputs[:2]
        grads = torch.autograd.grad(loss, used + list(module.parameters()))
        results.append((output, finals, grads))

    (o1, f1, g1), (o2, f2, g2) = results
    tol = TOL[dtype]
    assert o1.shape == o2.shape == x.shape[:2] + (H,)
    torch.testing.assert_close(o1, o2, **tol)
    for a, b in zip(f1, f2, strict=True):
        assert a.shape == (L, B, H)
        torch.testing.assert_close(a, b, **tol)
    assert len(g1) == len(g2)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("kind", list(KINDS))
def test_state_dict_round_trip_both_ways(kind):
    ours_cls, ref_cls = KINDS[kind]
    ref = ref_cls(C, H, num_layers=2)
    ours = ours_cls(C, H, num_layers=2)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert {n: p.shape for n, p in ours.named_parameters()} == {n: p.shape for n, p in ref.named_parameters()}
    scramble_(ours, seed=3)
    ref.load_state_dict(ours.state_dict(), strict=True)  # ours → torch
    x = torch.randn(3, 2, C)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], **TOL[torch.float32])


@pytest.mark.parametrize("kind", list(KINDS))
def test_no_bias_and_unbatched_defaults(kind):
    ours, ref = pair(kind, torch.float64, num_layers=2, bias=False)
    assert not any("bias" in n for n in ours.state_dict())
    x = torch.randn(4, 3, C, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], **TOL[torch.float64])  # zero initial state


def test_relu_rnn_equals_torch():
    ours, ref = pair("rnn", torch.float64, num_layers=2, nonlinearity="relu")
    x = torch.randn(5, 3, C, dtype=torch.float64)
    (o1, h1), (o2, h2) = ours(x), ref(x)
    torch.testing.assert_close(o1, o2, **TOL[torch.float64])
    torch.testing.assert_close(h1, h2, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", list(CELLS))
def test_cells_equal_torch(kind, dtype):
    ours_cls, ref_cls = CELLS[kind]
    ref = scramble_(ref_cls(C, H).to(dtype), seed=4)
    ours = ours_cls(C, H).to(dtype)
    ours.load_state_dict(ref.state_dict(), strict=True)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, C, generator=g, dtype=dtype)
    h = torch.randn(3, H, generator=g, dtype=dtype)
    c = torch.randn(3, H, generator=g, dtype=dtype)
    state = (h, c) if kind == "lstm" else h
    for hx in (None, state):
        a, b = ours(x, hx), ref(x, hx)
        a, b = (a, b) if kind == "lstm" else ((a,), (b,))
        for u, v in zip(a, b, strict=True):
            torch.testing.assert_close(u, v, **TOL[dtype])
    # gradients through the cell
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out1, out2 = ours(x1, state), ref(x2, state)
    s1 = sum(o.sin().sum() for o in (out1 if kind == "lstm" else (out1,)))
    s2 = sum(o.sin().sum() for o in (out2 if kind == "lstm" else (out2,)))
    g1 = torch.autograd.grad(s1, [x1, *ours.parameters()])
    g2 = torch.autograd.grad(s2, [x2, *ref.parameters()])
    for u, v in zip(g1, g2, strict=True):
        torch.testing.assert_close(u, v, **TOL[dtype])


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_parameter_gets_a_gradient(kind):
    ours = scramble_(KINDS[kind][0](C, H, num_layers=2), seed=6)
    out = ours(torch.randn(4, 3, C))
    (out[0].sum() + (out[1][1] if kind == "lstm" else out[1]).sum()).backward()
    for name, p in ours.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"


@pytest.mark.parametrize("kind", list(KINDS))
def test_dropout_between_layers_only_in_training(kind):
    ours, ref = pair(kind, torch.float64, num_layers=3, dropout=0.5)
    x = torch.randn(5, 3, C, dtype=torch.float64)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x)[0], ref(x)[0], **TOL[torch.float64])
    ours.train(), ref.train()
    torch.manual_seed(0)
    dropped = ours(x)[0]
    assert not torch.allclose(dropped, ours.eval()(x)[0]), "dropout had no effect in training mode"
    # On CPU torch drops the same units with the same random calls: equal even in training mode.
    torch.manual_seed(0)
    torch.testing.assert_close(dropped, ref(x)[0], **TOL[torch.float64])
    one = KINDS[kind][0](C, H, num_layers=1, dropout=0.5).double().train()  # no layer above: no dropout
    torch.testing.assert_close(one(x)[0], one.eval()(x)[0])


@pytest.mark.parametrize("batch_first", [False, True])
def test_lstm_gates_are_consistent(batch_first):
    ours, _ = pair("lstm", torch.float64, num_layers=2, batch_first=batch_first)
    T, B = 6, 3
    x = torch.randn((B, T, C) if batch_first else (T, B, C), dtype=torch.float64)
    output, (h_n, c_n), gates = ours(x, return_gates=True)
    assert set(gates) == {"i", "f", "g", "o", "c"}
    for g in gates.values():
        assert g.shape == output.shape
    for name in "ifo":
        assert ((gates[name] > 0) & (gates[name] < 1)).all()
    torch.testing.assert_close(gates["o"] * torch.tanh(gates["c"]), output)  # h_t = o_t ⊙ tanh(c_t)
    last = (slice(None), -1) if batch_first else (-1,)
    torch.testing.assert_close(gates["c"][last], c_n[-1])
    first = (slice(None), 0) if batch_first else (0,)
    torch.testing.assert_close(gates["c"][first], (gates["i"] * gates["g"])[first])  # c_0 = 0
    out2, _ = ours(x)
    torch.testing.assert_close(out2, output)
    assert not hasattr(ours, "gates") and not hasattr(ours, "last_gates")  # returned, never stashed


def test_gru_gates_are_consistent():
    ours, _ = pair("gru", torch.float64, num_layers=1)
    x = torch.randn(5, 2, C, dtype=torch.float64)
    output, h_n, gates = ours(x, return_gates=True)
    assert set(gates) == {"r", "z", "n"}
    h_prev = torch.cat([torch.zeros_like(output[:1]), output[:-1]])
    torch.testing.assert_close((1 - gates["z"]) * gates["n"] + gates["z"] * h_prev, output)


def test_make_rnn_fused_and_ours_share_layout():
    for kind in R.RNN_KINDS:
        fused = R.make_rnn(kind, C, H, 2, fused=True, batch_first=True)
        ours = R.make_rnn(kind, C, H, 2, fused=False, batch_first=True)
        assert type(fused) is KINDS[kind][1] and type(ours) is KINDS[kind][0]
        ours.load_state_dict(fused.state_dict(), strict=True)
    with pytest.raises(ValueError, match="kind must be one of"):
        R.make_rnn("transformer", C, H)


# ---------------------------------------------------------------------------------------------- BPTT

def test_hidden_grad_norms_match_independent_unroll():
    """The helper's ‖∂L/∂h_t‖ equals one computed by stepping torch's nn.RNN one step at a time."""
    ref = scramble_(nn.RNN(C, H).double(), seed=7)
    x = torch.randn(8, 3, C, dtype=torch.float64)
    loss_fn = lambda out: (out[-1] ** 2).sum()  # noqa: E731
    norms = R.hidden_grad_norms(ref, x, loss_fn=loss_fn)
    h, hs = None, []
    for t in range(x.shape[0]):
        _, h = ref(x[t:t + 1], h)  # (1, B, H)
        hs.append(h)
    grads = torch.autograd.grad((hs[-1][0] ** 2).sum(), hs)
    expected = torch.stack([g.norm() for g in grads])
    assert norms.shape == (8,)
    torch.testing.assert_close(norms, expected, atol=1e-10, rtol=0)
    assert all(p.grad is None for p in ref.parameters())  # parameter gradients untouched


def test_hidden_grad_norms_vanish_and_explode_with_recurrent_scale():
    torch.manual_seed(0)
    T = 20
    x = 1e-6 * torch.randn(T, 1, C, dtype=torch.float64)  # tiny inputs: tanh stays in its linear range
    q = torch.linalg.qr(torch.randn(H, H, dtype=torch.float64))[0]  # orthogonal: all singular values 1
    norms = {}
    for scale in (0.5, 1.5):
        rnn = R.RNN(C, H).double()
        with torch.no_grad():
            rnn.weight_hh_l0.copy_(scale * q)
            rnn.bias_ih_l0.zero_(), rnn.bias_hh_l0.zero_()  # h stays near 0, tanh stays near linear
        norms[scale] = R.hidden_grad_norms(rnn, x)
    assert norms[0.5][0] < 1e-5 * norms[0.5][-1]  # ≈ 0.5^19: vanishing
    assert norms[1.5][0] > 1e3 * norms[1.5][-1]  # ≈ 1.5^19: exploding
    assert (norms[0.5][1:] > norms[0.5][:-1]).all() and (norms[1.5][1:] < norms[1.5][:-1]).all()
    torch.testing.assert_close(norms[0.5][-1], torch.tensor(math.sqrt(H), dtype=torch.float64))  # ∂Σh_T/∂h_T = 1


def test_hidden_grad_norms_batch_first_and_lstm():
    lstm = nn.LSTM(C, H, batch_first=True)
    norms = R.hidden_grad_norms(lstm, torch.randn(2, 5, C))
    assert norms.shape == (5,) and (norms > 0).all()
    with pytest.raises(TypeError, match="expected an RNN, LSTM or GRU"):
        R.hidden_grad_norms(nn.Linear(C, H), torch.randn(5, 2, C))


# ---------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_input_raises_clear_errors(kind):
    m = KINDS[kind][0](C, H, num_layers=2)
    with pytest.raises(ValueError, match=r"input size mismatch, expected C=5 .* got 4"):
        m(torch.randn(3, 2, 4))
    with pytest.raises(ValueError, match=r"empty batch \(B=0\)"):
        m(torch.randn(3, 0, C))
    with pytest.raises(ValueError, match=r"sequence length 0 \(T=0\)"):
        m(torch.randn(0, 2, C))
    with pytest.raises(ValueError, match=r"expects a 3-D input \(T, B, C\)"):
        m(torch.randn(3, C))
    with pytest.raises(TypeError, match="floating-point input.*embedding"):
        m(torch.zeros(3, 2, C, dtype=torch.long))
    bad_h = torch.zeros(1, 2, H)
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 2, 7\), got \(1, 2, 7\)"):
        m(torch.randn(3, 2, C), (bad_h, bad_h) if kind == "lstm" else bad_h)
    bf = KINDS[kind][0](C, H, batch_first=True)
    with pytest.raises(ValueError, match=r"sequence length 0 \(T=0\).*\(B, T, C\)"):
        bf(torch.randn(2, 0, C))


def test_bad_constructor_and_cell_input():
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        R.RNN(C, H, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        R.LSTM(C, 0)
    with pytest.raises(ValueError, match="dropout must be in"):
        R.GRU(C, H, dropout=1.0)
    cell = R.LSTMCell(C, H)
    with pytest.raises(ValueError, match=r"input size mismatch, expected C=5"):
        cell(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"expects input of shape \(B, C\)"):
        cell(torch.randn(4, 2, C))
    with pytest.raises(ValueError, match=r"empty batch"):
        cell(torch.randn(0, C))


# ---------------------------------------------------------------------------------------------- char LM

def _lm(kind="lstm", fused=True, V=11):
    torch.manual_seed(0)
    return R.CharRNN(R.CharRNNConfig(vocab_size=V, kind=kind, embed_dim=6, hidden_size=8, num_layers=2,
                                     fused=fused))


@pytest.mark.parametrize("kind", R.RNN_KINDS)
def test_char_rnn_fused_equals_ours(kind):
    fused, ours = _lm(kind, True).double(), _lm(kind, False).double()
    ours.load_state_dict(fused.state_dict(), strict=True)
    idx = torch.randint(0, 11, (3, 9))
    (l1, s1), (l2, s2) = fused(idx), ours(idx)
    assert l1.shape == (3, 9, 11)
    torch.testing.assert_close(l1, l2, atol=1e-10, rtol=0)
    # carrying state across calls equals one long call
    la, sa = ours(idx[:, :4])
    lb, _ = ours(idx[:, 4:], sa)
    torch.testing.assert_close(torch.cat([la, lb], 1), l2, atol=1e-10, rtol=0)


def test_char_rnn_loss_and_gates():
    m = _lm("lstm")
    idx = torch.randint(0, 11, (2, 7))
    loss = m.loss(idx, torch.roll(idx, -1, 1))
    assert 0 < loss.item() < 2 * math.log(11)
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())
    gates = m.gate_activations(idx[0])
    assert set(gates) == {"i", "f", "g", "o", "c", "h"} and gates["f"].shape == (7, 8)
    logits, _ = m(idx[:1])
    torch.testing.assert_close(m.head(gates["h"]), logits[0])  # the gates come from the same weights
    with pytest.raises(ValueError, match="no gates"):
        _lm("rnn").gate_activations(idx)
    with pytest.raises(ValueError, match=r"character id 11 is outside the vocabulary \[0, 11\)"):
        m(torch.tensor([[1, 11]]))
    with pytest.raises(ValueError, match=r"empty input"):
        m(torch.zeros(1, 0, dtype=torch.long))


def test_sample_is_seeded_and_respects_top_k_and_temperature():
    m = _lm()
    prompt = torch.tensor([1, 2, 3])
    a = R.sample(m, prompt, 20, temperature=0.8, generator=torch.Generator().manual_seed(0))
    b = R.sample(m, prompt, 20, temperature=0.8, generator=torch.Generator().manual_seed(0))
    c = R.sample(m, prompt, 20, temperature=0.8, generator=torch.Generator().manual_seed(1))
    assert a.shape == (23,) and torch.equal(a[:3], prompt) and torch.equal(a, b) and not torch.equal(a, c)
    greedy = R.sample(m, prompt, 10, temperature=0)
    top1 = R.sample(m, prompt, 10, top_k=1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(greedy, top1)
    logits, _ = m(greedy[None, :-1])
    assert torch.equal(logits[0, 2:].argmax(-1), greedy[3:])  # each greedy char is the argmax
    # top-k: over many draws, exactly the k most likely next characters appear
    many = R.sample(m, prompt.repeat(400, 1), 1, temperature=2.0, top_k=3,
                    generator=torch.Generator().manual_seed(0))[:, -1]
    top3 = set(logits[0, 2].topk(3).indices.tolist())  # logits after the prompt
    assert set(many.tolist()) == top3
    batch = R.sample(m, torch.tensor([[1], [2]]), 5, generator=torch.Generator().manual_seed(0))
    assert batch.shape == (2, 6)
    with pytest.raises(ValueError, match="prompt is empty"):
        R.sample(m, torch.tensor([], dtype=torch.long), 5)
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 11\]"):
        R.sample(m, prompt, 5, top_k=12)


def test_lm_batches_and_evaluation():
    data = torch.arange(100) % 11
    x, y = R.random_lm_batch(data, 4, 8, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8) and torch.equal((x + 1) % 11, y)
    m = _lm()
    loss = R.evaluate_lm(m, data, block_size=8, batch_size=5)
    manual = sum(m.loss(data[s:s + 8][None], data[s + 1:s + 9][None]).item() for s in range(0, 96, 8)) / 12
    assert loss == pytest.approx(manual, rel=1e-5)
    with pytest.raises(ValueError, match="too short"):
        R.evaluate_lm(m, data[:5], block_size=8)


def test_stateful_batches_continue_each_lane():
    data = torch.arange(103)  # ids = positions, so continuity is visible
    batches = R.StatefulBatches(data, batch_size=4, block_size=5)  # lanes of 25, 5 chunks per pass
    assert batches.chunks == 5
    x0, y0, fresh0 = batches(0)
    assert x0.shape == y0.shape == (4, 5) and fresh0 and torch.equal(y0, x0 + 1)
    assert torch.equal(x0[:, 0], torch.tensor([0, 25, 50, 75]))  # lane b starts at b · 25
    x1, _, fresh1 = batches(1)
    assert not fresh1 and torch.equal(x1[:, 0], x0[:, -1] + 1)  # row b of the next batch continues row b
    x5, _, fresh5 = batches(5)
    assert fresh5 and torch.equal(x5, x0)  # the second pass starts again
    with pytest.raises(ValueError, match="shorter than one block"):
        R.StatefulBatches(data[:10], batch_size=4, block_size=5)
    with pytest.raises(ValueError, match="1-D id tensor"):
        R.StatefulBatches(data[None], batch_size=4, block_size=5)


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_evaluate_lm_stateful_equals_one_pass(kind):
    torch.manual_seed(0)
    m = R.CharRNN(R.CharRNNConfig(11, kind=kind, embed_dim=8, hidden_size=16))
    data = torch.randint(11, (103,))
    loss = R.evaluate_lm_stateful(m, data, block_size=8)  # 12 windows of 8: tokens 0..95
    logits, _ = m(data[None, :96])
    whole = torch.nn.functional.cross_entropy(logits[0], data[1:97]).item()
    assert loss == pytest.approx(whole, rel=1e-5)
    assert loss != pytest.approx(R.evaluate_lm(m, data, block_size=8), rel=1e-4)  # zero states differ
    # 5 lanes: runs of 3, 3, 2, 2, 2 consecutive windows, each read from a zero state, every window once
    runs = [(0, 3), (3, 6), (6, 8), (8, 10), (10, 12)]
    by_run = sum(torch.nn.functional.cross_entropy(m(data[None, 8 * a:8 * b])[0][0], data[8 * a + 1:8 * b + 1],
                                                   reduction="sum").item() for a, b in runs) / 96
    assert R.evaluate_lm_stateful(m, data, block_size=8, lanes=5) == pytest.approx(by_run, rel=1e-5)
    assert R.evaluate_lm_stateful(m, data, block_size=8, lanes=12) == pytest.approx(
        R.evaluate_lm(m, data, block_size=8), rel=1e-5)  # one window per lane: every window from zero
    with pytest.raises(ValueError, match="lanes must be between 1 and the 12 windows"):
        R.evaluate_lm_stateful(m, data, block_size=8, lanes=13)
    assert R.detach_state(None) is None
    h = torch.ones(2, requires_grad=True) * 2
    assert not R.detach_state(h).requires_grad and all(not s.requires_grad for s in R.detach_state((h, h)))
    with pytest.raises(ValueError, match="too short"):
        R.evaluate_lm_stateful(m, data[:5], block_size=8)
