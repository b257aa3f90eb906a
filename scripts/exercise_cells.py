"""The checkable exercises' cells, and the script that puts them into the chapters.

    python -m scripts.exercise_cells chapters/06_transformer.ipynb   # run under the chapter's lock
    python -m scripts.exercise_cells                                 # every chapter that has some

Each exercise becomes two cells at the end of its chapter's "Exercises" section (before "Summary", or
before the first hand-written exercise numbered after the checkable ones), both tagged `exercise`: a
markdown cell (the numbered statement and the solution in a folded `dropdown`) and a code cell (the
stub to fill in and the `check` call). The script reads the notebook fresh, removes the cells it put
there before, and inserts the current ones, so it can be run again. The number k of exercise "NN.k"
must continue the chapter's own numbered list (the hand-written exercises before the checkable ones,
then those after them); the script refuses to write if it does not (someone added an exercise:
renumber here and in utils/exercises.py).

nbval runs the stubs as they are: each check prints its "not attempted yet" line, the same every
time. That the solutions pass is tested in tests/test_exercises.py, on the solutions in the page.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

from scripts.setup_cell import ROOT, chapter_paths

TAG = "exercise"
IMPORTS = "import math\nimport torch\nimport torch.nn.functional as F\nfrom utils.exercises import check\n"


@dataclass
class Cell:
    id: str  # "NN.k"
    title: str
    statement: str  # markdown, after "k. **title.** "
    stub: str  # the function to fill in (its body raises NotImplementedError)
    solution: str  # the same function, solved (shown folded)
    imports: str = ""  # extra imports for the stub cell

    @property
    def name(self) -> str:
        return re.search(r"def (\w+)\(", self.stub).group(1)

    def markdown(self) -> str:
        k = int(self.id.split(".")[1])
        solution = "\n".join(("   " + line) if line else "" for line in self.solution.strip().splitlines())
        statement = "\n".join(("   " + line) if (line and i) else line
                              for i, line in enumerate(self.statement.strip().splitlines()))
        return (f"{k}. **{self.title}** {statement}\n\n"
                f"   :::{{admonition}} Solution\n   :class: dropdown\n   ```python\n{solution}\n   ```\n   :::")

    def code(self) -> str:
        return f"{IMPORTS}{self.imports}\n{self.stub.strip()}\n\ncheck(\"{self.id}\", {self.name})"


def _check_line(ex_id: str, name: str, cases: str) -> str:
    return (f"Run the cell: `check(\"{ex_id}\", {name})` tries it on {cases}, and names the first case that "
            "fails and how (shape, dtype or one value), never the answer.")


CELLS: list[Cell] = [
    # -- chapter 1 -------------------------------------------------------------------------------
    Cell("01.5", "Your negative-sampling loss.", """
Write the skip-gram negative-sampling loss (eq. 4 of Mikolov, Sutskever et al. 2013, *Distributed
Representations of Words and Phrases*) from the two tables: `W`
(V, D) holds the word vectors of the centre words, `U` (V, D) the output vectors of the context words
and of the negatives. For each example, $-\\log\\sigma(\\mathbf{u}_o^\\top\\mathbf{w}_c) -
\\sum_k \\log\\sigma(-\\mathbf{u}_{n_k}^\\top\\mathbf{w}_c)$; return the mean over the batch, as
`Word2Vec.loss` does. """ + _check_line("01.5", "my_sgns_loss", "four batches (one of a single example, one "
                                        "with repeated words, one in float64)"), '''
def my_sgns_loss(W, U, centers, contexts, negatives):
    # W, U (V, D); centers (B,), contexts (B,), negatives (B, K) word ids → the mean loss, a scalar
    raise NotImplementedError  # your code here
''', '''
def my_sgns_loss(W, U, centers, contexts, negatives):
    w = W[centers]  # (B, D) centre words' vectors
    pos = (U[contexts] * w).sum(-1)  # (B,) scores of the true contexts
    neg = torch.einsum("bkd,bd->bk", U[negatives], w)  # (B, K) scores of the negatives
    return (-F.logsigmoid(pos) - F.logsigmoid(-neg).sum(-1)).mean()
'''),
    Cell("01.6", "One SGD step by hand.", """
Write the step `Word2Vec.sgd_step` takes, without autograd: one step of plain gradient descent with
learning rate `lr` on the *summed* loss of the batch, which changes only the rows of `W` and `U` that
the batch touches. Return the two updated tables. With $g = \\sigma(s) - y$ for each score $s$ (label
$y$ = 1 for the true context, 0 for a negative), the gradient of $s = \\mathbf{u}^\\top\\mathbf{w}$ is
$g\\,\\mathbf{w}$ for $\\mathbf{u}$ and $g\\,\\mathbf{u}$ for $\\mathbf{w}$ (both computed before the
update). Watch out for a word that appears more than once in a batch. """ + _check_line(
        "01.6", "my_sgns_step", "the same four batches"), '''
def my_sgns_step(W, U, centers, contexts, negatives, lr):
    # W, U (V, D); centers (B,), contexts (B,), negatives (B, K) → the updated (W, U)
    raise NotImplementedError  # your code here
''', '''
def my_sgns_step(W, U, centers, contexts, negatives, lr):
    W, U = W.clone(), U.clone()
    out_ids = torch.cat([contexts[:, None], negatives], 1)  # (B, 1+K): the true context, then the negatives
    w, u = W[centers], U[out_ids]  # (B, D), (B, 1+K, D), before the update
    s = torch.einsum("bkd,bd->bk", u, w)  # (B, 1+K) scores
    labels = torch.zeros_like(s)
    labels[:, 0] = 1
    g = torch.sigmoid(s) - labels  # (B, 1+K) d(summed loss)/d(score)
    U.index_add_(0, out_ids.flatten(), -lr * (g[:, :, None] * w[:, None, :]).flatten(0, 1))  # repeats add up
    W.index_add_(0, centers, -lr * torch.einsum("bk,bkd->bd", g, u))
    return W, U
'''),
    # -- chapter 2 -------------------------------------------------------------------------------
    Cell("02.5", "Your RNN step.", """
Write one step of the Elman RNN with torch.nn's weights:
$\\mathbf{h}' = \\tanh(W_{ih}\\mathbf{x} + \\mathbf{b}_{ih} + W_{hh}\\mathbf{h} + \\mathbf{b}_{hh})$, for a
batch: `x` is (B, C), `h` is (B, H), `W_ih` is (H, C) and `W_hh` is (H, H). """ + _check_line(
        "02.5", "my_rnn_step", "four cases (a batch of one, a zero state, float64)"), '''
def my_rnn_step(x, h, W_ih, W_hh, b_ih, b_hh):
    # x (B, C), h (B, H), W_ih (H, C), W_hh (H, H), b_ih (H,), b_hh (H,) → h_next (B, H)
    raise NotImplementedError  # your code here
''', '''
def my_rnn_step(x, h, W_ih, W_hh, b_ih, b_hh):
    return torch.tanh(x @ W_ih.T + b_ih + h @ W_hh.T + b_hh)  # (B, H)
'''),
    Cell("02.6", "Inputs and targets for truncated BPTT.", """
A language model learns to predict each next character. Given the text as ids `data` (N,), the first
position of each window `starts` (B,) and the window length `block_size` (T), return the inputs
(B, T) and the targets (B, T), as `random_lm_batch` does (it draws `starts` at random; here they are
given). """ + _check_line("02.6", "my_lm_batch", "three cases (a batch of one, windows that reach the "
                          "last character)"), '''
def my_lm_batch(data, starts, block_size):
    # data (N,) ids, starts (B,) window starts, block_size T → inputs (B, T), targets (B, T)
    raise NotImplementedError  # your code here
''', '''
def my_lm_batch(data, starts, block_size):
    windows = data[starts[:, None] + torch.arange(block_size + 1)]  # (B, T+1)
    return windows[:, :-1], windows[:, 1:]  # each target is the next character
'''),
    # -- chapter 3 -------------------------------------------------------------------------------
    Cell("03.5", "Your LSTM cell.", """
Write one LSTM step with torch.nn's weights, without looking back: the four gate blocks are stacked in
the order i, f, g, o in `W_ih` (4H, C), `W_hh` (4H, H) and the biases (4H,). Return the new hidden
state and the new cell state. """ + _check_line("03.5", "my_lstm_cell", "three cases (a batch of one, "
                                                 "float64)"), '''
def my_lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh):
    # x (B, C), h (B, H), c (B, H) → (h_next, c_next), each (B, H)
    raise NotImplementedError  # your code here
''', '''
def my_lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh):
    gates = x @ W_ih.T + b_ih + h @ W_hh.T + b_hh  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=-1)  # 4 × (B, H)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c
'''),
    Cell("03.6", "Your GRU cell.", """
Write one GRU step in torch.nn's form: blocks r, z, n in that order, the reset gate applied to
$W_{hn}\\mathbf{h} + \\mathbf{b}_{hn}$, and $\\mathbf{h}' = (1 - \\mathbf{z}) \\odot \\mathbf{n} +
\\mathbf{z} \\odot \\mathbf{h}$. """ + _check_line("03.6", "my_gru_cell", "three cases (a batch of one, "
                                                    "float64)"), '''
def my_gru_cell(x, h, W_ih, W_hh, b_ih, b_hh):
    # x (B, C), h (B, H), W_ih (3H, C), W_hh (3H, H), biases (3H,) → h_next (B, H)
    raise NotImplementedError  # your code here
''', '''
def my_gru_cell(x, h, W_ih, W_hh, b_ih, b_hh):
    i_r, i_z, i_n = (x @ W_ih.T + b_ih).chunk(3, dim=-1)  # 3 × (B, H)
    h_r, h_z, h_n = (h @ W_hh.T + b_hh).chunk(3, dim=-1)  # 3 × (B, H)
    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h
'''),
    # -- chapter 4 -------------------------------------------------------------------------------
    Cell("04.5", "Greedy decoding for a whole batch.", """
The chapter's `greedy` decodes one source at a time. Write it for a batch: encode, then feed back
each row's most likely token, starting from `<sos>`, for at most `max_len` steps, stopping early once
every row has produced `<eos>`. Once a row has produced `<eos>`, write `<pad>` in its later positions.
Use the model as `greedy` does: `model.encode(src, src_len)`, `model.decoder.init_state(memory)` and
`model.decoder.step(y, state, memory)`. """ + _check_line(
        "04.5", "my_greedy_decode", "four batches from a scripted model (rows that end at different "
        "steps, a batch of one, a row that never ends)"), '''
@torch.no_grad()
def my_greedy_decode(model, src, src_len, max_len=16):
    # src (B, S) ids, src_len (B,) → tokens (B, number of steps), <pad> after each row's <eos>
    raise NotImplementedError  # your code here
''', '''
@torch.no_grad()
def my_greedy_decode(model, src, src_len, max_len=16):
    memory = model.encode(src, src_len)
    state = model.decoder.init_state(memory)
    y = torch.full((src.shape[0],), SOS, device=src.device)  # (B,)
    done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)  # (B,)
    tokens = []
    for _ in range(max_len):
        logits, state, _ = model.decoder.step(y, state, memory)  # (B, V)
        y = logits.argmax(dim=-1)  # (B,)
        tokens.append(torch.where(done, PAD, y))
        done |= y == EOS
        if done.all():
            break
    return torch.stack(tokens, dim=1)  # (B, steps)
''', imports="from utils.seq2seq import SOS, EOS, PAD\n"),
    Cell("04.6", "A loss that ignores the padding.", """
Targets of different lengths are padded with `<pad>` (id `PAD` = 0) to one length. Write the training
loss: the mean cross-entropy over the real target tokens only, as `seq2seq_loss` computes it.
""" + _check_line("04.6", "my_seq2seq_loss", "four batches (no padding, rows of 6, 3 and 1 tokens, a batch "
                  "of one, float64)"), '''
def my_seq2seq_loss(logits, tgt_out):
    # logits (B, T, V), tgt_out (B, T) ids with PAD after the end → the mean loss, a scalar
    raise NotImplementedError  # your code here
''', '''
def my_seq2seq_loss(logits, tgt_out):
    return F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD)
''', imports="from utils.seq2seq import PAD\n"),
    # -- chapter 5 -------------------------------------------------------------------------------
    Cell("05.5", "Dot-product attention over a padded source.", """
Write Luong's "dot" attention for one decoder step: score each key by its dot product with the query,
give padded keys (mask `False`) a weight of exactly zero, and return the context (the weighted sum of
the keys) and the weights. """ + _check_line("05.5", "my_dot_attention", "five cases (sources padded to "
                                             "different lengths, a batch of one, a single key, float64)"), '''
def my_dot_attention(query, keys, mask):
    # query (B, Q), keys (B, S, Q), mask (B, S) bool, True = real key → context (B, Q), weights (B, S)
    raise NotImplementedError  # your code here
''', '''
def my_dot_attention(query, keys, mask):
    scores = (keys @ query[:, :, None])[:, :, 0]  # (B, S)
    scores = scores.masked_fill(~mask, float("-inf"))  # padding can never win
    weights = torch.softmax(scores, dim=-1)  # (B, S)
    return (weights[:, :, None] * keys).sum(dim=1), weights  # (B, Q), (B, S)
'''),
    Cell("05.6", "Additive attention from its weights.", """
Write Bahdanau's additive attention as a function of its three weight matrices (the layouts of
`nn.Linear` weights): score$(\\mathbf{q}, \\mathbf{k}) = \\mathbf{v}^\\top \\tanh(W_q\\mathbf{q} +
W_k\\mathbf{k})$ with `W_q` (A, Q), `W_k` (A, K) and `v` (1, A); mask and context as in the previous
exercise. """ + _check_line("05.6", "my_additive_attention", "the same five kinds of case, with Q, K and A "
                            "all different"), '''
def my_additive_attention(query, keys, mask, W_q, W_k, v):
    # query (B, Q), keys (B, S, K), mask (B, S) True = real key → context (B, K), weights (B, S)
    raise NotImplementedError  # your code here
''', '''
def my_additive_attention(query, keys, mask, W_q, W_k, v):
    hidden = torch.tanh((query @ W_q.T)[:, None, :] + keys @ W_k.T)  # (B, 1, A) + (B, S, A) -> (B, S, A)
    scores = (hidden @ v.T)[:, :, 0]  # (B, S)
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)  # (B, S)
    return (weights[:, :, None] * keys).sum(dim=1), weights  # (B, K), (B, S)
'''),
    # -- chapter 6 -------------------------------------------------------------------------------
    Cell("06.5", "Scaled dot-product attention with masks.", """
Write $\\mathrm{softmax}(QK^\\top/\\sqrt{D})\\,V$ for any leading dimensions (a batch, or a batch and
heads), with an optional boolean mask that broadcasts to the scores' shape (..., T, S), `True` where a
query may attend to a key. Return the output and the attention weights. """ + _check_line(
        "06.5", "my_attention", "five cases (heads with a padding mask, a causal mask, cross-attention with "
        "T ≠ S and values of another width, float64)"), '''
def my_attention(q, k, v, mask=None):
    # q (..., T, D), k (..., S, D), v (..., S, Dv), mask None or bool (..., T, S), True = may attend
    # → out (..., T, Dv), weights (..., T, S)
    raise NotImplementedError  # your code here
''', '''
def my_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # a blocked key gets weight exactly 0
    weights = torch.softmax(scores, dim=-1)  # (..., T, S)
    return weights @ v, weights  # (..., T, Dv), (..., T, S)
'''),
    Cell("06.6", "Sinusoidal positions.", """
Write the table of sinusoidal position vectors: $PE[p, 2i] = \\sin(p / 10000^{2i/C})$ and
$PE[p, 2i+1] = \\cos(p / 10000^{2i/C})$, returned in torch's default dtype (float32).
""" + _check_line("06.6", "my_sinusoids", "four sizes (one position, 64 positions)"), '''
def my_sinusoids(T, C):
    # T positions, C (even) channels → (T, C) table, float32
    raise NotImplementedError  # your code here
''', '''
def my_sinusoids(T, C):
    p = torch.arange(T, dtype=torch.float64)[:, None]  # (T, 1)
    freq = 10000 ** (-torch.arange(0, C, 2, dtype=torch.float64) / C)  # (C/2,)
    pe = torch.zeros(T, C, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(p * freq), torch.cos(p * freq)
    return pe.float()  # (T, C)
'''),
    # -- chapter 7 -------------------------------------------------------------------------------
    Cell("07.6", "Causal self-attention, GPT's way.", """
Write GPT-2's attention block as a function of its weights: one fused projection `W_attn` (3C, C)
with bias `b_attn` (3C,) gives the queries, keys and values (in that order along the output), which
are split into `n_head` heads; each head attends causally (position t sees positions 0..t); the heads
are joined and projected by `W_proj` (C, C), `b_proj` (C,). """ + _check_line(
        "07.6", "my_causal_self_attention", "four cases (a batch of one, a single position, one head, "
        "float64)"), '''
def my_causal_self_attention(x, W_attn, b_attn, W_proj, b_proj, n_head):
    # x (B, T, C) → y (B, T, C)
    raise NotImplementedError  # your code here
''', '''
def my_causal_self_attention(x, W_attn, b_attn, W_proj, b_proj, n_head):
    B, T, C = x.shape
    q, k, v = (x @ W_attn.T + b_attn).split(C, dim=-1)  # 3 × (B, T, C)
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
    scores = q @ k.transpose(-2, -1) / math.sqrt(C // n_head)  # (B, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # (T, T)
    y = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1) @ v  # (B, H, T, D)
    y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): the heads side by side
    return y @ W_proj.T + b_proj
'''),
    Cell("07.7", "One BPE merge.", """
Write the step that BPE training and encoding repeat: replace every occurrence of `pair` in the list
`ids` by `new_id`, scanning left to right. """ + _check_line("07.7", "my_merge", "seven lists (the "
                                                               "pair at the end, absent, overlapping)"), '''
def my_merge(ids, pair, new_id):
    # ids: list of ints, pair: (a, b), new_id: int → a new list
    raise NotImplementedError  # your code here
''', '''
def my_merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2  # both ids are used up: overlaps resolve from the left
        else:
            out.append(ids[i])
            i += 1
    return out
'''),
    # -- chapter 8 -------------------------------------------------------------------------------
    Cell("08.6", "Patchify with reshapes.", """
Cut a batch of images (B, C_in, height, width) into non-overlapping P×P patches with `reshape` and
`permute` only: patches numbered row by row, each flattened channel first (channel, row, column), so the
result is (B, N, C_in·P·P) with N = (height/P)(width/P), as `utils.vit.patchify` returns. """ + _check_line(
        "08.6", "my_patchify", "five batches (non-square images, a single patch, float64)"), '''
def my_patchify(images, P):
    # images (B, C_in, height, width), P divides height and width → patches (B, N, C_in·P·P)
    raise NotImplementedError  # your code here
''', '''
def my_patchify(images, P):
    B, C_in, height, width = images.shape
    x = images.reshape(B, C_in, height // P, P, width // P, P)  # (B, C_in, rows, P, cols, P)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, rows, cols, C_in, P, P)
    return x.reshape(B, (height // P) * (width // P), C_in * P * P)  # (B, N, C_in·P·P)
'''),
    Cell("08.7", "Attention rollout.", """
Write attention rollout for one image: from the maps `attn` (L, H, T, T) of L layers, average the
heads, mix each layer's map with the identity for the residual path, $\\hat A = \\tfrac12 I +
\\tfrac12 A$ (rows renormalised), and multiply the layers, the first layer on the right. """ + _check_line(
        "08.7", "my_rollout", "four stacks of maps (one layer, one head, float64)"), '''
def my_rollout(attn):
    # attn (L, H, T, T), rows summing to 1 → rollout (T, T)
    raise NotImplementedError  # your code here
''', '''
def my_rollout(attn):
    T = attn.shape[-1]
    eye = torch.eye(T, dtype=attn.dtype, device=attn.device)
    rollout = eye
    for layer in attn:  # (H, T, T), the first layer first
        a = 0.5 * eye + 0.5 * layer.mean(dim=0)  # (T, T)
        rollout = (a / a.sum(dim=-1, keepdim=True)) @ rollout
    return rollout
'''),
    # -- chapter 9 -------------------------------------------------------------------------------
    Cell("09.5", "The symmetric contrastive loss.", """
Write CLIP's loss from the (B, B) matrix `logits_per_image` (image i's true caption is caption i):
the cross-entropy of each image over the captions and of each caption over the images, averaged.
""" + _check_line("09.5", "my_clip_loss", "four batches (a batch of one, logits near 100, float64)"), '''
def my_clip_loss(logits_per_image):
    # logits_per_image (B, B) → the loss, a scalar
    raise NotImplementedError  # your code here
''', '''
def my_clip_loss(logits_per_image):
    labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)  # (B,)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.T, labels)) / 2
'''),
    Cell("09.6", "CLIP's logits.", """
Write the logits CLIP computes from the two towers' raw (not normalised) features and its learned
`logit_scale` (a log): cosine similarities times $\\exp(\\text{logit\\_scale})$.
Return `logits_per_image` (B_i, B_t) and `logits_per_text` (B_t, B_i). """ + _check_line(
        "09.6", "my_clip_logits", "four pairs of batches from a small CLIP (unequal numbers of images "
        "and captions, a scale of 1 and of 100)"), '''
def my_clip_logits(image_features, text_features, logit_scale):
    # image_features (B_i, E), text_features (B_t, E), logit_scale a 0-dim tensor
    # → logits_per_image (B_i, B_t), logits_per_text (B_t, B_i)
    raise NotImplementedError  # your code here
''', '''
def my_clip_logits(image_features, text_features, logit_scale):
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)  # (B_i, E)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)  # (B_t, E)
    logits_per_image = logit_scale.exp() * image_features @ text_features.T  # (B_i, B_t)
    return logits_per_image, logits_per_image.T
'''),

    # -- chapter 10 ------------------------------------------------------------------------------
    Cell("10.5", "LLaVA's merge.", """
Write the merge that puts an image into the text: `embeds` (B, T, C) are the token embeddings of `ids`
(B, T); wherever `ids` holds `image_token_id`, the output holds the next of image b's visual tokens
`visual[b]` (N, C), in order; everywhere else it holds `embeds`. Sequence b holds exactly N image tokens.
""" + _check_line("10.5", "my_merge", "three batches (the image first, after a start token, one pooled "
                  "token per image in float64)"), '''
def my_merge(embeds, ids, image_token_id, visual):
    # embeds (B, T, C), ids (B, T), visual (B, N, C) → (B, T, C)
    raise NotImplementedError  # your code here
''', '''
def my_merge(embeds, ids, image_token_id, visual):
    out = embeds.clone()  # (B, T, C)
    for b in range(ids.shape[0]):
        positions = (ids[b] == image_token_id).nonzero().flatten()  # (N,) where image b goes
        out[b, positions] = visual[b].to(embeds.dtype)  # (N, C) in order
    return out
'''),
    Cell("10.6", "Targets for the answer only.", """
Write the next-token targets that train on the answer only: position t predicts `ids[b, t + 1]` when
t + 1 ≥ `answer_start[b]`, and gets −100 (ignored by `F.cross_entropy`) everywhere else, including the
last position, which predicts nothing.
""" + _check_line("10.6", "my_targets", "three batches (answers at different places, an answer of one "
                  "token at the end)"), '''
def my_targets(ids, answer_start):
    # ids (B, T), answer_start a list of B positions → targets (B, T), -100 where nothing is scored
    raise NotImplementedError  # your code here
''', '''
def my_targets(ids, answer_start):
    targets = torch.full_like(ids, -100)  # (B, T)
    for b, start in enumerate(answer_start):
        for t in range(max(start - 1, 0), ids.shape[1] - 1):  # t + 1 runs over the answer
            targets[b, t] = ids[b, t + 1]
    return targets
'''),
    Cell("11.6", "Groups of 4-bit weights.", """
Write symmetric group-wise fake quantization: cut each row of `w` (O, I) into groups of `group_size`
consecutive weights; each group gets the scale max|w| / (2^(bits−1) − 1); round w / scale to the nearest
integer, clamp to ±(2^(bits−1) − 1), and return the dequantized weights (O, I). `group_size` divides I.
""" + _check_line("11.6", "my_fake_quantize", "four matrices (4 and 8 bits, one large weight, a group of "
                  "zeros)"), '''
def my_fake_quantize(w, bits, group_size):
    # w (O, I) float → (O, I): each group of group_size weights quantized with its own scale
    raise NotImplementedError  # your code here
''', '''
def my_fake_quantize(w, bits, group_size):
    O, I = w.shape
    groups = w.reshape(O, I // group_size, group_size)  # (O, G, g)
    qmax = 2 ** (bits - 1) - 1
    scale = groups.abs().amax(dim=-1, keepdim=True) / qmax  # (O, G, 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group
    q = torch.clamp(torch.round(groups / scale), -qmax, qmax)  # integers
    return (q * scale).reshape(O, I)
'''),
    Cell("11.7", "Hinton's loss.", """
Write the distillation loss for logits (…, V): α T² KL(p_T ‖ q_T) + (1 − α) CE(student, targets), where
p_T and q_T are the teacher's and the student's softmax at temperature T (Hinton et al.'s letter, as in
the section above; elsewhere the book writes a temperature τ), the KL summed over the vocabulary and
averaged over positions, and the cross-entropy taken at T = 1.
""" + _check_line("11.7", "my_kd_loss", "four batches (T = 1, 2, 4, float64, a student equal to its "
                  "teacher)"), '''
def my_kd_loss(student_logits, teacher_logits, targets, T, alpha):
    # logits (..., V), targets (...) ids, T the temperature → a scalar
    raise NotImplementedError  # your code here
''', '''
def my_kd_loss(student_logits, teacher_logits, targets, T, alpha):
    V = student_logits.shape[-1]
    log_q = F.log_softmax(student_logits.reshape(-1, V) / T, dim=-1)  # (positions, V) student
    log_p = F.log_softmax(teacher_logits.reshape(-1, V) / T, dim=-1)  # (positions, V) teacher
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()  # per position, then averaged
    ce = F.cross_entropy(student_logits.reshape(-1, V), targets.reshape(-1))
    return alpha * T ** 2 * kl + (1 - alpha) * ce
'''),
    # -- chapter 12 ------------------------------------------------------------------------------
    Cell("12.1", "Noising in one jump.", """
Write DDPM's forward process in closed form (eq. 4 of Ho et al. 2020): x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε,
with ᾱ_t = `alphas_cumprod[t]` from the schedule's (T,) table. `x0` and `noise` are (B, C_in, height, width) and `t` (B,)
holds one timestep per image, so image b is noised with ᾱ at `t[b]`; return x_t in the inputs' dtype, as
`NoiseSchedule.add_noise` does.
""" + _check_line("12.1", "my_add_noise", "six batches (t = 0 and t = T − 1, a batch of one, a different t per "
                  "image, a cosine schedule, float64)"), '''
def my_add_noise(x0, noise, t, alphas_cumprod):
    # x0, noise (B, C_in, height, width); t (B,) int64 timesteps; alphas_cumprod (T,) → x_t (B, C_in, height, width)
    raise NotImplementedError  # your code here
''', '''
def my_add_noise(x0, noise, t, alphas_cumprod):
    abar = alphas_cumprod[t].to(x0.dtype).view(-1, 1, 1, 1)  # (B, 1, 1, 1): one ᾱ_t per image
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise
'''),
    Cell("12.2", "The nearest code.", """
Write vector quantization's lookup (eq. 2 of van den Oord et al. 2017): for every D-vector of `z` (…, D),
the index of the nearest row of `codebook` (K, D) in squared Euclidean distance ‖z − e_k‖², an int64
tensor of shape (…), as `VectorQuantizer.nearest` returns. Any number of leading axes: a list of vectors
(N, D) or a grid (B, G, G, D) of them.
""" + _check_line("12.2", "my_nearest_codes", "five inputs (a list of vectors and two grids, a codebook of "
                  "one code, float64, a code far away)"), '''
def my_nearest_codes(z, codebook):
    # z (..., D); codebook (K, D) → (...,) int64: the index of each vector's nearest code
    raise NotImplementedError  # your code here
''', '''
def my_nearest_codes(z, codebook):
    diff = z[..., None, :] - codebook  # (..., K, D) every vector minus every code
    return diff.pow(2).sum(dim=-1).argmin(dim=-1)  # (...,) the code at the smallest squared distance
'''),
]


def cells_for(chapter: str) -> list[Cell]:
    """The exercise cells of chapter "NN"."""
    return [c for c in CELLS if c.id.split(".")[0] == chapter]


def _numbered(source: str) -> list[int]:
    return [int(m) for m in re.findall(r"^(\d+)\. \*\*", source, re.M)]


def insert(path: Path) -> int:
    """Put the chapter's exercise cells into the notebook at `path` (read fresh); returns how many."""
    chapter = path.name[:2]
    cells = cells_for(chapter)
    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if TAG not in c.metadata.get("tags", [])]
    start = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "## Exercises" in c.source)
    end = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "## Summary" in c.source)
    wanted = [int(c.id.split(".")[1]) for c in cells]
    # hand-written exercises numbered below the checkable ones come before them, those numbered above after
    # them (chapter 1: 1-4, then 01.5 and 01.6, then 7): the cells are inserted before the first of those
    marked = [(i, _numbered(c.source)) for i, c in enumerate(nb.cells[start:end], start) if c.cell_type == "markdown"]
    after = [i for i, numbers in marked if numbers and wanted and numbers[0] > wanted[-1]]
    end = after[0] if after else end
    before = [n for i, numbers in marked if i < end for n in numbers]
    later = [n for i, numbers in marked if i >= end for n in numbers]
    if before + wanted + later != list(range(1, len(before) + len(wanted) + len(later) + 1)):
        raise SystemExit(f"{path.name}: the hand-written exercises {before}, then the checkable ones {wanted}, "
                         f"then the hand-written {later} are not numbered 1, 2, 3, ... in order: renumber them in "
                         "scripts/exercise_cells.py and utils/exercises.py, or in the chapter")
    new = []
    for c in cells:
        new.append(nbformat.v4.new_markdown_cell(c.markdown(), metadata={"tags": [TAG]}))
        new.append(nbformat.v4.new_code_cell(c.code(), metadata={"tags": [TAG]}))
    nb.cells[end:end] = new
    nbformat.write(nb, path)
    return len(cells)


def main(argv: list[str]) -> int:
    paths = [Path(a).resolve() for a in argv] or [p for p in chapter_paths() if cells_for(p.name[:2])]
    for path in paths:
        print(f"{path.relative_to(ROOT)}: {insert(path)} exercise(s) inserted")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
