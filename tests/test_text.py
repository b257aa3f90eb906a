import pytest
import torch

from utils.text import UNK, CharVocab, Vocab, words


def test_words_lowercases_and_keeps_inner_apostrophes():
    assert words("ROMEO: O'er the hill, I'll go -- 'tis late!") == ["romeo", "o'er", "the", "hill", "i'll", "go", "tis", "late"]


def test_vocab_orders_by_frequency_then_alphabet():
    v = Vocab.from_tokens("b a c a b a".split())
    assert v.itos == ["a", "b", "c"] and v.counts.tolist() == [3, 2, 1]
    assert v.decode(v.encode(["c", "a"])) == ["c", "a"]


def test_min_count_drops_rare_tokens():
    v = Vocab.from_tokens("a a b".split(), min_count=2)
    assert v.itos == ["a"]


def test_unknown_token_is_a_clear_error_without_unk():
    v = Vocab.from_tokens(["a", "b"])
    with pytest.raises(KeyError, match="unknown token 'zebra'"):
        v.encode(["zebra"])


def test_unknown_token_maps_to_unk_when_enabled():
    v = Vocab.from_tokens(["a", "b"], unk=True)
    assert v.itos[0] == UNK and v.encode(["zebra", "a"]).tolist() == [0, v.index("a")]


def test_empty_corpus_is_a_clear_error():
    with pytest.raises(ValueError, match="empty corpus"):
        Vocab.from_tokens([])
    with pytest.raises(ValueError, match="min_count=5"):
        Vocab.from_tokens(["a"], min_count=5)
    with pytest.raises(ValueError, match="empty text"):
        CharVocab.from_text("")


def test_decode_rejects_out_of_range_ids():
    v = Vocab.from_tokens(["a"])
    with pytest.raises(IndexError, match="outside the vocabulary range"):
        v.decode([3])


def test_char_vocab_round_trip():
    text = "First Citizen:\nSpeak, speak."
    v = CharVocab.from_text(text)
    ids = v.encode(text)
    assert ids.dtype == torch.long and v.decode(ids) == text
    assert v.itos == sorted(set(text))
    with pytest.raises(KeyError, match="unknown token 'Z'"):
        v.encode("Z")
