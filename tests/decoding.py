"""A shared check for every model that utils.seq2seq's decoders drive (LSTM with attention, Transformer)."""
from __future__ import annotations

import pytest
import torch

from utils import seq2seq as S


def check_beam_agrees_with_greedy(model, src: torch.Tensor, src_len: torch.Tensor, max_len: int = 14) -> S.Decoded:
    """Beam width 1 is greedy decoding (same tokens, same log p); width 4's candidates have the log p that
    sequence_log_prob recomputes (so reorder_state is right). Returns the greedy result."""
    greedy = S.greedy_decode(model, src, src_len, max_len=max_len, return_attn=True)
    for i in range(src.shape[0]):
        (best,) = S.beam_search(model, src[i, :src_len[i]], beam_width=1, max_len=max_len)
        assert best.tokens == [t for t in greedy.tokens[i].tolist() if t != S.PAD]
        assert best.log_prob == pytest.approx(greedy.log_prob[i].item(), abs=1e-10)
    for c in S.beam_search(model, src[0, :src_len[0]], beam_width=4, max_len=max_len):
        recomputed = S.sequence_log_prob(model, src[:1, :src_len[0]], src_len[:1], torch.tensor([c.tokens]))
        assert c.log_prob == pytest.approx(recomputed.item(), abs=1e-9)
    return greedy
