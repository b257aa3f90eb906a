"""utils.compress (chapter 11): pruning masks equal to torch.nn.utils.prune, structured pruning that keeps
the function of the kept neurons, Hinton's distillation loss, linear attention in both forms, KV-cache bytes,
and clear errors for bad input."""
from __future__ import annotations

import copy
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from utils.attention import MultiHeadAttention
from utils.compress import (GroupedQueryAttention, LinearAttention, causal_linear_attention, distillation_loss,
                            elu_feature_map, grouped_query_gpt_, head_ablation_scores, kv_cache_bytes,
                            linear_attention_gpt, linear_attention_recurrent, magnitude_mask, mlp_neuron_scores,
                            prune_mlp_neurons_, prune_unstructured_, sparsity, train_student)
from utils.gpt import GPT, GPTConfig, Recipe
from utils.quantize import quantize
from weights import rows_of_different_ranges, scramble_, tiny_gpt

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def w():
    return rows_of_different_ranges()


# ------------------------------------------------------------------------------------------ pruning

@pytest.mark.parametrize("amount", [0.0, 0.1, 0.5, 0.93])
def test_magnitude_mask_equals_torch_prune_and_has_the_requested_sparsity(w, amount):
    layer = nn.Linear(96, 48)
    layer.weight.data.copy_(w)
    prune.l1_unstructured(layer, "weight", amount=amount)
    mask = magnitude_mask(w, amount)
    assert torch.equal(mask, layer.weight_mask.bool())
    assert int((~mask).sum()) == round(amount * w.numel())
    assert w.abs()[~mask].max() <= w.abs()[mask].min() if amount else True  # the smallest went first


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, True, "half"])
def test_sparsity_outside_0_1_is_rejected(w, bad):
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        magnitude_mask(w, bad)
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        prune_unstructured_(tiny_gpt(), bad)


def test_magnitude_mask_removes_the_earlier_of_tied_weights_first():
    w = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0]] * 4)  # 20 equal |w|: torch's unstable CPU sort reorders these
    expected = torch.ones(4, 5, dtype=torch.bool)
    expected[0] = False  # the first 5 of the 20
    assert torch.equal(magnitude_mask(w, 0.25), expected)
    w.view(-1)[[3, 7, 12, 19]] = 0.5  # the four smallest, then the earliest two of the tied rest
    expected = torch.ones(20, dtype=torch.bool)
    expected[[0, 1, 3, 7, 12, 19]] = False
    assert torch.equal(magnitude_mask(w, 0.3), expected.view(4, 5))


def test_magnitude_mask_is_made_on_the_device_of_the_weight():
    mask = magnitude_mask(torch.empty(6, 8, device="meta"), 0.5)  # meta: the one other device every machine has
    assert mask.device.type == "meta" and mask.shape == (6, 8) and mask.dtype == torch.bool


def test_prune_unstructured_reaches_the_sparsity_in_the_blocks_only():
    model = prune_unstructured_(tiny_gpt(), 0.5)
    assert sparsity(model) == pytest.approx(0.5, abs=1e-3)
    assert bool((model.transformer.wte.weight != 0).all())  # the embeddings are left alone


def test_sparsity_is_the_share_of_exact_zeros_in_the_block_weights():
    model = tiny_gpt()
    assert sparsity(model) == 0  # random weights; the zero biases are not counted
    with torch.no_grad():
        model.transformer.h[0].attn.in_proj.weight[0, :10] = 0
        model.transformer.h[1].mlp.c_proj.weight[3, :7] = 0
        model.transformer.h[1].mlp.c_proj.weight[4, 0] = 1e-30  # tiny is not zero
        model.transformer.wte.weight[:5] = 0  # the embeddings are not counted
        model.transformer.wpe.weight[:5] = 0
    # per block: in_proj 48 x 16, out_proj 16 x 16, c_fc 64 x 16, c_proj 16 x 64
    assert sparsity(model) == 17 / (2 * (48 * 16 + 16 * 16 + 64 * 16 + 16 * 64))
    # every block matrix has a multiple of 4 entries, so pruning a quarter of each is exactly a quarter
    assert sparsity(prune_unstructured_(tiny_gpt(), 0.25)) == 0.25


def test_structured_pruning_shrinks_the_mlp_and_keeps_the_kept_neurons():
    model = tiny_gpt()
    x = torch.randint(11, (3, 16))
    scores = mlp_neuron_scores(model, [x])
    assert [s.shape for s in scores] == [(64,), (64,)] and all(bool((s >= 0).all()) for s in scores)
    # removing zero neurons changes nothing
    same = prune_mlp_neurons_(copy.deepcopy(model), scores, 0.0)
    torch.testing.assert_close(same(x), model(x))
    # removing neurons whose output columns are zero changes nothing either, and they are the ones removed
    with torch.no_grad():
        for b in model.transformer.h:
            b.mlp.c_proj.weight[:, :16] = 0
    scores = mlp_neuron_scores(model, [x])
    assert all(bool((s[:16] == 0).all()) for s in scores)
    pruned = prune_mlp_neurons_(copy.deepcopy(model), scores, 0.25)
    assert pruned.transformer.h[0].mlp.c_fc.weight.shape == (48, 16)
    assert pruned.transformer.h[0].mlp.c_proj.weight.shape == (16, 48)
    torch.testing.assert_close(pruned(x), model(x))
    with pytest.raises(ValueError, match="one score tensor per block"):
        prune_mlp_neurons_(model, scores[:1], 0.25)


def test_head_ablation_scores_see_a_dead_head():
    model = tiny_gpt()
    with torch.no_grad():
        model.transformer.h[1].attn.out_proj.weight[:, 8:] = 0  # head 1 of layer 1 writes nothing
    batches = [(torch.randint(11, (2, 16)), torch.randint(11, (2, 16)))]
    s = head_ablation_scores(model, batches)
    assert s.shape == (2, 2) and s[1, 1] == 0 and bool((s.abs() > 0).sum() >= 2)
    assert torch.equal(model.transformer.h[1].attn.out_proj.weight[:, 8:], torch.zeros(16, 8))  # restored


def _mlp_scores_by_hand(model, batches):
    """mean over every token of |h_i| (h = c_proj's input, the activations) times ||c_proj.weight[:, i]||."""
    seen = {k: [] for k in range(len(model.transformer.h))}
    hooks = [b.mlp.c_proj.register_forward_pre_hook(lambda m, inp, k=k: seen[k].append(inp[0].reshape(-1, inp[0].shape[-1])))
             for k, b in enumerate(model.transformer.h)]
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in hooks:
        h.remove()
    return [torch.cat(seen[k]).abs().mean(0) * b.mlp.c_proj.weight.norm(dim=0) for k, b in enumerate(model.transformer.h)]


def test_mlp_neuron_scores_average_over_every_token_of_every_batch():
    model = tiny_gpt().to(torch.float64).train()
    batches = [torch.randint(11, (2, 5)), torch.randint(11, (3, 7))]  # 10 and 21 tokens: a mean over 31
    got = mlp_neuron_scores(model, batches)
    assert model.training  # its mode comes back
    model.eval()
    want = _mlp_scores_by_hand(model, batches)
    for g, w_ in zip(got, want):
        torch.testing.assert_close(g.double(), w_, rtol=1e-5, atol=0)


def test_mlp_neuron_scores_are_made_on_the_model_device(monkeypatch):
    # on the meta device (shapes, no data) a sum started on the CPU cannot take the model's activations
    monkeypatch.setattr(GPT, "_check_ids", lambda self, idx: None)  # the id range check reads values
    model = tiny_gpt().to("meta")
    scores = mlp_neuron_scores(model, [torch.randint(11, (2, 5)).to("meta")])
    assert [(s.device.type, tuple(s.shape)) for s in scores] == [("meta", (64,)), ("meta", (64,))]


@pytest.mark.parametrize("bias", [True, False])
def test_pruned_mlp_computes_what_the_kept_neurons_computed_in_the_model_dtype(bias):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=bias)).double().eval()
    scramble_(model, 1)
    x = torch.randint(11, (3, 16))
    scores = [torch.randperm(64).double() for _ in range(2)]  # any order: the 16 lowest go
    reference = copy.deepcopy(model)  # the dropped neurons silenced instead of removed
    with torch.no_grad():
        for b, s in zip(reference.transformer.h, scores):
            b.mlp.c_proj.weight[:, s.argsort()[:16]] = 0
    pruned = prune_mlp_neurons_(copy.deepcopy(model), scores, 0.25)
    for b in pruned.transformer.h:
        for layer in (b.mlp.c_fc, b.mlp.c_proj):
            assert layer.weight.dtype == torch.float64
            assert (layer.bias is not None) == bias and (layer.bias is None or layer.bias.dtype == torch.float64)
    torch.testing.assert_close(pruned(x), reference(x), rtol=1e-12, atol=1e-12)


def test_head_ablation_scores_equal_the_loss_increase_written_out():
    model = tiny_gpt()
    scramble_(model, 1)
    batches = [(torch.randint(11, (2, 16)), torch.randint(11, (2, 16))), (torch.randint(11, (1, 9)), torch.randint(11, (1, 9)))]

    def mean_loss(m):
        with torch.no_grad():
            return sum(float(m(x, y)[1]) for x, y in batches) / 2

    base = mean_loss(model)
    want = torch.zeros(2, 2)
    for l in range(2):
        for h in range(2):
            ablated = copy.deepcopy(model)
            with torch.no_grad():
                ablated.transformer.h[l].attn.out_proj.weight[:, 8 * h:8 * (h + 1)] = 0  # head h's 8 input columns
            want[l, h] = mean_loss(ablated) - base
    before = copy.deepcopy(model.state_dict())
    got = head_ablation_scores(model, batches)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # every head is back


# ------------------------------------------------------------------------------------------ distillation

def test_distillation_loss_equals_the_formula():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 5, 7, generator=g, dtype=torch.float64), torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    y = torch.randint(7, (2, 5), generator=g)
    for T, alpha in ((1.0, 0.5), (3.0, 0.2), (0.5, 1.0)):
        p = torch.softmax(t / T, -1)
        kl = (p * (p.log() - torch.log_softmax(s / T, -1))).sum(-1).mean()
        expected = alpha * T**2 * kl + (1 - alpha) * F.cross_entropy(s.flatten(0, 1), y.flatten())
        torch.testing.assert_close(distillation_loss(s, t, y, T, alpha), expected, rtol=1e-12, atol=1e-12)


def test_distillation_loss_is_zero_for_the_teacher_and_t_scaled():
    g = torch.Generator().manual_seed(2)
    t = torch.randn(4, 9, dtype=torch.float64, generator=g)
    s = torch.randn(4, 9, dtype=torch.float64, generator=g)
    y = torch.randint(9, (4,), generator=g)
    assert distillation_loss(t, t, None, 2.0, 1.0) == 0
    torch.testing.assert_close(distillation_loss(t, t, y, 2.0, 0.3), 0.7 * F.cross_entropy(t, y))  # only the hard part
    assert distillation_loss(s, t, None, 4.0, 1.0) == pytest.approx(
        16 * F.kl_div(torch.log_softmax(s / 4, -1), torch.log_softmax(t / 4, -1), log_target=True,
                      reduction="batchmean").item(), rel=1e-12)
    # high temperature: T² KL tends to half the mean squared difference of the centred logits (Hinton et al. 2.1)
    d = (t - t.mean(-1, keepdim=True)) - (s - s.mean(-1, keepdim=True))
    assert distillation_loss(s, t, None, 1000.0, 1.0).item() == pytest.approx(0.5 * (d**2).mean().item(), rel=1e-2)


def test_distillation_gradient_reaches_the_student_only():
    s = torch.randn(3, 6, requires_grad=True)
    t = torch.randn(3, 6, requires_grad=True)
    distillation_loss(s, t, torch.randint(6, (3,)), 2.0, 0.5).backward()
    assert s.grad is not None and t.grad is None


def test_distillation_loss_defaults_are_t_2_and_alpha_one_half():
    g = torch.Generator().manual_seed(3)
    s, t = (torch.randn(4, 7, generator=g, dtype=torch.float64) for _ in range(2))
    y = torch.randint(7, (4,), generator=g)
    p = torch.softmax(t / 2, -1)
    kl = (p * (p.log() - torch.log_softmax(s / 2, -1))).sum(-1).mean()
    torch.testing.assert_close(distillation_loss(s, t, y), 0.5 * 4 * kl + 0.5 * F.cross_entropy(s, y), rtol=1e-12,
                               atol=1e-12)


def test_distillation_loss_of_low_precision_logits_is_computed_in_float32():
    g = torch.Generator().manual_seed(4)
    s, t = (torch.randn(2, 5, 9, generator=g).to(torch.bfloat16) for _ in range(2))
    s64, t64 = s.double(), t.double()
    p = torch.softmax(t64 / 3, -1)
    kl = (p * (p.log() - torch.log_softmax(s64 / 3, -1))).sum(-1).mean()
    loss = distillation_loss(s, t, None, 3.0, 1.0)
    assert loss.dtype == torch.float32  # not bfloat16: 8 bits of mantissa would make the KL noise
    assert loss.item() == pytest.approx(9 * kl.item(), rel=1e-5)


def test_distillation_loss_warns_nothing():
    s, t = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "implicit dimension choice for log_softmax"
        distillation_loss(s, t, torch.randint(6, (3,)), 2.0, 0.5)


def test_distillation_loss_bounds():
    g = torch.Generator().manual_seed(5)
    s, t = (torch.randn(3, 6, generator=g, dtype=torch.float64) for _ in range(2))
    y = torch.randint(6, (3,), generator=g)
    # alpha = 0: the hard loss alone; alpha = 1: the soft loss alone (targets not needed); T may be tiny
    torch.testing.assert_close(distillation_loss(s, t, y, 2.0, 0.0), F.cross_entropy(s, y), rtol=1e-12, atol=1e-12)
    assert distillation_loss(s, t, None, 2.0, 1.0) > 0
    assert math.isfinite(distillation_loss(s, t, y, 1e-3, 0.5).item())
    for T in (0.0, -1.0):
        with pytest.raises(ValueError, match=f"^temperature must be > 0, got {T}$"):
            distillation_loss(s, t, y, T, 0.5)
    for alpha in (-0.01, 1.01):
        with pytest.raises(ValueError,
                           match=rf"^alpha \(the weight of the soft loss\) must be in \[0, 1\], got {alpha}$"):
            distillation_loss(s, t, y, 2.0, alpha)
    with pytest.raises(ValueError, match=r"^student and teacher logits must have the same shape \(\.\.\., V\), got "
                                         r"\(3, 6\) and \(3, 7\)$"):
        distillation_loss(s, torch.randn(3, 7, dtype=torch.float64), y, 2.0, 0.5)
    for targets, got in ((None, "None"), (y[:2], "(2,)"), (y[:, None], "(3, 1)")):
        with pytest.raises(ValueError, match=r"^targets must have the logits' shape without V, \(3,\), got "
                                             + re.escape(got) + r" \(or pass alpha=1 for the soft loss alone\)$"):
            distillation_loss(s, t, targets, 2.0, 0.5)


@pytest.mark.parametrize("T", [0.0, -1.0])
def test_distillation_rejects_bad_input(T):
    s = torch.randn(3, 6)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        distillation_loss(s, s, None, T, 1.0)
    with pytest.raises(ValueError, match=r"alpha .* must be in \[0, 1\]"):
        distillation_loss(s, s, None, 2.0, 1.5)
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(s, torch.randn(3, 7), None, 2.0, 1.0)
    with pytest.raises(ValueError, match="targets must have"):
        distillation_loss(s, s, None, 2.0, 0.5)


def _student_setup(max_steps=10):
    recipe = Recipe(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, lr=3e-3, min_lr=3e-4, warmup=2,
                    max_steps=max_steps)
    ids = torch.randint(11, (2000,), generator=torch.Generator().manual_seed(0))
    return recipe, recipe.gpt_config(11), ids, [(ids[:16][None], ids[1:17][None])]


def test_train_student_is_reproducible_and_a_teacher_changes_what_it_learns():
    recipe, cfg, ids, val = _student_setup()
    a, ha = train_student(cfg, recipe, ids, val, steps=6, seed=3)
    b, hb = train_student(cfg, recipe, ids, val, steps=6, seed=3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)  # reproducible
    teacher = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=16))
    c, hc = train_student(cfg, recipe, ids, val, teacher=teacher, steps=6, seed=3)
    assert hc.steps == 6 and not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_train_student_defaults_and_objective():
    """Defaults: seed 0, recipe.max_steps steps, T = 2, alpha = 0.5; with a teacher the recorded val_loss is
    Hinton's loss (written out here) of the trained student on the val batch."""
    recipe, cfg, ids, val = _student_setup(max_steps=3)
    torch.manual_seed(1)
    teacher = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=16))
    a, ha = train_student(cfg, recipe, ids, val, teacher=teacher)
    assert ha.steps == 3
    b, _ = train_student(cfg, recipe, ids, val, teacher=teacher, temperature=2.0, alpha=0.5, steps=3, seed=0)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    (x, y), T, alpha = val[0], 2.0, 0.5
    with torch.no_grad():
        s, t = a.eval()(x).double(), teacher(x).double()
    p = torch.softmax(t / T, -1)
    kl = (p * (p.log() - torch.log_softmax(s / T, -1))).sum(-1).mean()
    expected = alpha * T**2 * kl + (1 - alpha) * F.cross_entropy(s.flatten(0, 1), y.flatten())
    assert ha.last_eval["val_loss"] == pytest.approx(expected.item(), rel=1e-5)


def _train_by_hand(cfg, recipe, ids, steps, seed, teacher=None, temperature=2.0, alpha=0.5):
    """train_student's recipe written out with torch's pieces: weights from torch.manual_seed(seed); AdamW with
    weight decay on the matrices only; lr warmed up linearly over recipe.warmup steps, then cosine-decayed to
    min_lr at the last step; the total gradient norm clipped to grad_clip; batch_size random windows per step
    drawn with a generator seeded with seed (nanoGPT's get_batch); the loss is the data's cross-entropy, or
    distillation_loss against the teacher."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": matrices, "weight_decay": recipe.weight_decay},
                             {"params": others, "weight_decay": 0.0}], lr=recipe.lr, betas=recipe.betas)
    gen = torch.Generator().manual_seed(seed)
    for s in range(steps):
        if s < recipe.warmup:
            lr = recipe.lr * (s + 1) / recipe.warmup
        else:
            progress = (s - recipe.warmup) / (steps - recipe.warmup)
            lr = recipe.min_lr + (recipe.lr - recipe.min_lr) * (1 + math.cos(math.pi * progress)) / 2
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(len(ids) - recipe.block_size, (recipe.batch_size,), generator=gen)
        window = ids[starts[:, None] + torch.arange(recipe.block_size + 1)]  # (B, T + 1)
        x, y = window[:, :-1], window[:, 1:]
        if teacher is None:
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        else:
            with torch.no_grad():
                t = teacher(x)
            loss = distillation_loss(model(x), t, y, temperature, alpha)
        opt.zero_grad()
        loss.backward()
        assert nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip) > recipe.grad_clip  # clipping acts
        opt.step()
    return model


@pytest.mark.parametrize("with_teacher", [False, True])
def test_train_student_equals_the_recipe_written_out(with_teacher):
    # every setting away from the defaults of adamw, warmup_cosine and train, so each one must be passed on
    recipe = Recipe(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, lr=3e-3, min_lr=1e-3, warmup=2,
                    max_steps=100, weight_decay=0.3, betas=(0.8, 0.95), grad_clip=0.05)
    _, _, ids, val = _student_setup()
    cfg = recipe.gpt_config(11)
    torch.manual_seed(1)
    kwargs = {}
    if with_teacher:
        teacher = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=16))
        kwargs = dict(teacher=teacher, temperature=3.0, alpha=0.25)
        before = copy.deepcopy(teacher.state_dict())
    model, history = train_student(cfg, recipe, ids, val, steps=6, seed=5, **kwargs)
    if with_teacher:  # frozen, in eval mode
        assert not teacher.training and all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    expected = _train_by_hand(cfg, recipe, ids, 6, 5, **kwargs)
    for (name, p), q in zip(model.named_parameters(), expected.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert history.steps == 6


def test_train_student_evaluates_five_times_logs_sixteen_times_and_prints_nothing(capfd):
    recipe, cfg, ids, val = _student_setup()
    _, history = train_student(cfg, recipe, ids, val, steps=32)
    assert [e.step for e in history.eval] == [0, 8, 16, 24, 32]  # before the first step, then every steps // 4
    assert all(set(e.metrics) == {"val_loss"} for e in history.eval)
    assert [r.step for r in history.train] == list(range(2, 33, 2))  # every steps // 16
    _, history = train_student(cfg, recipe, ids, val, steps=6)  # short runs: every step
    assert [e.step for e in history.eval] == list(range(7)) and [r.step for r in history.train] == list(range(1, 7))
    out, err = capfd.readouterr()
    assert out == err == ""  # no progress bar


class _Placed(Exception):
    """Raised by the student below as soon as train_student moves it: its device is all this test wants."""


def _student_device(**kwargs):
    recipe, cfg, ids, val = _student_setup()
    ids = kwargs.pop("ids", ids)
    seen = []

    def make_model(config):
        model = GPT(config)

        def to(*args, **kw):
            seen.append(args or kw)
            raise _Placed
        model.to = to
        return model

    with pytest.raises(_Placed):
        train_student(cfg, recipe, ids, val, make_model=make_model, **kwargs)
    return seen


def test_train_student_runs_on_the_teacher_device_else_the_data_device_unless_told():
    on_meta = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=16)).to("meta")
    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert _student_device() == [(cpu,)]  # the data's device
    assert _student_device(ids=torch.zeros(2000, dtype=torch.long, device="meta")) == [(meta,)]
    assert _student_device(teacher=on_meta) == [(meta,)]  # the teacher's, before the data's
    assert _student_device(teacher=on_meta, device="cpu") == [("cpu",)]  # unless told
    assert _student_device(device="meta") == [("meta",)]


# ------------------------------------------------------------------------------------------ attention

def _phi(x):
    """elu(x) + 1 written out: x + 1 for x > 0, exp(x) otherwise."""
    return torch.where(x > 0, x + 1, x.exp())


def _causal_linear_attention_by_hand(q, k, v):
    """Katharopoulos et al. (2020), eqs. (6)-(9): out_i = phi(q_i)^T S_i / phi(q_i)^T z_i with
    S_i = sum_{j <= i} phi(k_j) v_j^T and z_i = sum_{j <= i} phi(k_j), one (batch, head, position) at a time."""
    B, H, T, _ = q.shape
    out = torch.zeros(B, H, T, v.shape[-1], dtype=v.dtype)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                S = sum(torch.outer(_phi(k[b, h, j]), v[b, h, j]) for j in range(i + 1))  # (D, Dv)
                z = sum(_phi(k[b, h, j]) for j in range(i + 1))  # (D,)
                out[b, h, i] = _phi(q[b, h, i]) @ S / (_phi(q[b, h, i]) @ z)
    return out


def _qkv(B=2, H=3, T=5, D=4, Dv=3, seed=0):
    """Every batch element, head and position different; Dv != D."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, D, generator=g, dtype=torch.float64),
            torch.randn(B, H, T, D, generator=g, dtype=torch.float64),
            torch.randn(B, H, T, Dv, generator=g, dtype=torch.float64))


def test_elu_feature_map_is_elu_plus_one():
    x = torch.tensor([-30.0, -2.0, -0.5, 0.0, 0.5, 3.0], dtype=torch.float64)
    expected = torch.tensor([math.exp(-30), math.exp(-2), math.exp(-0.5), 1.0, 1.5, 4.0], dtype=torch.float64)
    torch.testing.assert_close(elu_feature_map(x), expected, rtol=1e-15, atol=1e-15)  # (exp(x) - 1) + 1: absolute


@pytest.mark.parametrize("fn", [causal_linear_attention, linear_attention_recurrent])
def test_linear_attention_equals_the_formula_written_out(fn):
    q, k, v = _qkv()
    before = [t.clone() for t in (q, k, v)]
    expected = _causal_linear_attention_by_hand(q, k, v)
    torch.testing.assert_close(fn(q, k, v, eps=0.0), expected, rtol=1e-12, atol=1e-12)
    # the default eps = 1e-6 only guards a zero denominator: phi(q_i) . z_i > 2 here, so it moves the output < 1e-6
    torch.testing.assert_close(fn(q, k, v), expected, rtol=1e-6, atol=0)
    for t, t0 in zip((q, k, v), before):
        assert torch.equal(t, t0)  # the inputs are left alone


@pytest.mark.parametrize("fn", [causal_linear_attention, linear_attention_recurrent])
def test_linear_attention_checks_the_shapes_of_q_k_v(fn):
    q, k, v = _qkv()
    assert fn(q, k, v).shape == (2, 3, 5, 3)  # v may have its own last dimension

    def message(*got):
        return "^" + re.escape(f"{fn.__name__}: q, k must be (B, H, T, D) of one shape and v (B, H, T, Dv), "
                               f"got {list(got)}") + "$"

    bad = [  # (q, k, v), what the message reports
        ((q[0], k[0], v[0]), ((3, 5, 4), (3, 5, 4), (3, 5, 3))),  # one shape, but 3-D
        ((q[None], k[None], v[None]), ((1, 2, 3, 5, 4), (1, 2, 3, 5, 4), (1, 2, 3, 5, 3))),  # 5-D
        ((q, k[..., :3], v), ((2, 3, 5, 4), (2, 3, 5, 3), (2, 3, 5, 3))),  # q and k differ
        ((q, k, v[:, :, :4]), ((2, 3, 5, 4), (2, 3, 5, 4), (2, 3, 4, 3))),  # v has another length
        ((q, k, v[:1]), ((2, 3, 5, 4), (2, 3, 5, 4), (1, 3, 5, 3))),  # ... or batch
        ((q.tolist(), k, v), ("list", (2, 3, 5, 4), (2, 3, 5, 3))),  # not tensors
        ((q, k.tolist(), v), ((2, 3, 5, 4), "list", (2, 3, 5, 3))),
        ((q, k, v.numpy()), ((2, 3, 5, 4), (2, 3, 5, 4), "ndarray")),
    ]
    for args, got in bad:
        with pytest.raises(ValueError, match=message(*got)):
            fn(*args)


def test_linear_attention_recurrent_equals_parallel():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8, generator=g, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(linear_attention_recurrent(q, k, v), causal_linear_attention(q, k, v), rtol=1e-10,
                               atol=1e-10)
    # causal: the output at t does not depend on later positions
    k2 = k.clone()
    k2[:, :, 10:] += 1
    torch.testing.assert_close(causal_linear_attention(q, k2, v)[:, :, :10], causal_linear_attention(q, k, v)[:, :, :10])
    with pytest.raises(ValueError, match=r"q, k must be \(B, H, T, D\)"):
        causal_linear_attention(q, k[..., :4], v)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_attention_gpt_shares_the_gpt_parameters_and_is_causal(bias):
    torch.manual_seed(0)
    ref = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=bias))
    torch.manual_seed(0)
    lin = linear_attention_gpt(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16,
                                         bias=bias)).eval()
    assert isinstance(lin.transformer.h[0].attn, LinearAttention)
    assert [n for n, _ in lin.named_parameters()] == [n for n, _ in ref.named_parameters()]  # no bias appears
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), lin.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert all(b.attn.bias is bias and (b.attn.in_proj.bias is not None) is bias for b in lin.transformer.h)
    x = torch.randint(11, (2, 16))
    x2 = x.clone()
    x2[:, 9:] = (x2[:, 9:] + 1) % 11
    torch.testing.assert_close(lin(x)[:, :9], lin(x2)[:, :9])
    _, attn = lin(x, return_attn=True)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 2, 16))
    with pytest.raises(ValueError, match="causal self-attention only"):
        lin.transformer.h[0].attn(torch.randn(1, 4, 16))


def test_linear_attention_layer_equals_the_formula_written_out():
    """LinearAttention = in_proj, heads split, the causal linear attention above, heads joined, out_proj; its
    attention weights are phi(q_i).phi(k_j) / sum_{j' <= i} phi(q_i).phi(k_j') for j <= i, 0 after."""
    C, H, B, T = 12, 3, 2, 5
    D = C // H
    attn = scramble_(LinearAttention(C, H).to(torch.float64), seed=1).eval()
    x = torch.randn(B, T, C, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x0 = x.clone()
    Wq, Wk, Wv = attn.in_proj.weight.split(C)
    bq, bk, bv = attn.in_proj.bias.split(C)
    q, k, v = ((x @ W.T + b).view(B, T, H, D).transpose(1, 2) for W, b in ((Wq, bq), (Wk, bk), (Wv, bv)))
    heads = _causal_linear_attention_by_hand(q, k, v)  # (B, H, T, D)
    expected = heads.transpose(1, 2).reshape(B, T, C) @ attn.out_proj.weight.T + attn.out_proj.bias
    weights = torch.zeros(B, H, T, T, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                s = torch.stack([_phi(q[b, h, i]) @ _phi(k[b, h, j]) for j in range(i + 1)])
                weights[b, h, i, :i + 1] = s / s.sum()
    out, a = attn(x, is_causal=True)
    assert a is None  # no weights unless asked for
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-8)  # the default eps = 1e-6 in the denominator
    out2, a2 = attn(x, x, x, is_causal=True, return_attn=True)  # key = value = query is self-attention too
    assert torch.equal(out2, out)
    torch.testing.assert_close(a2, weights, rtol=1e-12, atol=1e-12)
    assert torch.equal(x, x0)


@pytest.mark.parametrize("make", [lambda: LinearAttention(24, 4), lambda: GroupedQueryAttention(24, 4, 2)],
                         ids=["LinearAttention", "GroupedQueryAttention"])
def test_causal_self_attention_only(make):
    attn = make().to(torch.float64).eval()
    who = type(attn).__name__
    x = torch.randn(2, 5, 24, dtype=torch.float64)
    out = attn(x, is_causal=True)
    assert len(out) == 2 and out[0].shape == (2, 5, 24) and out[1] is None  # return_attn is off by default
    assert torch.equal(attn(x, x, x, is_causal=True)[0], out[0])  # key and value may be the query itself
    assert torch.equal(attn(x, key=x, is_causal=True)[0], out[0])
    assert torch.equal(attn(x, value=x, is_causal=True)[0], out[0])
    y = x.clone()  # equal, but another tensor: cross-attention
    for kwargs in (dict(key=y), dict(value=y), dict(key=y, value=y),
                   dict(key_padding_mask=torch.zeros(2, 5, dtype=torch.bool)),
                   dict(attn_mask=torch.ones(5, 5, dtype=torch.bool)), dict(is_causal=False)):
        with pytest.raises(ValueError, match=f"^{who} computes causal self-attention only: call it as attn"):
            attn(x, **{"is_causal": True, **kwargs})


def test_kv_cache_bytes_of_concrete_models_written_out():
    # GPT-2 small: 12 layers of 12 heads of 64, 1024 positions, a batch of 8, float32 (4 bytes): 576 MiB
    n = kv_cache_bytes(12, 12, 64, 1024, batch=8, bytes_per_number=4)
    assert n == 2 * 12 * 12 * 64 * 1024 * 8 * 4 == 576 * 2**20 and type(n) is int
    # Llama-2-70B: 80 layers, 64 query heads sharing 8 key/value heads of 128, 4096 positions, bf16: 1.25 GiB
    assert kv_cache_bytes(80, 64, 128, 4096, n_kv_head=8) == 2 * 80 * 8 * 128 * 4096 * 2 == 1.25 * 2**30
    # multi-query (one key/value head), every size different
    n = kv_cache_bytes(2, 4, 3, 5, batch=7, n_kv_head=1, bytes_per_number=1)
    assert n == 2 * 2 * 1 * 3 * 5 * 7 * 1 == 420 and type(n) is int
    assert kv_cache_bytes(1, 4, 1, 1, n_kv_head=None) == kv_cache_bytes(1, 4, 1, 1, n_kv_head=4) == 2 * 4 * 2
    assert kv_cache_bytes(1, 8, 1, 1, n_kv_head=8) == 2 * 8 * 2  # n_kv_head = n_head divides it


@pytest.mark.parametrize("name", ["n_layer", "n_head", "head_dim", "seq_len", "batch", "n_kv_head",
                                  "bytes_per_number"])
def test_kv_cache_bytes_wants_positive_ints(name):
    ones = dict(n_layer=1, n_head=1, head_dim=1, seq_len=1, batch=1, n_kv_head=1, bytes_per_number=1)
    assert kv_cache_bytes(**ones) == 2  # 1 is allowed
    for bad in (0, -1, True, 1.0, "1"):
        with pytest.raises(ValueError, match=f"^kv_cache_bytes: {name} must be a positive int, got "
                                             f"{re.escape(repr(bad))}$"):
            kv_cache_bytes(**{**ones, name: bad})


def test_kv_cache_bytes_and_bad_groups():
    assert kv_cache_bytes(32, 32, 128, 4096) == 2 * 32 * 32 * 128 * 4096 * 2  # Llama-2-7B shape, bf16: 2 GiB
    assert kv_cache_bytes(32, 32, 128, 4096) == 2 * 2**30
    assert kv_cache_bytes(32, 32, 128, 4096, n_kv_head=8) * 4 == kv_cache_bytes(32, 32, 128, 4096)
    with pytest.raises(ValueError, match="not a multiple of n_kv_head=5"):
        kv_cache_bytes(2, 8, 16, 10, n_kv_head=5)
    with pytest.raises(ValueError, match="seq_len must be a positive int"):
        kv_cache_bytes(2, 8, 16, 0)


# ------------------------------------------------------------------------------------------ the explorer

def explorer_views():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 32, generator=g)
    q = {(b, gran): dict(weights=quantize(w, b, 8 if gran == "group of 8" else "channel").dequantize(),
                         val_loss=2.0 + 1 / b, bytes=b / 32, sample=f"sample {b} {gran}")
         for b in (8, 4, 2) for gran in ("row", "group of 8")}
    del q[2, "row"]  # a combination not computed
    p = {s: dict(weights=w * magnitude_mask(w, s), val_loss=2.0 + s, bytes=1 - s, sample=f"pruned {s}")
         for s in (0.25, 0.5)}
    return w, q, p


def test_compression_explorer_switches_precomputed_pages_in_the_browser():
    import ipywidgets as widgets

    from utils import viz

    w, q, p = explorer_views()
    box = viz.compression_explorer(w, q, p, {"val_loss": 2.0, "sample": "ref"}, default_bits=4,
                                   default_granularity="group of 8", default_sparsity=0.5)
    mode, stack = box.children
    assert list(mode.options) == ["quantize", "prune"] and stack.selected_index == 0
    quant_box, prune_box = stack.children
    bits, gran, pages = quant_box.children
    assert [v for _, v in bits.options] == [8, 4, 2] and bits.value == 4 and gran.value == "group of 8"
    assert pages.selected_index == 1 and pages.children[1].selected_index == 1  # (4 bits, group of 8)
    shown = pages.children[1].children[1]
    assert "int4, scale per group of 8" in shown.children[0].value and "2.250" in shown.children[0].value
    assert shown.children[1].value[:4] == b"\x89PNG" and "sample 4 group of 8" in shown.children[2].value
    assert "was not computed" in pages.children[2].children[0].value  # (2 bits, row)
    links = {(l.source[0], l.target[0]) for l in box.links}
    assert (mode, stack) in links and (bits, pages) in links  # switched in the browser, without a kernel
    assert all(isinstance(l, widgets.widget_link.Link) for l in box.links)
    sp, sp_pages = prune_box.children
    assert sp.value == 0.5 and sp_pages.selected_index == 1
    assert "50% of weights pruned" in sp_pages.children[1].children[0].value


def test_compression_explorer_rejects_bad_input():
    from utils import viz

    w, q, p = explorer_views()
    ref = {"val_loss": 2.0, "sample": "ref"}
    with pytest.raises(ValueError, match="default_bits 3 is not among"):
        viz.compression_explorer(w, q, p, ref, default_bits=3)
    with pytest.raises(ValueError, match=r"lacks \['sample'\]"):
        viz.compression_explorer(w, {(8, "row"): {k: v for k, v in q[8, "row"].items() if k != "sample"}}, {}, ref,
                                 default_bits=8)
    with pytest.raises(ValueError, match="weights have shape"):
        viz.compression_explorer(w[:4], q, p, ref)
    with pytest.raises(ValueError, match=r"sparsities must be in \[0, 1\)"):
        viz.compression_explorer(w, q, {1.0: p[0.5]}, ref)


# ---------------------------------------------------------------------------------------------- GQA

def _mha(C=24, H=4, seed=0, dtype=torch.float64, bias=True, dropout=0.0):
    torch.manual_seed(seed)
    attn = MultiHeadAttention(C, H, dropout, bias).to(dtype)
    with torch.no_grad():  # scrambled: every weight and bias matters, every head different
        for p in attn.parameters():
            p.copy_(torch.randn_like(p) * 0.4)
    return attn.eval()


@pytest.mark.parametrize("n_kv, bias", [(1, True), (2, True), (4, True), (2, False)])
def test_gqa_equals_torch_sdpa_with_enable_gqa_on_mean_pooled_heads(n_kv, bias):
    """The reference: torch's own grouped-query attention (F.scaled_dot_product_attention(enable_gqa=True)),
    fed with key/value heads pooled as Ainslie et al. describe, the mean written out head by head."""
    C, H, B, T = 24, 4, 3, 7
    D, r = C // H, H // n_kv
    mha = _mha(C, H, bias=bias)
    before = copy.deepcopy(mha.state_dict())
    gqa = GroupedQueryAttention.from_mha(mha, n_kv).eval()
    assert all(torch.equal(v, before[k]) for k, v in mha.state_dict().items())  # the source layer is left alone
    assert gqa.bias is bias and all((m.bias is not None) is bias for m in (gqa.in_proj, gqa.out_proj))
    x = torch.randn(B, T, C, dtype=torch.float64)
    Wq, Wk, Wv = mha.in_proj.weight.split(C)
    bq, bk, bv = mha.in_proj.bias.split(C) if bias else torch.zeros(3, C, dtype=torch.float64)
    Wk_g = torch.cat([sum(Wk[(g * r + j) * D:(g * r + j + 1) * D] for j in range(r)) / r for g in range(n_kv)])
    Wv_g = torch.cat([sum(Wv[(g * r + j) * D:(g * r + j + 1) * D] for j in range(r)) / r for g in range(n_kv)])
    bk_g = torch.cat([sum(bk[(g * r + j) * D:(g * r + j + 1) * D] for j in range(r)) / r for g in range(n_kv)])
    bv_g = torch.cat([sum(bv[(g * r + j) * D:(g * r + j + 1) * D] for j in range(r)) / r for g in range(n_kv)])
    q = (x @ Wq.T + bq).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
    k = (x @ Wk_g.T + bk_g).view(B, T, n_kv, D).transpose(1, 2)  # (B, Hkv, T, D)
    v = (x @ Wv_g.T + bv_g).view(B, T, n_kv, D).transpose(1, 2)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # (B, H, T, D)
    ref = mha.out_proj(ref.transpose(1, 2).reshape(B, T, C))
    out, _ = gqa(x, is_causal=True)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    out2, attn = gqa(x, is_causal=True, return_attn=True)  # the explicit path agrees too
    torch.testing.assert_close(out2, ref, rtol=1e-10, atol=1e-10)
    assert attn.shape == (B, H, T, T) and torch.allclose(attn.sum(-1), torch.ones(B, H, T, dtype=torch.float64))
    assert gqa.in_proj.weight.shape == (C + 2 * n_kv * D, C)


def test_gqa_with_as_many_kv_heads_as_heads_is_the_original_attention():
    mha = _mha()
    x = torch.randn(2, 6, 24, dtype=torch.float64)
    torch.testing.assert_close(GroupedQueryAttention.from_mha(mha, 4)(x, is_causal=True)[0], mha(x, is_causal=True)[0],
                               rtol=1e-10, atol=1e-10)
    # and with fewer KV heads it is not (the pooling changed something): the test above can fail
    assert not torch.allclose(GroupedQueryAttention.from_mha(mha, 1)(x, is_causal=True)[0], mha(x, is_causal=True)[0])


@pytest.mark.parametrize("return_attn", [False, True])
def test_gqa_cache_holds_kv_heads_and_decoding_equals_the_full_forward(return_attn):
    gqa = GroupedQueryAttention.from_mha(_mha(), 2).eval()
    x = torch.randn(2, 9, 24, dtype=torch.float64)
    full, full_attn = gqa(x, is_causal=True, return_attn=True)  # (B, T, C), (B, H, T, T)
    out, attn, (k, v) = gqa(x[:, :5], is_causal=True, use_cache=True, return_attn=return_attn)
    assert k.shape == v.shape == (2, 2, 5, 6)  # (B, H_kv, P, D): half the heads of MHA's cache
    steps, maps = [out], [(0, 5, attn)]
    out, attn, (k, v) = gqa(x[:, 5:7], is_causal=True, past_kv=(k, v), use_cache=True,
                            return_attn=return_attn)  # two at once: position 5 must not see position 6
    steps.append(out)
    maps.append((5, 7, attn))
    for t in (7, 8):  # then one at a time
        out, attn, (k, v) = gqa(x[:, t:t + 1], is_causal=True, past_kv=(k, v), use_cache=True,
                                return_attn=return_attn)
        steps.append(out)
        maps.append((t, t + 1, attn))
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)
    for start, stop, attn in maps:  # each step's rows of the full attention map, up to its last key
        if return_attn:
            torch.testing.assert_close(attn, full_attn[:, :, start:stop, :stop], rtol=1e-10, atol=1e-10)
        else:
            assert attn is None


def test_gqa_builds_its_cache_mask_on_the_input_device():
    """On the meta device (shapes only, the one other device every machine has): a mask made on the CPU
    could not meet meta tensors."""
    gqa = GroupedQueryAttention(24, 4, 2).to("meta")
    past = (torch.empty(2, 2, 3, 6, device="meta"), torch.empty(2, 2, 3, 6, device="meta"))
    out, _, (k, v) = gqa(torch.empty(2, 4, 24, device="meta"), is_causal=True, past_kv=past, use_cache=True)
    assert out.device.type == "meta" and out.shape == (2, 4, 24) and k.shape == v.shape == (2, 2, 7, 6)


@pytest.mark.parametrize("return_attn", [False, True])
def test_gqa_dropout_acts_in_training_only(return_attn):
    gqa = GroupedQueryAttention.from_mha(_mha(dropout=0.5), 2)
    assert gqa.dropout == 0.5
    plain = GroupedQueryAttention.from_mha(_mha(), 2).eval()  # the same weights without dropout
    x = torch.randn(2, 6, 24, dtype=torch.float64)
    expected, _ = plain(x, is_causal=True)
    gqa.eval()
    torch.testing.assert_close(gqa(x, is_causal=True, return_attn=return_attn)[0], expected, rtol=1e-10, atol=1e-10)
    gqa.train()
    torch.manual_seed(0)
    out = gqa(x, is_causal=True, return_attn=return_attn)[0]
    assert not torch.allclose(out, expected)
    gqa.dropout = 0.0  # and in training without dropout, nothing is dropped
    torch.testing.assert_close(gqa(x, is_causal=True, return_attn=return_attn)[0], expected, rtol=1e-10, atol=1e-10)


def test_grouped_query_gpt_converts_every_block_and_shrinks_the_cache():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=4, n_embd=16)).eval()
    ids = torch.randint(11, (2, 10))
    before = model(ids)
    grouped_query_gpt_(model, 1)
    assert all(isinstance(b.attn, GroupedQueryAttention) and b.attn.num_kv_heads == 1 for b in model.transformer.h)
    after = model(ids)
    assert after.shape == before.shape and not torch.allclose(after, before)
    _, cache = model.forward_cached(ids)
    assert cache[0][0].shape == (2, 1, 10, 4)  # one KV head
    logits_cached, _ = model.forward_cached(ids[:, -1:], model.forward_cached(ids[:, :-1])[1])
    torch.testing.assert_close(logits_cached[:, -1], after[:, -1], rtol=1e-5, atol=1e-5)


def test_gqa_biases_follow_the_bias_flag():
    gqa = GroupedQueryAttention(24, 4, 2)  # D = 6
    assert gqa.bias is True and gqa.in_proj.bias.shape == (24 + 2 * 2 * 6,) and gqa.out_proj.bias.shape == (24,)
    gqa = GroupedQueryAttention(24, 4, 2, bias=False)
    assert gqa.bias is False and gqa.in_proj.bias is None and gqa.out_proj.bias is None
    assert gqa.in_proj.weight.shape == (48, 24) and gqa(torch.randn(1, 3, 24), is_causal=True)[0].shape == (1, 3, 24)


def test_gqa_num_kv_heads_must_be_a_positive_int_dividing_num_heads():
    for good in (1, 2, 4):
        assert GroupedQueryAttention(24, 4, good).num_kv_heads == good
    for bad in (0, -2, 3, 8, True, 2.0, "2"):
        with pytest.raises(ValueError, match=r"^GroupedQueryAttention: num_kv_heads must be a positive int dividing "
                                             r"num_heads=4 \(.*\), got " + re.escape(repr(bad)) + "$"):
            GroupedQueryAttention(24, 4, bad)


def test_gqa_from_mha_takes_the_device_and_dtype_of_the_layer():
    mha = MultiHeadAttention(24, 4).to(torch.float64).to("meta")  # not the default device nor dtype
    gqa = GroupedQueryAttention.from_mha(mha, 2)
    assert all(p.device.type == "meta" and p.dtype == torch.float64 for p in gqa.parameters())


def test_gqa_past_kv_must_be_keys_and_values_of_the_kv_heads():
    gqa = GroupedQueryAttention(24, 4, 2).to(torch.float64)  # H_kv = 2, D = 6
    x = torch.randn(1, 3, 24, dtype=torch.float64)
    good = torch.randn(1, 2, 4, 6, dtype=torch.float64)  # P = 4
    out, _, (k, v) = gqa(x, is_causal=True, past_kv=(good, good.clone()), use_cache=True)
    assert out.shape == (1, 3, 24) and k.shape == v.shape == (1, 2, 7, 6) and torch.equal(k[:, :, :4], good)
    out2, _ = gqa(x, is_causal=True, past_kv=[good, good.clone()])  # a list does too
    assert torch.equal(out2, out)

    def t(*shape):
        return torch.randn(*shape, dtype=torch.float64)

    bad = [  # past_kv, what the message reports
        ((good, t(1, 2, 5, 6)), "[(1, 2, 4, 6), (1, 2, 5, 6)]"),  # keys and values of different lengths
        ((t(1, 2, 4, 5), t(1, 2, 4, 6)), "[(1, 2, 4, 5), (1, 2, 4, 6)]"),
        ((t(1, 4, 4, 6), t(1, 4, 4, 6)), "[(1, 4, 4, 6), (1, 4, 4, 6)]"),  # H heads, not H_kv
        ((t(2, 2, 4, 6), t(2, 2, 4, 6)), "[(2, 2, 4, 6), (2, 2, 4, 6)]"),  # another batch
        ((t(1, 2, 4, 5), t(1, 2, 4, 5)), "[(1, 2, 4, 5), (1, 2, 4, 5)]"),  # another head dim
        ((t(2, 4, 6), t(2, 4, 6)), "[(2, 4, 6), (2, 4, 6)]"),  # 3-D
        ((good,), "[(1, 2, 4, 6)]"),  # not a pair
        ((good, good, good), "[(1, 2, 4, 6), (1, 2, 4, 6), (1, 2, 4, 6)]"),
        (good, "Tensor"),
        (3, "int"),
        ((good, None), "[(1, 2, 4, 6), 'NoneType']"),  # a hole in the pair is named, not an AttributeError
        ((3, good), "['int', (1, 2, 4, 6)]"),
    ]
    for past_kv, got in bad:
        with pytest.raises(ValueError, match=r"^GroupedQueryAttention: past_kv must be \(keys, values\), each "
                                             r"\(B, H_kv, P, D\) = \(1, 2, P, 6\), got " + re.escape(got) + "$"):
            gqa(x, is_causal=True, past_kv=past_kv)


def test_gqa_rejects_bad_input():
    with pytest.raises(ValueError, match="num_kv_heads"):
        GroupedQueryAttention(24, 4, 3)
    with pytest.raises(TypeError, match="MultiHeadAttention"):
        GroupedQueryAttention.from_mha(nn.Linear(3, 3), 1)
    gqa = GroupedQueryAttention(24, 4, 2)
    with pytest.raises(ValueError, match="causal self-attention only"):
        gqa(torch.randn(1, 3, 24))
    with pytest.raises(ValueError, match=r"\(B, H_kv, P, D\)"):
        gqa(torch.randn(1, 3, 24), is_causal=True, past_kv=(torch.randn(1, 4, 2, 6), torch.randn(1, 4, 2, 6)))
