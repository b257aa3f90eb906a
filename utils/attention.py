"""Attention from the equations: additive and dot-product scores, scaled dot-product, multi-head.

- Bahdanau, Cho & Bengio (2015), "Neural machine translation by jointly learning to align and
  translate", eq. (6) of appendix A.1.2: score(q, k) = v^T tanh(W_q q + W_k k)  →  `AdditiveAttention`.
- Luong, Pham & Manning (2015), "Effective approaches to attention-based neural machine translation",
  eq. (8): score(q, k) = q^T k ("dot") or q^T W k ("general")  →  `DotProductAttention`.
- Vaswani et al. (2017), "Attention is all you need", eq. (1): Attention(Q, K, V) = softmax(QK^T / sqrt(D)) V
  →  `scaled_dot_product_attention`; section 3.2.2, MultiHead(Q, K, V) = Concat(head_1..head_H) W^O with
  head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)  →  `MultiHeadAttention`.
- The key/value cache of autoregressive decoding (Pope et al. 2022, "Efficiently scaling Transformer
  inference", section 2): under a causal mask past keys and values never change, so new positions
  compute only their own and attend to the stored ones  →  `MultiHeadAttention(..., past_kv=, use_cache=)`.

`MultiHeadAttention` keeps nn.MultiheadAttention's parameter layout (a fused `in_proj` holding the
q, k, v rows stacked, and `out_proj`), so `from_torch_mha_state_dict` / `to_torch_mha_state_dict` are
a three-line renaming table and the tests prove both modules compute the same thing.

Mask conventions (a boolean mask means what its name says):
    `mask` / `attn_mask` (bool)   True = this query MAY attend to this key (as F.scaled_dot_product_attention;
                                  note nn.MultiheadAttention's bool attn_mask is the opposite: True = blocked)
    `mask` / `attn_mask` (float)  added to the scores before the softmax (0 = keep, -inf = block)
    `key_padding_mask` (bool)     True = this key IS padding, ignore it (as nn.MultiheadAttention)
    `mask` of Additive/DotProductAttention (bool)  True = real token (as utils.seq2seq's source mask)
A query row left with no key it may attend to is an error (softmax over nothing is undefined; torch
returns NaN there); with a float mask that is all -inf in a row we raise the same error.

Letter legend (shape comments):
    B  batch size            T  query length            S  key/value length
    C  model width           H  heads                   D  head dim (C = H * D)
    P  past positions held in a key/value cache (`past_kv`), so S = P + T
    Q  query features        K  key features            A  hidden size of the additive score
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = [
    "AdditiveAttention", "DotProductAttention",
    "causal_mask", "scaled_dot_product_attention", "MultiHeadAttention",
    "from_torch_mha_state_dict", "to_torch_mha_state_dict",
]


# ----------------------------------------------------------------------------------------------
# Input checks: every error names what was expected and what came.

def _check_tensor(x: Tensor, name: str, who: str, dim: int | None = None) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{who}: {name} must be floating point, got dtype {x.dtype}; token ids need an "
                        "embedding (nn.Embedding) first")
    if dim is not None and x.dim() != dim:
        raise ValueError(f"{who}: {name} must have {dim} dimensions, got shape {tuple(x.shape)}")


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _raise_empty_rows(allowed: Tensor, who: str) -> None:
    """allowed (..., T, S) bool: raise if some query row has no key it may attend to."""
    empty = ~allowed.any(dim=-1)  # (..., T)
    if bool(empty.any()):
        where = tuple(int(i) for i in empty.nonzero()[0])
        raise ValueError(f"{who}: query row at index {where} (of {tuple(empty.shape)}) may attend to no key: "
                         "every key is masked, so the softmax is undefined; check the mask convention "
                         "(bool True = may attend) and that no sequence is empty")


# ----------------------------------------------------------------------------------------------
# Chapter 5: one decoder query against the encoder's outputs (Bahdanau, Luong).

def _masked_softmax_context(scores: Tensor, keys: Tensor, mask: Tensor | None, who: str) -> tuple[Tensor, Tensor]:
    """scores (B, S), keys (B, S, K), mask (B, S) True = real → context (B, K), weights (B, S)."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # (B, S); exp(-inf) = 0 exactly
    weights = torch.softmax(scores, dim=-1)  # (B, S)
    context = torch.einsum("bs,bsk->bk", weights, keys)  # (B, K)
    return context, weights


def _check_query_keys(query: Tensor, keys: Tensor, mask: Tensor | None, query_dim: int, key_dim: int,
                      who: str) -> None:
    _check_tensor(query, "query", who)
    _check_tensor(keys, "keys", who)
    if query.dim() != 2 or query.shape[1] != query_dim:
        raise ValueError(f"{who}: query must have shape (B, Q) = (batch, {query_dim}), got {tuple(query.shape)}")
    if keys.dim() != 3 or keys.shape[2] != key_dim:
        raise ValueError(f"{who}: keys must have shape (B, S, K) = (batch, length, {key_dim}), "
                         f"got {tuple(keys.shape)}")
    if keys.shape[0] != query.shape[0]:
        raise ValueError(f"{who}: batch size mismatch, query has B={query.shape[0]} but keys have "
                         f"B={keys.shape[0]}")
    if keys.shape[1] == 0:
        raise ValueError(f"{who}: keys are empty (S=0), shape {tuple(keys.shape)}")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"{who}: mask must be a bool tensor (True = real token), got "
                            f"{mask.dtype if isinstance(mask, Tensor) else type(mask).__name__}")
        if tuple(mask.shape) != tuple(keys.shape[:2]):
            raise ValueError(f"{who}: mask must have shape (B, S) = {tuple(keys.shape[:2])}, got {tuple(mask.shape)}")
        empty = ~mask.any(dim=-1)  # (B,)
        if bool(empty.any()):
            raise ValueError(f"{who}: mask rows {empty.nonzero().flatten().tolist()} have no real token "
                             "(all False); every sequence needs at least one key (True = real token)")


def _check_projected(projected: Tensor, keys: Tensor, dim: int, who: str) -> Tensor:
    """`projected` must be project_keys(keys): shape (B, S, dim) for the same B, S as the keys."""
    want = (*keys.shape[:2], dim)
    if not isinstance(projected, Tensor) or tuple(projected.shape) != want:
        got = tuple(projected.shape) if isinstance(projected, Tensor) else type(projected).__name__
        raise ValueError(f"{who}: projected keys must have shape (B, S, {dim}) = {want} (from project_keys(keys)), "
                         f"got {got}")
    return projected


class AdditiveAttention(nn.Module):
    """Bahdanau et al. (2015) additive attention: score(q, k) = v^T tanh(W_q q + W_k k).

    weights = softmax over the S keys of the scores (masked keys get weight exactly 0);
    context = Σ_s weights_s k_s. Parameters: `w_q` (A×Q), `w_k` (A×K), `v` (1×A), no biases (as eq. 6).
    """

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int) -> None:
        super().__init__()
        _check_positive(query_dim=query_dim, key_dim=key_dim, hidden_dim=hidden_dim)
        self.query_dim, self.key_dim, self.hidden_dim = query_dim, key_dim, hidden_dim
        self.w_q = nn.Linear(query_dim, hidden_dim, bias=False)
        self.w_k = nn.Linear(key_dim, hidden_dim, bias=False)
        self.v = nn.Linear(hidden_dim, 1, bias=False)

    def project_keys(self, keys: Tensor) -> Tensor:
        """W_k k for every key: keys (B, S, K) → (B, S, A). It does not depend on the query, so a decoder
        computes it once per source and passes it to every step as `projected`."""
        return self.w_k(keys)  # (B, S, A)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor | None = None,
                projected: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """query (B, Q), keys (B, S, K), mask (B, S) bool True = real token → context (B, K), weights (B, S).
        `projected`: `project_keys(keys)` computed earlier (optional; same result, less work per step)."""
        _check_query_keys(query, keys, mask, self.query_dim, self.key_dim, "AdditiveAttention")
        q = self.w_q(query)  # (B, A)
        k = self.project_keys(keys) if projected is None else _check_projected(projected, keys, self.hidden_dim,
                                                                                 "AdditiveAttention")  # (B, S, A)
        scores = self.v(torch.tanh(k + q[:, None, :])).squeeze(-1)  # (B, S, A) -> (B, S)
        return _masked_softmax_context(scores, keys, mask, "AdditiveAttention")

    def extra_repr(self) -> str:
        return f"query_dim={self.query_dim}, key_dim={self.key_dim}, hidden_dim={self.hidden_dim}"


class DotProductAttention(nn.Module):
    """Luong et al. (2015) multiplicative attention: score(q, k) = q^T k ("dot") or q^T W k ("general").

    "dot" has no parameters and needs query_dim == key_dim; "general" learns `w` (Q×K, stored as
    nn.Linear(K, Q, bias=False), so w(k) = W k). Weights and context as in `AdditiveAttention`.
    """

    KINDS = ("dot", "general")

    def __init__(self, query_dim: int, key_dim: int, kind: str = "general") -> None:
        super().__init__()
        _check_positive(query_dim=query_dim, key_dim=key_dim)
        if kind not in self.KINDS:
            raise ValueError(f"DotProductAttention: kind must be one of {self.KINDS}, got {kind!r}")
        if kind == "dot" and query_dim != key_dim:
            raise ValueError(f"DotProductAttention(kind='dot') needs query_dim == key_dim, got {query_dim} and "
                             f"{key_dim}; use kind='general' to learn a {query_dim}×{key_dim} matrix")
        self.query_dim, self.key_dim, self.kind = query_dim, key_dim, kind
        self.w = nn.Linear(key_dim, query_dim, bias=False) if kind == "general" else None

    def project_keys(self, keys: Tensor) -> Tensor:
        """W k for every key ("general"; the keys themselves for "dot"): keys (B, S, K) → (B, S, Q)."""
        return keys if self.w is None else self.w(keys)  # (B, S, Q)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor | None = None,
                projected: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """query (B, Q), keys (B, S, K), mask (B, S) bool True = real token → context (B, K), weights (B, S).
        `projected`: `project_keys(keys)` computed earlier (optional; same result, less work per step)."""
        _check_query_keys(query, keys, mask, self.query_dim, self.key_dim, "DotProductAttention")
        projected = self.project_keys(keys) if projected is None else _check_projected(
            projected, keys, self.query_dim, "DotProductAttention")  # (B, S, Q)
        scores = torch.einsum("bq,bsq->bs", query, projected)  # (B, S)
        return _masked_softmax_context(scores, keys, mask, "DotProductAttention")

    def extra_repr(self) -> str:
        return f"query_dim={self.query_dim}, key_dim={self.key_dim}, kind={self.kind!r}"


# ----------------------------------------------------------------------------------------------
# Chapter 6: scaled dot-product attention (Vaswani et al. 2017, eq. 1).

def causal_mask(T: int, device: torch.device | str | None = None) -> Tensor:
    """(T, T) bool, True on and below the diagonal: query t may attend to keys 0..t (True = may attend)."""
    _check_positive(T=T)
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()  # (T, T)


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                                 is_causal: bool = False, dropout_p: float = 0.0, training: bool = False,
                                 return_attn: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(Q K^T / sqrt(D) + mask) V, written out (Vaswani et al. 2017, eq. 1).

    q (..., T, D), k (..., S, D), v (..., S, Dv); leading dims broadcast as in torch.matmul.
    `mask` broadcastable to (..., T, S): bool (True = may attend) or float (added to the scores).
    `is_causal` blocks key s > query t (top-left aligned, like F.scaled_dot_product_attention); unlike
    torch it may be combined with `mask` (both apply). Dropout (rate `dropout_p`, only if `training`)
    acts on the attention weights; the returned map is the one before dropout.
    Returns out (..., T, Dv), and attn (..., T, S) if `return_attn`.
    """
    who = "scaled_dot_product_attention"
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_tensor(x, name, who)
        if x.dim() < 2:
            raise ValueError(f"{who}: {name} needs shape (..., length, dim), got {tuple(x.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{who}: q and k must share the head dim D, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"{who}: key/value length mismatch, k has S={k.shape[-2]} positions but v has "
                         f"{v.shape[-2]} (k {tuple(k.shape)}, v {tuple(v.shape)})")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{who}: dropout_p must be in [0, 1), got {dropout_p}")
    T, S = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T, D) @ (..., D, S) -> (..., T, S)
    if mask is not None:
        try:
            full = torch.broadcast_shapes(mask.shape, scores.shape)
        except RuntimeError:
            full = None
        if full != scores.shape:
            raise ValueError(f"{who}: mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape "
                             f"(..., T, S) = {tuple(scores.shape)}")
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))  # (..., T, S)
        elif mask.is_floating_point():
            scores = scores + mask.to(scores.dtype)  # (..., T, S)
        else:
            raise TypeError(f"{who}: mask must be bool (True = may attend) or float (additive), got {mask.dtype}")
    if is_causal:
        scores = scores.masked_fill(~torch.ones(T, S, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    if mask is not None or is_causal:
        _raise_empty_rows(scores > float("-inf"), who)
    attn = torch.softmax(scores, dim=-1)  # (..., T, S)
    dropped = F.dropout(attn, dropout_p) if training and dropout_p > 0 else attn
    out = dropped @ v  # (..., T, S) @ (..., S, Dv) -> (..., T, Dv)
    return (out, attn) if return_attn else out


# ----------------------------------------------------------------------------------------------
# Multi-head attention with nn.MultiheadAttention's parameters.

class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017, section 3.2.2), batch first.

    MultiHead(Q, K, V) = Concat(head_1, ..., head_H) W^O,  head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).
    Parameters as nn.MultiheadAttention: `in_proj` = nn.Linear(C, 3C) whose rows are [W^Q; W^K; W^V]
    (head i uses rows i*D..(i+1)*D of each), and `out_proj` = nn.Linear(C, C) = W^O.
    Without `return_attn` the core runs in F.scaled_dot_product_attention (fused, fast); with it, in
    this module's explicit `scaled_dot_product_attention`; the tests prove the two agree.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        _check_positive(embed_dim=embed_dim, num_heads=num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"MultiHeadAttention: embed_dim={embed_dim} is not divisible by num_heads={num_heads}; "
                             f"pick num_heads dividing {embed_dim} (head dim D = embed_dim / num_heads)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MultiHeadAttention: dropout must be in [0, 1), got {dropout}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.dropout, self.bias = dropout, bias
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)  # rows [W^Q; W^K; W^V]
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)  # W^O
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.MultiheadAttention's initialisation: Xavier-uniform in_proj, zero biases."""
        nn.init.xavier_uniform_(self.in_proj.weight)
        if self.bias:
            nn.init.zeros_(self.in_proj.bias)
            nn.init.zeros_(self.out_proj.bias)

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Apply W^Q, W^K, W^V: one fused matmul for self-attention, slices of in_proj otherwise."""
        if query is key and key is value:
            return self.in_proj(query).chunk(3, dim=-1)  # (B, T, 3C) -> 3 × (B, T, C)
        w = self.in_proj.weight.chunk(3, dim=0)  # 3 × (C, C)
        b = self.in_proj.bias.chunk(3, dim=0) if self.bias else (None,) * 3  # 3 × (C,)
        if key is value:
            k, v = F.linear(key, torch.cat(w[1:]), None if b[1] is None else torch.cat(b[1:])).chunk(2, dim=-1)
            return F.linear(query, w[0], b[0]), k, v  # (B, T, C), 2 × (B, S, C)
        return F.linear(query, w[0], b[0]), F.linear(key, w[1], b[1]), F.linear(value, w[2], b[2])

    def _check(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None,
               attn_mask: Tensor | None, past: int = 0) -> None:
        """`past`: the number of cached positions (past_kv) that come before `key`'s, so S = past + key length."""
        who, C = "MultiHeadAttention", self.embed_dim
        for name, x in (("query", query), ("key", key), ("value", value)):
            _check_tensor(x, name, who)
            if x.dim() != 3 or x.shape[-1] != C:
                raise ValueError(f"{who}: {name} must have shape (B, length, C) with C={C}, got {tuple(x.shape)}")
        if key.shape[1] != value.shape[1]:
            raise ValueError(f"{who}: key/value length mismatch, key has S={key.shape[1]} positions but value has "
                             f"{value.shape[1]}")
        if not query.shape[0] == key.shape[0] == value.shape[0]:
            raise ValueError(f"{who}: batch size mismatch, query/key/value have B = {query.shape[0]}, "
                             f"{key.shape[0]}, {value.shape[0]}")
        B, T, S = query.shape[0], query.shape[1], past + key.shape[1]
        if key_padding_mask is not None:
            if not isinstance(key_padding_mask, Tensor) or key_padding_mask.dtype != torch.bool:
                raise TypeError(f"{who}: key_padding_mask must be a bool tensor (True = padding), got "
                                f"{getattr(key_padding_mask, 'dtype', type(key_padding_mask).__name__)}")
            if tuple(key_padding_mask.shape) != (B, S):
                raise ValueError(f"{who}: key_padding_mask must have shape (B, S) = {(B, S)}, "
                                 f"got {tuple(key_padding_mask.shape)}")
        if attn_mask is not None:
            ok = ((T, S), (B, self.num_heads, T, S), (B, 1, T, S))
            got = tuple(attn_mask.shape) if isinstance(attn_mask, Tensor) else type(attn_mask).__name__
            if got not in ok:
                raise ValueError(f"{who}: attn_mask must have shape (T, S) = {(T, S)} or (B, H, T, S) = "
                                 f"{(B, self.num_heads, T, S)} (or (B, 1, T, S)), got {got}")
            if not (attn_mask.dtype == torch.bool or attn_mask.is_floating_point()):
                raise TypeError(f"{who}: attn_mask must be bool (True = may attend) or float (additive), "
                                f"got {attn_mask.dtype}")

    def _check_past(self, past_kv: object, query: Tensor, key: Tensor) -> int:
        """past_kv must be (keys, values), each (B, H, P, D) in the query's dtype and device, for
        self-attention; returns P."""
        who, B, H, D = "MultiHeadAttention", query.shape[0], self.num_heads, self.head_dim
        if key is not query:
            raise ValueError(f"{who}: past_kv caches self-attention only; call attn(x, past_kv=...) without key/value")
        if (not isinstance(past_kv, (tuple, list)) or len(past_kv) != 2
                or not all(isinstance(t, Tensor) for t in past_kv)):
            raise ValueError(f"{who}: past_kv must be a (keys, values) pair of tensors, each (B, H, P, D), as "
                             f"returned with use_cache=True; got {type(past_kv).__name__}")
        k, v = past_kv
        P = k.shape[2] if k.dim() == 4 else -1
        for name, t in (("keys", k), ("values", v)):
            if t.dim() != 4 or tuple(t.shape) != (B, H, P, D):
                raise ValueError(f"{who}: past_kv {name} must have shape (B, H, P, D) = ({B}, {H}, P, {D}) with one "
                                 f"P for keys and values, got keys {tuple(k.shape)}, values {tuple(v.shape)}")
            if t.dtype != query.dtype or t.device != query.device:
                raise ValueError(f"{who}: past_kv {name} are {t.dtype} on {t.device} but the input is {query.dtype} "
                                 f"on {query.device}; keep the cache with the model (same dtype and device)")
        return P

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None, is_causal: bool = False,
                return_attn: bool = False, past_kv: tuple[Tensor, Tensor] | None = None,
                use_cache: bool = False) -> tuple[Tensor, ...]:
        """query (B, T, C), key (B, S, C) (default: query), value (B, S, C) (default: key).

        key_padding_mask (B, S) bool, True = padding (ignored), as nn.MultiheadAttention.
        attn_mask (T, S) or (B, H, T, S): bool True = may attend (as F.scaled_dot_product_attention,
        the opposite of nn.MultiheadAttention's bool attn_mask), or float added to the scores.
        is_causal: query t attends to keys 0..t only. Combines with the masks.
        Returns out (B, T, C) and attn (B, H, T, S) if `return_attn` else None.

        The key/value cache of autoregressive decoding (self-attention only): `past_kv` = (keys, values),
        each (B, H, P, D), of P earlier positions. The T new positions are then P .. P+T-1: their keys and
        values are appended (S = P + T, which the masks must cover), and with `is_causal` the new query i
        attends to keys 0 .. P+i. `use_cache=True` also returns the keys and values of all S positions,
        (out, attn, (keys, values)), to pass as `past_kv` next time; the given past_kv is not modified.
        """
        key = query if key is None else key
        value = key if value is None else value
        P = 0 if past_kv is None else self._check_past(past_kv, query, key)
        self._check(query, key, value, key_padding_mask, attn_mask, past=P)
        q, k, v = self._project(query, key, value)  # (B, T, C), (B, S, C), (B, S, C)
        q = rearrange(q, "b t (h d) -> b h t d", h=self.num_heads)  # (B, H, T, D)
        k = rearrange(k, "b s (h d) -> b h s d", h=self.num_heads)  # (B, H, S, D)
        v = rearrange(v, "b s (h d) -> b h s d", h=self.num_heads)  # (B, H, S, D)
        if past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=2)  # (B, H, P + T, D)
            v = torch.cat([past_kv[1], v], dim=2)  # (B, H, P + T, D)
        mask = self._merge_masks(key_padding_mask, attn_mask, q)  # None or broadcastable to (B, H, T, S)
        T, S = q.shape[-2], k.shape[-2]
        causal = is_causal and mask is None and P == 0  # SDPA's flag (top-left aligned: right without a past)
        if is_causal and not causal and not (P > 0 and T == 1):  # (one new query after a past may see every key)
            allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(P)  # (T, S) query i: keys 0 .. P+i
            if mask is None:
                mask = allowed
            else:
                mask = mask & allowed if mask.dtype == torch.bool else mask.masked_fill(~allowed, float("-inf"))
        if mask is not None:
            _raise_empty_rows(mask if mask.dtype == torch.bool else mask > float("-inf"), "MultiHeadAttention")
        dropout_p = self.dropout if self.training else 0.0
        if return_attn:
            out, attn = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=causal, dropout_p=dropout_p,
                                                     training=self.training, return_attn=True)  # (B, H, T, D)
        else:
            out, attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                                       dropout_p=dropout_p), None  # (B, H, T, D)
        out = rearrange(out, "b h t d -> b t (h d)")  # (B, T, C)
        if use_cache:
            return self.out_proj(out), attn, (k, v)  # (B, T, C), (B, H, T, S) | None, 2 × (B, H, S, D)
        return self.out_proj(out), attn

    @staticmethod
    def _merge_masks(key_padding_mask: Tensor | None, attn_mask: Tensor | None, q: Tensor) -> Tensor | None:
        """One mask in SDPA's convention (bool True = may attend, or float additive), or None."""
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.to(q.dtype)  # F.scaled_dot_product_attention wants the query's dtype
        if key_padding_mask is None:
            return attn_mask
        keep = rearrange(~key_padding_mask, "b s -> b 1 1 s")  # (B, 1, 1, S)
        if attn_mask is None:
            return keep
        if attn_mask.dtype == torch.bool:
            return keep & attn_mask  # (B, H|1, T, S)
        return attn_mask.masked_fill(~keep, float("-inf"))  # (B, H|1, T, S)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"
                + ("" if self.bias else ", bias=False"))


# The converter: nn.MultiheadAttention's state_dict keys → ours, and back (same tensors, same layout).
_TORCH_TO_OURS = {
    "in_proj_weight": "in_proj.weight",
    "in_proj_bias": "in_proj.bias",
    "out_proj.weight": "out_proj.weight",
    "out_proj.bias": "out_proj.bias",
}


def from_torch_mha_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """nn.MultiheadAttention(batch_first=True) state_dict → MultiHeadAttention's. Rejects unsupported keys."""
    unknown = sorted(set(state_dict) - set(_TORCH_TO_OURS))
    if unknown:
        raise KeyError(f"from_torch_mha_state_dict: unsupported keys {unknown} (only the fused in_proj layout "
                       "without bias_k/bias_v, kdim=vdim=embed_dim, is supported)")
    return {_TORCH_TO_OURS[k]: v for k, v in state_dict.items()}


def to_torch_mha_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """MultiHeadAttention state_dict → nn.MultiheadAttention's (inverse of `from_torch_mha_state_dict`)."""
    back = {ours: theirs for theirs, ours in _TORCH_TO_OURS.items()}
    unknown = sorted(set(state_dict) - set(back))
    if unknown:
        raise KeyError(f"to_torch_mha_state_dict: unexpected keys {unknown}; expected a subset of {sorted(back)}")
    return {back[k]: v for k, v in state_dict.items()}
