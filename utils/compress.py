"""Making a model small and fast: pruning, distillation and cheaper attention (chapter 11; quantization is
`utils.quantize`).

- Pruning (Han et al. 2015, "Learning both weights and connections for efficient neural networks"):
  `magnitude_mask` keeps the largest |w| (the same mask as torch.nn.utils.prune.l1_unstructured);
  `prune_unstructured_` zeroes the rest in every block matrix. Structured pruning removes whole MLP
  neurons: `mlp_neuron_scores` ranks them by the size of what they add to the residual stream, and
  `prune_mlp_neurons_` cuts the rows of c_fc and the columns of c_proj, so the matrices really shrink.
  `head_ablation_scores` measures each attention head's importance as the loss increase when it is
  masked out (Michel et al. 2019, "Are sixteen heads really better than one?", section 3).
- Distillation (Hinton et al. 2015, "Distilling the knowledge in a neural network", section 2):
  `distillation_loss` = alpha T² KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) CE(z_s, y);
  the T² keeps the soft term's gradients the same size as T changes. `train_student` trains a GPT with
  it (or alone, alpha = 0) on the book's recipe.
- Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs", eqs. (4)-(6), (16)-(20)):
  softmax(q k^T) replaced by phi(q) phi(k)^T with phi(x) = elu(x) + 1; causal, it is a recurrence over a
  (D x D) state, so each new token costs O(D²) whatever the length  →  `causal_linear_attention`
  (the parallel form, O(T² D)), `linear_attention_recurrent` (the recurrent form, O(T D²)),
  `LinearAttention` (a drop-in for the GPT's MultiHeadAttention) and `linear_attention_gpt`.
- Multi-query / grouped-query attention (Shazeer 2019, "Fast transformer decoding"; Ainslie et al. 2023,
  "GQA", section 2): H query heads share H_kv key/value heads  →  `GroupedQueryAttention` (its KV cache
  holds H_kv heads), `GroupedQueryAttention.from_mha` (a trained layer converted by mean-pooling the key
  and value heads of each group, Ainslie et al.'s section 2.1), `grouped_query_gpt_`, and `kv_cache_bytes`.

Letter legend (shape comments):
    B  batch size     T  sequence length     C  channels      H  heads      D  head dim
    O  output rows    I  input columns       F  MLP hidden size
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .attention import MultiHeadAttention, scaled_dot_product_attention
from .gpt import GPT, GPTConfig, Recipe
from .quantize import compressible_weights
from .rnn import random_lm_batch
from .train import History, TrainConfig, adamw, train, warmup_cosine
from .transformer import ACTIVATIONS

__all__ = [
    "magnitude_mask", "prune_unstructured_", "sparsity",
    "mlp_neuron_scores", "prune_mlp_neurons_", "head_ablation_scores",
    "distillation_loss", "train_student",
    "elu_feature_map", "causal_linear_attention", "linear_attention_recurrent", "LinearAttention",
    "linear_attention_gpt", "GroupedQueryAttention", "grouped_query_gpt_", "kv_cache_bytes",
]

# ----------------------------------------------------------------------------------------------
# Pruning

def _check_sparsity(amount: float) -> None:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0.0 <= amount < 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1) (the fraction of weights removed), got {amount!r}")


def magnitude_mask(w: Tensor, amount: float) -> Tensor:
    """Keep-mask (True = kept) of w that removes the round(amount * numel) smallest |w| (ties: the
    earlier index goes first). The same mask as torch.nn.utils.prune.l1_unstructured(module, name, amount)
    when no two |w| tie at the threshold; torch picks among tied weights with torch.topk, whose order for
    ties is unspecified."""
    _check_sparsity(amount)
    n_prune = round(amount * w.numel())
    mask = torch.ones(w.numel(), dtype=torch.bool, device=w.device)
    if n_prune:
        order = torch.argsort(w.detach().abs().flatten(), stable=True)  # smallest first
        mask[order[:n_prune]] = False
    return mask.view_as(w)


def prune_unstructured_(model: GPT, amount: float) -> GPT:
    """Zero the smallest `amount` of |w| in each Linear weight of the blocks (in place); returns the model."""
    with torch.no_grad():
        _check_sparsity(amount)
        for name, w in compressible_weights(model).items():
            if name.startswith("transformer.h."):
                w.mul_(magnitude_mask(w, amount))
        return model


def sparsity(model: GPT) -> float:
    """Fraction of exact zeros among the Linear weights of the blocks."""
    ws = [w for n, w in compressible_weights(model).items() if n.startswith("transformer.h.")]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def mlp_neuron_scores(model: GPT, batches: Iterable[Tensor]) -> list[Tensor]:
    """Importance of every MLP neuron, one (F,) tensor per block: mean |h_i| ||c_proj.weight[:, i]||,
    the average size of what neuron i writes into the residual stream, over the token ids `batches`."""
    with torch.no_grad():
        blocks = list(model.transformer.h)
        sums = [torch.zeros(b.mlp.c_fc.out_features, device=b.mlp.c_fc.weight.device) for b in blocks]  # (F,) each
        count = [0]

        def hook_for(k: int, act: Callable[[Tensor], Tensor]):
            def hook(module: nn.Module, inputs: tuple[Tensor], output: Tensor) -> None:  # output c_fc(x) (B, T, F)
                sums[k] += act(output).abs().flatten(0, -2).sum(0)  # (F,)
            return hook

        hooks = [b.mlp.c_fc.register_forward_hook(hook_for(k, ACTIVATIONS[b.mlp.activation]))
                 for k, b in enumerate(blocks)]
        was = model.training
        model.eval()
        try:
            for idx in batches:
                model(idx)
                count[0] += idx.numel()
        finally:
            for h in hooks:
                h.remove()
            model.train(was)
        if not count[0]:
            raise ValueError("mlp_neuron_scores: batches is empty")
        return [s / count[0] * b.mlp.c_proj.weight.norm(dim=0) for s, b in zip(sums, blocks)]


def prune_mlp_neurons_(model: GPT, scores: list[Tensor], amount: float) -> GPT:
    """Remove the `amount` least important MLP neurons of every block (in place): c_fc loses those rows
    (and biases), c_proj those columns, so every MLP matrix becomes (1 - amount) as large. Returns the model."""
    with torch.no_grad():
        _check_sparsity(amount)
        blocks = list(model.transformer.h)
        if len(scores) != len(blocks):
            raise ValueError(f"prune_mlp_neurons_: need one score tensor per block ({len(blocks)}), got {len(scores)}")
        for b, s in zip(blocks, scores):
            fc, proj = b.mlp.c_fc, b.mlp.c_proj
            if s.shape != (fc.out_features,):
                raise ValueError(f"prune_mlp_neurons_: a block has {fc.out_features} neurons but its scores have shape "
                                 f"{tuple(s.shape)}")
            n_keep = fc.out_features - round(amount * fc.out_features)
            keep = torch.sort(torch.topk(s, n_keep).indices).values  # (F',) kept neurons, in their order
            new_fc = nn.Linear(fc.in_features, n_keep, bias=fc.bias is not None).to(fc.weight)
            new_proj = nn.Linear(n_keep, proj.out_features, bias=proj.bias is not None).to(proj.weight)
            new_fc.weight.copy_(fc.weight[keep])  # (F', C)
            if fc.bias is not None:
                new_fc.bias.copy_(fc.bias[keep])
            new_proj.weight.copy_(proj.weight[:, keep])  # (C, F')
            if proj.bias is not None:
                new_proj.bias.copy_(proj.bias)
            b.mlp.c_fc, b.mlp.c_proj = new_fc, new_proj
        return model


def head_ablation_scores(model: GPT, batches: list[tuple[Tensor, Tensor]]) -> Tensor:
    """(L, H): the loss increase on `batches` ((inputs, targets) pairs) when one head is masked out (its
    slice of out_proj's input columns set to zero), each head on its own (Michel et al. 2019, section 3)."""
    with torch.no_grad():
        def loss() -> float:
            return sum(float(model(x, y)[1]) for x, y in batches) / len(batches)

        was = model.training
        model.eval()
        try:
            base = loss()
            L, H = model.config.n_layer, model.config.n_head
            D = model.config.n_embd // H
            out = torch.zeros(L, H)
            for l, block in enumerate(model.transformer.h):
                w = block.attn.out_proj.weight
                for h in range(H):
                    saved = w[:, h * D:(h + 1) * D].clone()
                    w[:, h * D:(h + 1) * D] = 0
                    try:
                        out[l, h] = loss() - base
                    finally:  # the head comes back even if the loss raises
                        w[:, h * D:(h + 1) * D] = saved
        finally:
            model.train(was)
        return out


# ----------------------------------------------------------------------------------------------
# Distillation

def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor | None = None,
                      temperature: float = 2.0, alpha: float = 0.5) -> Tensor:
    """Hinton et al. (2015): alpha T² KL(p_T || q_T) + (1 - alpha) CE(student, targets), where p_T and q_T
    are the teacher's and the student's softmax at temperature T, and the KL is averaged over positions.
    Logits (..., V); targets (...) token ids (or None when alpha = 1). The teacher gets no gradient."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (the weight of the soft loss) must be in [0, 1], got {alpha}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits must have the same shape (..., V), got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    V = student_logits.shape[-1]
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # float64 stays float64
    s = F.log_softmax(student_logits.reshape(-1, V).to(dtype) / temperature, dim=-1)  # (N, V)
    t = F.log_softmax(teacher_logits.detach().reshape(-1, V).to(dtype) / temperature, dim=-1)  # (N, V)
    soft = F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2
    if alpha == 1.0:
        return soft
    if targets is None or targets.shape != student_logits.shape[:-1]:
        got = None if targets is None else tuple(targets.shape)
        raise ValueError(f"targets must have the logits' shape without V, {tuple(student_logits.shape[:-1])}, got "
                         f"{got} (or pass alpha=1 for the soft loss alone)")
    hard = F.cross_entropy(student_logits.reshape(-1, V), targets.reshape(-1))
    return alpha * soft + (1 - alpha) * hard


def train_student(config: GPTConfig, recipe: Recipe, train_ids: Tensor, val_batches: list[tuple[Tensor, Tensor]],
                  teacher: nn.Module | None = None, temperature: float = 2.0, alpha: float = 0.5,
                  steps: int | None = None, seed: int = 0,
                  make_model: Callable[[GPTConfig], nn.Module] = GPT,
                  device: str | torch.device | None = None) -> tuple[nn.Module, History]:
    """Train `make_model(config)` on random windows of `train_ids` with the optimizer and schedule of
    `recipe` for `steps` steps (default recipe.max_steps): on the data alone (teacher None) or with
    `distillation_loss` against `teacher` (frozen, eval mode). Same seed → same initial weights and
    same batches, with or without the teacher. The history's val_loss is the training objective on
    `val_batches`: with a teacher that is the distillation loss, not the language-model loss, so compare
    students with the model's own cross-entropy instead. Runs on `device` (default: the teacher's, else
    the device of `train_ids`)."""
    steps = recipe.max_steps if steps is None else steps
    if device is None:
        device = next(p.device for p in teacher.parameters()) if teacher is not None else train_ids.device
    torch.manual_seed(seed)
    model = make_model(config).to(device)
    optimizer = adamw(model, lr=recipe.lr, weight_decay=recipe.weight_decay, betas=recipe.betas)
    scheduler = warmup_cosine(optimizer, recipe.warmup, steps, min_lr_ratio=recipe.min_lr / recipe.lr)
    gen = torch.Generator().manual_seed(seed)
    if teacher is not None:
        teacher.eval()

    def loss_fn(m: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        if teacher is None:
            return m(x, y)[1]
        with torch.no_grad():
            t_logits = teacher(x)  # (B, T, V)
        return distillation_loss(m(x), t_logits, y, temperature, alpha)

    config_t = TrainConfig(max_steps=steps, grad_clip=recipe.grad_clip, eval_every=max(1, steps // 4),
                           log_every=max(1, steps // 16), progress=False)
    # train moves every batch, val_batches too, to the model's device
    history = train(model, lambda step: random_lm_batch(train_ids, recipe.batch_size, recipe.block_size,
                                                        generator=gen),
                    loss_fn, optimizer, config_t, scheduler=scheduler, val_batches=val_batches)
    return model, history


# ----------------------------------------------------------------------------------------------
# Linear attention

def elu_feature_map(x: Tensor) -> Tensor:
    """phi(x) = elu(x) + 1 (Katharopoulos et al. 2020, eq. (7)): positive, except that exp underflows to an
    exact 0 for x ≤ -17 in float32 (x ≤ -37 in float64), where only the attention's eps keeps the
    denominator away from 0."""
    return F.elu(x) + 1


def _check_qkv(q: Tensor, k: Tensor, v: Tensor, who: str) -> None:
    if not (isinstance(q, Tensor) and isinstance(k, Tensor) and isinstance(v, Tensor)) or q.dim() != 4 \
            or q.shape != k.shape or k.shape[:-1] != v.shape[:-1]:
        shapes = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in (q, k, v)]
        raise ValueError(f"{who}: q, k must be (B, H, T, D) of one shape and v (B, H, T, Dv), got {shapes}")


def causal_linear_attention(q: Tensor, k: Tensor, v: Tensor, eps: float = 1e-6) -> Tensor:
    """The parallel form: out_t = sum_{s≤t} (phi(q_t)·phi(k_s)) v_s / sum_{s≤t} phi(q_t)·phi(k_s).
    q, k (B, H, T, D), v (B, H, T, Dv) → (B, H, T, Dv). O(T² D), like softmax attention."""
    _check_qkv(q, k, v, "causal_linear_attention")
    q, k = elu_feature_map(q), elu_feature_map(k)
    a = (q @ k.transpose(-2, -1)).tril()  # (B, H, T, T) similarities, future zeroed
    return (a @ v) / (a.sum(-1, keepdim=True) + eps)  # (B, H, T, Dv)


def linear_attention_recurrent(q: Tensor, k: Tensor, v: Tensor, eps: float = 1e-6) -> Tensor:
    """The recurrent form of `causal_linear_attention` (eqs. (18)-(20)): a state S_t = S_{t-1} +
    phi(k_t) v_t^T (D x Dv) and z_t = z_{t-1} + phi(k_t) (D); out_t = phi(q_t) S_t / (phi(q_t) · z_t).
    Each step costs O(D Dv), whatever t: an RNN. Same shapes and result as the parallel form."""
    _check_qkv(q, k, v, "linear_attention_recurrent")
    q, k = elu_feature_map(q), elu_feature_map(k)
    B, H, T, D = q.shape
    S = q.new_zeros(B, H, D, v.shape[-1])  # (B, H, D, Dv)
    z = q.new_zeros(B, H, D)  # (B, H, D)
    out = []
    for t in range(T):
        S = S + k[:, :, t, :, None] * v[:, :, t, None, :]  # (B, H, D, Dv)
        z = z + k[:, :, t]  # (B, H, D)
        num = (q[:, :, t, None, :] @ S).squeeze(-2)  # (B, H, Dv)
        out.append(num / ((q[:, :, t] * z).sum(-1, keepdim=True) + eps))
    return torch.stack(out, dim=2)  # (B, H, T, Dv)


class LinearAttention(MultiHeadAttention):
    """Causal multi-head self-attention with `causal_linear_attention` in place of softmax attention;
    the same parameters (in_proj, out_proj) as MultiHeadAttention, so it drops into a GPT block."""

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None, is_causal: bool = False,
                return_attn: bool = False) -> tuple[Tensor, Tensor | None]:
        if (key is not None and key is not query) or (value is not None and value is not query) \
                or key_padding_mask is not None or attn_mask is not None or not is_causal:
            raise ValueError("LinearAttention computes causal self-attention only: call it as attn(x, "
                             "is_causal=True), without key/value, key_padding_mask or attn_mask")
        self._check(query, query, query, None, None)
        q, k, v = (rearrange(t, "b t (h d) -> b h t d", h=self.num_heads)
                   for t in self._project(query, query, query))  # 3 × (B, H, T, D)
        out = causal_linear_attention(q, k, v)  # (B, H, T, D)
        attn = None
        if return_attn:
            a = (elu_feature_map(q) @ elu_feature_map(k).transpose(-2, -1)).tril()  # (B, H, T, T)
            attn = a / a.sum(-1, keepdim=True)
        return self.out_proj(rearrange(out, "b h t d -> b t (h d)")), attn


def linear_attention_gpt(config: GPTConfig) -> GPT:
    """A GPT whose blocks use `LinearAttention` (same parameters and initialisation as `GPT(config)`
    with the same seed). Use its `forward`; `forward_cached`/`generate` with a cache assume softmax."""
    model = GPT(config)
    for block in model.transformer.h:
        old = block.attn
        new = LinearAttention(old.embed_dim, old.num_heads, old.dropout, old.bias)  # GPT's default dtype and device
        new.load_state_dict(old.state_dict())
        block.attn = new
    return model


def kv_cache_bytes(n_layer: int, n_head: int, head_dim: int, seq_len: int, batch: int = 1,
                   n_kv_head: int | None = None, bytes_per_number: int = 2) -> int:
    """Bytes of the key/value cache: 2 (K and V) x L x H_kv x D x T x B numbers. n_kv_head = n_head is
    multi-head attention, 1 multi-query (Shazeer 2019), 1 < n_kv_head < n_head grouped-query (Ainslie
    et al. 2023; n_head must be a multiple of it)."""
    n_kv = n_head if n_kv_head is None else n_kv_head
    for name, v in (("n_layer", n_layer), ("n_head", n_head), ("head_dim", head_dim), ("seq_len", seq_len),
                    ("batch", batch), ("n_kv_head", n_kv), ("bytes_per_number", bytes_per_number)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"kv_cache_bytes: {name} must be a positive int, got {v!r}")
    if n_head % n_kv:
        raise ValueError(f"kv_cache_bytes: n_head={n_head} is not a multiple of n_kv_head={n_kv}; each group of "
                         "query heads shares one key/value head")
    return 2 * n_layer * n_kv * head_dim * seq_len * batch * bytes_per_number


# ----------------------------------------------------------------------------------------------
# Grouped-query attention

class GroupedQueryAttention(MultiHeadAttention):
    """Causal grouped-query self-attention (Ainslie et al. 2023, "GQA: training generalized multi-query
    transformer models from multi-head checkpoints", section 2): H query heads share H_kv key/value heads,
    query head h reading key/value head h // (H / H_kv). H_kv = H is multi-head attention, H_kv = 1
    multi-query attention (Shazeer 2019). The KV cache holds H_kv heads instead of H.

    `in_proj` = nn.Linear(C, C + 2 H_kv D) whose rows are [W^Q (C rows); W^K (H_kv D); W^V (H_kv D)];
    `out_proj` = W^O, as MultiHeadAttention. `from_mha` converts a trained MultiHeadAttention by
    mean-pooling the key and value heads of each group (Ainslie et al., section 2.1, figure 1).
    """

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: int, dropout: float = 0.0,
                 bias: bool = True) -> None:
        if not isinstance(num_kv_heads, int) or isinstance(num_kv_heads, bool) or num_kv_heads < 1 \
                or num_heads % num_kv_heads:
            raise ValueError(f"GroupedQueryAttention: num_kv_heads must be a positive int dividing num_heads="
                             f"{num_heads} (each group of query heads shares one key/value head), got {num_kv_heads!r}")
        super().__init__(embed_dim, num_heads, dropout, bias)
        self.num_kv_heads = num_kv_heads
        kv = 2 * num_kv_heads * self.head_dim
        self.in_proj = nn.Linear(embed_dim, embed_dim + kv, bias=bias)  # rows [W^Q; W^K; W^V]
        self.reset_parameters()

    @classmethod
    def from_mha(cls, attn: MultiHeadAttention, num_kv_heads: int) -> GroupedQueryAttention:
        """A GQA layer whose query and output projections are `attn`'s and whose key (value) head g is the
        mean of `attn`'s key (value) heads g·(H/H_kv) … (g+1)·(H/H_kv) − 1, weights and biases alike."""
        if not isinstance(attn, MultiHeadAttention) or isinstance(attn, GroupedQueryAttention):
            raise TypeError(f"from_mha converts a MultiHeadAttention, got {type(attn).__name__}")
        new = cls(attn.embed_dim, attn.num_heads, num_kv_heads, attn.dropout, attn.bias)
        new = new.to(device=attn.in_proj.weight.device, dtype=attn.in_proj.weight.dtype)
        C, D = attn.embed_dim, attn.head_dim

        def pool(t: Tensor) -> Tensor:  # (H D, ...) → (H_kv D, ...): mean over the r = H / H_kv heads of each group
            return rearrange(t, "(g r d) ... -> g r d ...", g=num_kv_heads, d=D).mean(1).flatten(0, 1)

        with torch.no_grad():
            params = [("weight", attn.in_proj.weight)] + ([("bias", attn.in_proj.bias)] if attn.bias else [])
            for name, p in params:
                q, k, v = p.split(C)  # 3 × (C, ...)
                getattr(new.in_proj, name).copy_(torch.cat([q, pool(k), pool(v)]))  # (C + 2 H_kv D, ...)
            new.out_proj.load_state_dict(attn.out_proj.state_dict())
        return new

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None, is_causal: bool = False,
                return_attn: bool = False, past_kv: tuple[Tensor, Tensor] | None = None,
                use_cache: bool = False) -> tuple[Tensor, ...]:
        """Causal self-attention x (B, T, C) → (B, T, C), attn (B, H, T, S) if `return_attn`. The cache
        `past_kv` / `use_cache=True` holds (keys, values), each (B, H_kv, S, D): H / H_kv times fewer
        numbers than MultiHeadAttention's."""
        if (key is not None and key is not query) or (value is not None and value is not query) \
                or key_padding_mask is not None or attn_mask is not None or not is_causal:
            raise ValueError("GroupedQueryAttention computes causal self-attention only: call it as attn(x, "
                             "is_causal=True), without key/value, key_padding_mask or attn_mask")
        self._check(query, query, query, None, None)
        B, T, _ = query.shape
        Hkv, D, r = self.num_kv_heads, self.head_dim, self.num_heads // self.num_kv_heads
        P = 0
        if past_kv is not None:
            ok = (isinstance(past_kv, (tuple, list)) and len(past_kv) == 2 and all(isinstance(t, Tensor) for t in past_kv)
                  and past_kv[0].dim() == 4 and past_kv[0].shape == past_kv[1].shape
                  and tuple(past_kv[0].shape[:2]) == (B, Hkv) and past_kv[0].shape[3] == D)
            if not ok:
                got = ([tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in past_kv]
                       if isinstance(past_kv, (tuple, list)) else type(past_kv).__name__)
                raise ValueError(f"GroupedQueryAttention: past_kv must be (keys, values), each (B, H_kv, P, D) = "
                                 f"({B}, {Hkv}, P, {D}), got {got}")
            P = past_kv[0].shape[2]
        q, k, v = self.in_proj(query).split([self.embed_dim, Hkv * D, Hkv * D], dim=-1)  # (B, T, C), 2 × (B, T, Hkv D)
        q = rearrange(q, "b t (h d) -> b h t d", h=self.num_heads)  # (B, H, T, D)
        k = rearrange(k, "b t (h d) -> b h t d", h=Hkv)  # (B, Hkv, T, D)
        v = rearrange(v, "b t (h d) -> b h t d", h=Hkv)  # (B, Hkv, T, D)
        if past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=2)  # (B, Hkv, P + T, D)
            v = torch.cat([past_kv[1], v], dim=2)  # (B, Hkv, P + T, D)
        S = k.shape[2]
        k_all = k.repeat_interleave(r, dim=1)  # (B, H, S, D): query head h reads key head h // r
        v_all = v.repeat_interleave(r, dim=1)  # (B, H, S, D)
        mask = None if P == 0 else torch.ones(T, S, dtype=torch.bool, device=q.device).tril(P)  # (T, S)
        dropout_p = self.dropout if self.training else 0.0
        if return_attn:
            out, attn = scaled_dot_product_attention(q, k_all, v_all, mask=mask, is_causal=P == 0, dropout_p=dropout_p,
                                                     training=self.training, return_attn=True)  # (B, H, T, D)
        else:
            out, attn = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, is_causal=P == 0,
                                                       dropout_p=dropout_p), None  # (B, H, T, D)
        out = self.out_proj(rearrange(out, "b h t d -> b t (h d)"))  # (B, T, C)
        return (out, attn, (k, v)) if use_cache else (out, attn)


def grouped_query_gpt_(model: GPT, n_kv_head: int) -> GPT:
    """Convert every block of `model` to `GroupedQueryAttention` with `n_kv_head` key/value heads by
    mean-pooling (`GroupedQueryAttention.from_mha`), in place; Ainslie et al. then uptrain briefly."""
    for block in model.transformer.h:
        block.attn = GroupedQueryAttention.from_mha(block.attn, n_kv_head)
    return model
