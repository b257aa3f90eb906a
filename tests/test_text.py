import json
import random
import re
from collections import Counter

import pytest
import torch

from utils import text as text_module
from utils.text import (GPT2_SPLIT_PATTERN, GPT2_SPLIT_PATTERN_RE, UNK, BPETokenizer, CharVocab, Vocab,
                        merge_pair, words)


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


# ------------------------------------------------------------------------------------------------
# Byte-level BPE
# ------------------------------------------------------------------------------------------------
# The opening of Tiny Shakespeare (public domain), a few times over so that pairs repeat.
CORPUS = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?

All:
Resolved. resolved.

First Citizen:
First, you know Caius Marcius is chief enemy to the people.

All:
We know't, we know't.

First Citizen:
Let us kill him, and we'll have corn at our own price.
Is't a verdict?
""" * 3

ROUND_TRIP = [
    "", " ", "a", "   \n\n\t  \r\n  ", "First Citizen:", "hello world", "Hello,   world!!  ",
    "naïve café, déjà vu, Ærøskøbing", "東京タワーは高い。", "한국어 텍스트", "Привет, мир",
    "😀👍🏽 family: 👨‍👩‍👧 flags 🇫🇷", "e\u0301 (combining accent)", "x² ½ Ⅻ ٣٤٥",
    "unseen words: xylophonequux zzyzx qwfpgj", "\x00\x01\x7f\u200b\ufeff", "a" * 60, "<|endoftext|>",
    "tab\tsep\tvalues\n" * 3, "don't, we'll, they're, I'VE",
]


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer().train(CORPUS, vocab_size=320)


def test_bpe_hand_computed_example():
    # "aaabdaaabac" as bytes: a=97 b=98 c=99 d=100, one chunk (pattern=None).
    # step 1  pairs: aa x4 (overlaps count: "aaa" holds two), ab x2, bd da ba ac x1 -> (97, 97) = 256
    #         aaabdaaabac -> [256 a b d 256 a b a c]   ("aaa" merges left first: [256, a])
    # step 2  (256,97) x2 and (97,98) x2 tie -> the smaller pair wins: (97, 98) = 257
    #         -> [256 257 d 256 257 a c]
    # step 3  (256,257) x2 -> 258 = b"aaab"          -> [258 d 258 a c]
    # step 4  (258,100) (100,258) (258,97) (97,99) all x1 -> smallest: (97, 99) = 259 = b"ac"
    #         -> [258 d 258 259]
    t = BPETokenizer(pattern=None).train("aaabdaaabac", vocab_size=260)
    assert list(t.merges.items()) == [((97, 97), 256), ((97, 98), 257), ((256, 257), 258), ((97, 99), 259)]
    assert [t.vocab[i] for i in range(256, 260)] == [b"aa", b"ab", b"aaab", b"ac"]
    assert t.encode("aaabdaaabac") == [258, 100, 258, 259]
    assert t.encode("aaab aa") == [258, 32, 256]  # an unseen string still uses the merges
    assert t.decode([258, 100, 258, 259]) == "aaabdaaabac"
    assert t.vocab_size == 260


def test_encode_applies_merges_in_the_order_they_were_learned(tmp_path):
    # merges: (b, c) -> 256 first, then (a, b) -> 257. In "abc" both pairs occur; the earlier merge wins,
    # as it did in training, so "abc" is [a, bc], not [ab, c].
    path = tmp_path / "tok.json"
    path.write_text(json.dumps({"format": "onehot-to-clip/bpe", "version": 1, "pattern": None,
                                "merges": [[98, 99], [97, 98]], "special_tokens": {}}), encoding="utf-8")
    t = BPETokenizer.load(path)
    assert t.encode("abc") == [97, 256] and t.encode("abab") == [257, 257]
    assert t.vocab[256] == b"bc" and t.vocab[257] == b"ab"


def test_merge_pair_resolves_overlaps_to_the_left():
    assert merge_pair([1, 1, 1, 2, 1, 1], (1, 1), 9) == [9, 1, 2, 9]
    assert merge_pair([], (1, 1), 9) == [] and merge_pair([1], (1, 1), 9) == [1]


def naive_train(chunks, vocab_size):
    """Reference: recount every pair over every chunk occurrence at every step (no caching, no weights)."""
    words = [list(c.encode("utf-8")) for c in chunks]
    merges = {}
    for new_id in range(256, vocab_size):
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        if not counts:
            break
        top = max(counts.values())
        pair = min(p for p, c in counts.items() if c == top)
        merges[pair] = new_id
        words = [merge_pair(w, pair, new_id) for w in words]
    return merges


@pytest.mark.parametrize("pattern", [GPT2_SPLIT_PATTERN_RE, None], ids=["gpt2-re", "plain"])
def test_incremental_training_equals_naive_recount(pattern):
    text = CORPUS[: len(CORPUS) // 3]
    t = BPETokenizer(pattern).train(text, vocab_size=300)
    assert len(t.merges) == 44
    assert t.merges == naive_train(t.chunks(text), 300)
    assert list(t.merges) == list(naive_train(t.chunks(text), 300))  # same order


def test_training_is_deterministic_and_a_prefix_of_longer_training(tok):
    again = BPETokenizer().train(CORPUS, vocab_size=320)
    assert list(again.merges.items()) == list(tok.merges.items()) and again.vocab == tok.vocab
    shorter = BPETokenizer().train(CORPUS, vocab_size=290)
    assert list(shorter.merges.items()) == list(tok.merges.items())[:34]


@pytest.mark.parametrize("s", ROUND_TRIP)
def test_round_trip_is_exact(tok, s):
    ids = tok.encode(s)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == s


def test_round_trip_random_strings_all_patterns(tok):
    rng = random.Random(0)
    pool = ("abcdefghij ABC  \n\t.,;:'!?-_0123456789" "éàüßøñ" "東京한국" "😀👍🏽\u200d" "\u0301²½Ⅻ")
    plain = BPETokenizer(pattern=None).train(CORPUS[:600], vocab_size=280)
    tokenizers = [tok, plain]
    try:
        import regex  # noqa: F401
        tokenizers.append(BPETokenizer(GPT2_SPLIT_PATTERN).train(CORPUS[:600], vocab_size=280))
    except ImportError:
        pass
    for _ in range(150):
        s = "".join(rng.choice(pool) for _ in range(rng.randrange(0, 40)))
        for t in tokenizers:
            assert t.decode(t.encode(s)) == s, (t, s)


def test_bpe_compresses_seen_text_better_than_unseen(tok):
    seen = "First Citizen:\nBefore we proceed any further, hear me speak."
    assert len(tok.encode(seen)) < 0.6 * len(seen.encode("utf-8"))
    assert len(tok.encode("東京")) == len("東京".encode("utf-8"))  # unseen: falls back to one id per byte


def token_boundaries(t, ids):
    """Byte offsets where tokens start/end."""
    out, pos = {0}, 0
    for i in ids:
        pos += len(t.decode_bytes([i]))
        out.add(pos)
    return out


def test_merges_never_cross_chunk_boundaries():
    text = "the. she. he. " * 40 + "We know't, we know't.\n\n" * 20
    chunked = BPETokenizer().train(text, vocab_size=270)
    plain = BPETokenizer(pattern=None).train(text, vocab_size=270)
    cuts, pos = {0}, 0
    for c in chunked.chunks(text):
        pos += len(c.encode("utf-8"))
        cuts.add(pos)
    assert cuts <= token_boundaries(chunked, chunked.encode(text))
    assert not any(b"e." in v or b". " in v for v in chunked.vocab.values())
    # without pre-tokenization the same text does grow tokens across those boundaries
    assert not cuts <= token_boundaries(plain, plain.encode(text))
    assert any(b"e." in v for v in plain.vocab.values())


def test_chunks_follow_the_gpt2_pattern():
    s = "Hello, world! It's 2024 -- naïve  café\n\n  東京 😀 x_y"
    assert BPETokenizer().chunks(s) == ["Hello", ",", " world", "!", " It", "'s", " 2024", " --", " naïve", " ",
                                        " café", "\n\n ", " 東京", " 😀", " x", "_", "y"]
    regex = pytest.importorskip("regex")
    assert regex.findall(GPT2_SPLIT_PATTERN, s) == re.findall(GPT2_SPLIT_PATTERN_RE, s)
    # the documented difference: non-decimal numbers (No/Nl) are letters for `re`
    assert regex.findall(GPT2_SPLIT_PATTERN, "x²") == ["x", "²"]
    assert re.findall(GPT2_SPLIT_PATTERN_RE, "x²") == ["x²"]


def test_pattern_that_loses_text_is_an_error():
    t = BPETokenizer(pattern=r"[a-z]+")
    with pytest.raises(ValueError, match="does not cover every character"):
        t.encode("hello world")
    with pytest.raises(TypeError, match="pattern must be"):
        BPETokenizer(pattern=3)


def test_special_tokens(tok):
    t = BPETokenizer().train(CORPUS, vocab_size=300)
    t.register_special_tokens({"<|endoftext|>": 300})
    assert t.vocab_size == 301
    s = "Speak, speak.<|endoftext|>First Citizen:"
    ids = t.encode(s, allowed_special="all")
    assert ids.count(300) == 1 and ids == t.encode("Speak, speak.") + [300] + t.encode("First Citizen:")
    assert t.decode(ids) == s
    assert t.encode(s, allowed_special={"<|endoftext|>"}) == ids
    with pytest.raises(ValueError, match=re.escape("special token '<|endoftext|>' (at character 13)")):
        t.encode(s)  # default "none_raise"
    with pytest.raises(ValueError, match=re.escape("'<|endoftext|>'")):
        t.encode(s, allowed_special=set())
    plain_ids = t.encode(s, allowed_special="none")
    assert 300 not in plain_ids and t.decode(plain_ids) == s
    with pytest.raises(ValueError, match="not registered"):
        t.encode(s, allowed_special={"<|pad|>"})
    with pytest.raises(ValueError, match="allowed_special must be"):
        t.encode(s, allowed_special="some")
    with pytest.raises(ValueError, match="byte or merge id"):
        t.register_special_tokens({"<|pad|>": 299})
    with pytest.raises(ValueError, match="share an id"):
        t.register_special_tokens({"<|pad|>": 300})
    with pytest.raises(ValueError, match="register special tokens after training"):
        t.train(CORPUS, vocab_size=400)


def test_training_skips_registered_special_tokens():
    text = "<|endoftext|>".join(["Speak, speak."] * 30)
    t = BPETokenizer()
    t.register_special_tokens({"<|endoftext|>": 1000})
    t.train(text, vocab_size=262)  # Speak, speak: 6 merges exhaust it
    assert [t.vocab[i] for i in t.merges.values()] == [b"ak", b"eak", b"peak", b" s", b"Speak", b" speak"]
    plain = BPETokenizer().train(text, vocab_size=270)  # without registering, the marker is learned as text
    assert any(b"<|" in v for v in plain.vocab.values())


def test_longest_special_token_wins():
    t = BPETokenizer()
    t.register_special_tokens({"<|a|>": 256, "<|a|>b": 257})
    assert t.encode("x<|a|>b<|a|>", allowed_special="all") == [ord("x"), 257, 256]


def test_decode_invalid_utf8_and_bad_ids(tok):
    first = list("東".encode("utf-8"))
    assert tok.decode(first) == "東" and tok.decode(first[:1]) == "\ufffd"
    assert tok.decode(torch.tensor(tok.encode("speak"))) == "speak"
    with pytest.raises(IndexError, match="token id 9999 is not in this tokenizer"):
        tok.decode([9999])
    with pytest.raises(IndexError, match="token id -1"):
        tok.decode([-1])
    with pytest.raises(TypeError, match="token ids must be integers"):
        tok.decode([1.5])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(torch.zeros(2, 2, dtype=torch.long))


def test_bpe_bad_input():
    t = BPETokenizer()
    with pytest.raises(ValueError, match="at least 256"):
        t.train("abc", vocab_size=255)
    for bad in ("300", 300.0, True):
        with pytest.raises(TypeError, match="vocab_size must be an int"):
            t.train("abc", vocab_size=bad)
    with pytest.raises(ValueError, match="empty text"):
        t.train("", vocab_size=300)
    with pytest.raises(TypeError, match="needs a str"):
        t.train(b"abc", vocab_size=300)
    for bad in (b"abc", None, ["a"]):
        with pytest.raises(TypeError, match="encode needs a str"):
            t.encode(bad)
    with pytest.raises(ValueError, match="lone surrogate"):
        t.encode("ab\ud800c")


def test_training_stops_early_with_a_warning_on_tiny_text():
    with pytest.warns(UserWarning, match="stopped at vocab_size=258"):
        t = BPETokenizer().train("ab ab", vocab_size=300)  # chunks "ab", " ab": merges ab, then " " + ab
    assert len(t.merges) == 2 and t.encode("ab ab") == [256, 257]


def test_save_load_round_trip(tok, tmp_path):
    t = BPETokenizer().train(CORPUS, vocab_size=300)
    t.register_special_tokens({"<|endoftext|>": 300})
    path = t.save(tmp_path / "sub" / "tok.json")
    u = BPETokenizer.load(path)
    assert list(u.merges.items()) == list(t.merges.items()) and u.vocab == t.vocab
    assert u.pattern == t.pattern and u.special_tokens == t.special_tokens
    for s in ROUND_TRIP:
        assert u.encode(s, allowed_special="all") == t.encode(s, allowed_special="all")
    assert [p.name for p in path.parent.iterdir()] == ["tok.json"]  # no temporary file left over
    plain = BPETokenizer(pattern=None).train("aaabdaaabac", 260)
    assert BPETokenizer.load(plain.save(tmp_path / "plain.json")).encode("aaabdaaabac") == [258, 100, 258, 259]


def test_load_rejects_truncated_or_foreign_files(tok, tmp_path):
    path = tok.save(tmp_path / "tok.json")
    good = path.read_text(encoding="utf-8")
    path.write_text(good[: len(good) // 2], encoding="utf-8")
    with pytest.raises(ValueError, match="not a valid BPE tokenizer file.*truncated"):
        BPETokenizer.load(path)
    data = json.loads(good)
    cases = [
        ({**data, "format": "something-else"}, "format is 'something-else'"),
        ({**data, "version": 99}, "version 99 is not supported"),
        ({k: v for k, v in data.items() if k != "merges"}, "missing \\['merges'\\]"),
        ({**data, "merges": [[97, 97], [300, 97]]}, "merge 1 is \\[300, 97\\]"),
        ({**data, "merges": [[97, 97], [97, 97]]}, "repeats merge 0"),
        ({**data, "special_tokens": {"<|eot|>": 3}}, "byte or merge id"),
        ([1, 2], "format is 'list'"),
    ]
    for content, message in cases:
        path.write_text(json.dumps(content), encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            BPETokenizer.load(path)


def test_failed_save_leaves_no_partial_file(tok, tmp_path, monkeypatch):
    path = tok.save(tmp_path / "tok.json")
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(text_module.os, "replace", broken_replace)
    other = BPETokenizer(pattern=None).train("aaabdaaabac", 260)
    with pytest.raises(OSError, match="disk full"):
        other.save(path)
    with pytest.raises(OSError, match="disk full"):
        other.save(tmp_path / "new.json")
    assert path.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.json"]  # and no temporary file is left



# ------------------------------------------------------------------------------------------------
# Against a production trainer: Hugging Face `tokenizers` (the Rust BPE trainer behind the Hub's
# tokenizers), on the same chunks. Both trainers merge the most frequent pair and break a tie by the
# smallest pair of ids. Ours numbers a byte by its value. `tokenizers` numbers its alphabet by code
# point, and its ByteLevel step shows bytes as GPT-2's printable stand-ins, which moves space, newline
# and the other unprintable bytes behind the letters, so the two break some ties differently (and
# the merges that follow can differ too). Here each byte b is shown to `tokenizers` as the letter
# chr(256 + b), so its ids are the byte values too: then every merge must agree, in order.
# ------------------------------------------------------------------------------------------------
def as_letters(chunk: str) -> str:
    return "".join(chr(256 + b) for b in chunk.encode("utf-8"))  # U+0100..U+01FF: letters, no spaces


@pytest.mark.parametrize("vocab_size", [300, 420])  # 420: near the end, where most steps tie at count 3
def test_bpe_training_equals_huggingface_tokenizers(vocab_size):
    tokenizers = pytest.importorskip("tokenizers")
    text = CORPUS + "naïve café, déjà vu -- Ærøskøbing 2024!\n" * 2  # some multi-byte characters too
    ours = BPETokenizer(GPT2_SPLIT_PATTERN_RE).train(text, vocab_size=vocab_size)
    hf = tokenizers.Tokenizer(tokenizers.models.BPE())
    hf.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()  # our chunks, joined by spaces below
    alphabet = [chr(256 + b) for b in range(256)]
    hf.train_from_iterator([" ".join(as_letters(c) for c in ours.chunks(text))], tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=alphabet, special_tokens=[], show_progress=False))
    assert [hf.token_to_id(c) for c in alphabet] == list(range(256))  # its byte ids are ours

    as_bytes = lambda s: bytes(ord(c) - 256 for c in s)  # noqa: E731
    hf_merges = [tuple(as_bytes(s) for s in (m.split(" ") if isinstance(m, str) else m))
                 for m in json.loads(hf.to_str())["model"]["merges"]]
    assert len(hf_merges) == vocab_size - 256
    assert [(ours.vocab[a], ours.vocab[b]) for a, b in ours.merges] == hf_merges  # same merges, same order
    for i, token in ours.vocab.items():  # same ids for every merged token
        assert hf.token_to_id("".join(chr(256 + b) for b in token)) == i

    # Encoding unseen text (words the corpus never had, and a script it never saw): the same ids.
    unseen = "Before we proceed, you know all: speak, Citizen! Is't resolved? déjà vu, Ærø 東京 xylophone"
    assert ours.encode(unseen) == [i for c in ours.chunks(unseen) for i in hf.encode(as_letters(c)).ids]
