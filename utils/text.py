"""Text to integers: word and character vocabularies, and a byte-level BPE tokenizer.

Chapter 1 splits Tiny Shakespeare into lower-cased words; chapters 2-7 work on characters.
A `Vocab` maps tokens to ids and back; a token it does not know either maps to `<unk>`
(if the vocabulary has one) or raises a `KeyError` that names the token.

Chapter 7 (GPT) adds `BPETokenizer`: byte-pair encoding over UTF-8 bytes, trained from scratch.
Because its base vocabulary is the 256 byte values, it has no unknown tokens at all: any string,
in any script, round-trips exactly.

Chapter 9 (CLIP) adds `CLIPTokenizer`: OpenAI CLIP's real tokenizer (49,408 tokens, start and end of
text, context 77), the same BPE machinery loaded with the merges file that open_clip ships.
"""
from __future__ import annotations

import gzip
import html
import importlib.util
import json
import operator
import os
import re
import tempfile
import warnings
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path

import torch

UNK = "<unk>"
WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)*")


def words(text: str) -> list[str]:
    """Lower-cased words of `text`: runs of letters, keeping inner apostrophes (`o'er`, `i'll`)."""
    return WORD_RE.findall(text.lower())


class Vocab:
    """A bijection between tokens and ids 0..V-1, most frequent first (ties broken alphabetically).

    Build it with `Vocab.from_tokens(tokens, min_count=..., unk=True)`; `counts[i]` is the corpus
    frequency of token i (0 for special tokens).
    """

    def __init__(self, itos: Sequence[str], counts: Sequence[int] | None = None, unk: str | None = None):
        if not itos:
            raise ValueError("a vocabulary needs at least one token (the corpus was empty or min_count too high)")
        if len(set(itos)) != len(itos):
            dup = next(t for t, c in Counter(itos).items() if c > 1)
            raise ValueError(f"duplicate token {dup!r} in vocabulary")
        if unk is not None and unk not in itos:
            raise ValueError(f"unknown-token {unk!r} is not in the vocabulary")
        self.itos = list(itos)
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        self.counts = torch.tensor(list(counts) if counts is not None else [0] * len(itos), dtype=torch.long)
        if len(self.counts) != len(self.itos):
            raise ValueError(f"{len(self.counts)} counts for {len(self.itos)} tokens")
        self.unk = unk

    @classmethod
    def from_tokens(cls, tokens: Iterable[str], min_count: int = 1, unk: bool = False,
                    specials: Sequence[str] = ()) -> "Vocab":
        """Every token seen at least `min_count` times, most frequent first, after `specials` (and `<unk>`)."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counter = Counter(tokens)
        if not counter:
            raise ValueError("cannot build a vocabulary from an empty corpus")
        kept = sorted((t for t, c in counter.items() if c >= min_count), key=lambda t: (-counter[t], t))
        if not kept:
            raise ValueError(f"no token occurs at least min_count={min_count} times")
        head = list(specials) + ([UNK] if unk and UNK not in specials else [])
        itos = head + [t for t in kept if t not in head]
        return cls(itos, [counter.get(t, 0) if t not in head else 0 for t in itos], unk=UNK if unk else None)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __repr__(self) -> str:
        preview = ", ".join(repr(t) for t in self.itos[:5])
        return f"Vocab(V={len(self)}: {preview}, ...)"

    def index(self, token: str) -> int:
        """The id of `token`; `<unk>`'s id for an unknown token if the vocabulary has one, else KeyError."""
        i = self.stoi.get(token)
        if i is not None:
            return i
        if self.unk is not None:
            return self.stoi[self.unk]
        raise KeyError(f"unknown token {token!r}: it is not in the vocabulary of {len(self)} tokens "
                       "(build the vocabulary with unk=True to map unknown tokens to <unk>)")

    def encode(self, tokens: Iterable[str]) -> torch.Tensor:
        """Token ids as a 1-D long tensor."""
        return torch.tensor([self.index(t) for t in tokens], dtype=torch.long)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> list[str]:
        """Tokens for `ids`; an id outside 0..V-1 raises IndexError naming it."""
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if not 0 <= int(i) < len(self.itos):
                raise IndexError(f"token id {i} is outside the vocabulary range 0..{len(self.itos) - 1}")
            out.append(self.itos[int(i)])
        return out


class CharVocab(Vocab):
    """A character vocabulary: `encode(str)` and `decode(ids) -> str`."""

    @classmethod
    def from_text(cls, text: str, unk: bool = False) -> "CharVocab":
        if not text:
            raise ValueError("cannot build a character vocabulary from an empty text")
        counter = Counter(text)
        chars = sorted(counter)  # sorted by code point, like nanoGPT's char tokenizer
        head = [UNK] if unk else []
        return cls(head + chars, [0] * len(head) + [counter[c] for c in chars], unk=UNK if unk else None)

    def encode(self, text: str) -> torch.Tensor:  # type: ignore[override]
        return super().encode(list(text))

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:  # type: ignore[override]
        return "".join(super().decode(ids))


# --------------------------------------------------------------------------------------------------
# Byte-level byte-pair encoding (chapter 7)
# --------------------------------------------------------------------------------------------------

# GPT-2's pre-tokenization pattern (Radford et al., 2019), verbatim. `\p{L}` (any letter) and `\p{N}`
# (any number) need the third-party `regex` module; the standard `re` module cannot compile them.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# The same pattern written for the standard `re` module, the default of `BPETokenizer`.
# `[^\W\d_]` (a word character that is neither a decimal digit nor `_`) stands for `\p{L}`,
# `\d` for `\p{N}` and `(?:[^\s\w]|_)` for `[^\s\p{L}\p{N}]`. The two patterns split every text
# identically except around numbers that are not decimal digits (categories No and Nl: `²`, `½`, `Ⅻ`):
# `re` counts those as letters, so GPT-2 splits "x²" into "x", "²" and this pattern keeps "x²" whole.
# On ASCII text (all of Tiny Shakespeare) they are the same.
GPT2_SPLIT_PATTERN_RE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""

BPE_FILE_FORMAT = "onehot-to-clip/bpe"
BPE_FILE_VERSION = 1
_NOT_A_MERGE = float("inf")  # merge rank of a pair the tokenizer never learned
_CACHE_LIMIT = 1 << 16        # chunks whose encoding is remembered (Tiny Shakespeare has ~15k distinct ones)


def _compile_pattern(pattern: str):
    """Compile with the standard `re` module, or with `regex` if `re` cannot (e.g. for `\\p{L}`)."""
    try:
        return re.compile(pattern)
    except re.error as re_err:
        try:
            import regex
        except ImportError:
            raise ImportError(f"the split pattern {pattern!r} needs the `regex` module ({re_err} under `re`): "
                              "pip install regex, or use GPT2_SPLIT_PATTERN_RE, which needs only `re`") from None
        try:
            return regex.compile(pattern)
        except regex.error as err:
            raise ValueError(f"invalid split pattern {pattern!r}: {err}") from None


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"the text contains {text[err.start]!r} at character {err.start} of {text!r}: a lone "
                         "surrogate, which is not a Unicode character and has no UTF-8 bytes (it usually comes "
                         "from decoding with errors='surrogateescape'; fix the text's decoding)") from None


def merge_pair(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids` by `new_id`, scanning left to right.

    Overlaps resolve to the left: merging (a, a) in [a, a, a] gives [new, a].
    """
    a, b = pair
    out, i, n = [], 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPETokenizer:
    """Byte-level byte-pair encoding (Sennrich et al., 2016, over bytes as in GPT-2, Radford et al., 2019).

    A text is turned into UTF-8 bytes, so ids 0..255 are the byte values and every string is
    encodable. Training repeatedly finds the most frequent pair of adjacent ids and gives it a new id
    (256, 257, ...); `merges[(a, b)] = new_id` in the order they were learned, and `vocab[id]` is the
    bytes an id stands for. Encoding replays the merges, earliest learned first.

    Pre-tokenization: `pattern` (a regular expression) first cuts the text into chunks (words with
    their leading space, numbers, punctuation runs, whitespace) and pairs are only counted and merged
    inside a chunk, so no token ever spans " the" and a following ",". `pattern=None` treats the whole
    text as one chunk (fine for small examples, slow on a whole book). The default is
    `GPT2_SPLIT_PATTERN_RE`; pass `GPT2_SPLIT_PATTERN` for GPT-2's exact pattern (needs `regex`).

    Special tokens (`register_special_tokens({"<|endoftext|>": 1024})`) are strings that map to one
    reserved id and are never produced by merges; see `encode` for when the text may contain them.

        tok = BPETokenizer().train(text, vocab_size=512)
        ids = tok.encode("To be, or not to be")
        assert tok.decode(ids) == "To be, or not to be"
    """

    def __init__(self, pattern: str | None = GPT2_SPLIT_PATTERN_RE):
        if pattern is not None and not isinstance(pattern, str):
            raise TypeError(f"pattern must be a regular expression string or None, got {type(pattern).__name__}")
        self.pattern = pattern
        self._split = _compile_pattern(pattern) if pattern is not None else None
        self.merges: dict[tuple[int, int], int] = {}
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
        self.special_tokens: dict[str, int] = {}
        self._special_ids: dict[int, str] = {}
        self._special_re: re.Pattern | None = None
        self._cache: dict[str, list[int]] = {}

    # ---------------------------------------------------------------------------------- properties
    @property
    def vocab_size(self) -> int:
        """The number of rows an embedding table needs: 1 + the largest id (bytes, merges, specials)."""
        return max([len(self.vocab) - 1, *self._special_ids]) + 1

    def __repr__(self) -> str:
        pattern = {None: "None", GPT2_SPLIT_PATTERN_RE: "GPT2_SPLIT_PATTERN_RE",
                   GPT2_SPLIT_PATTERN: "GPT2_SPLIT_PATTERN"}.get(self.pattern, repr(self.pattern))
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, pattern={pattern}, "
                f"special_tokens={self.special_tokens})")

    # ---------------------------------------------------------------------------------- chunks
    def chunks(self, text: str) -> list[str]:
        """The pre-tokenization chunks of `text` (the whole text if `pattern` is None)."""
        if self._split is None:
            return [text] if text else []
        parts = [m.group() for m in self._split.finditer(text)]
        if "".join(parts) != text:  # a custom pattern that skips characters would lose them
            raise ValueError(f"the split pattern {self.pattern!r} does not cover every character of the text, "
                             "so encoding would lose text; end the pattern with a catch-all alternative "
                             "such as `|\\s+|[\\s\\S]`")
        return [p for p in parts if p]

    # ---------------------------------------------------------------------------------- training
    def train(self, text: str, vocab_size: int, verbose: bool = False) -> "BPETokenizer":
        """Learn `vocab_size - 256` merges from `text`; returns `self` (any earlier merges are replaced).

        Each step counts the adjacent id pairs inside every chunk and merges the most frequent one.
        Ties go to the smallest pair, comparing (first id, second id), so training is deterministic.
        Counting is done once per distinct chunk, weighted by how often it occurs, and after a merge
        only the chunks that contained the merged pair are recounted. Registered special tokens are
        cut out of the text first and take no part in training. If no pair is left before
        `vocab_size` is reached (a tiny text), training stops there with a warning.
        """
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__} {vocab_size!r}")
        if vocab_size < 256:
            raise ValueError(f"vocab_size must be at least 256 (one id per byte value), got {vocab_size}")
        if not isinstance(text, str):
            raise TypeError(f"train needs a str, got {type(text).__name__} (decode bytes with .decode('utf-8') first)")
        if not text:
            raise ValueError("cannot train a BPE tokenizer on an empty text")
        clash = sorted(s for s, i in self.special_tokens.items() if i < vocab_size)
        if clash:
            raise ValueError(f"special tokens {clash} have ids below vocab_size={vocab_size}, where merges will go; "
                             "register special tokens after training, with ids >= vocab_size")

        # Distinct chunks and how often each occurs: the counting unit of every step.
        chunk_counts: Counter[str] = Counter()
        segments = self._special_re.split(text)[::2] if self._special_re else [text]  # [::2] drops the specials
        for segment in segments:
            chunk_counts.update(self.chunks(segment))
        words = [list(_utf8(chunk)) for chunk in chunk_counts]
        freqs = list(chunk_counts.values())

        # counts[pair]: occurrences of the pair in the whole text; where[pair]: chunks that contain it.
        counts: dict[tuple[int, int], int] = defaultdict(int)
        where: dict[tuple[int, int], set[int]] = defaultdict(set)
        for w, (ids, f) in enumerate(zip(words, freqs)):
            for pair in zip(ids, ids[1:]):
                counts[pair] += f
                where[pair].add(w)

        merges: dict[tuple[int, int], int] = {}
        vocab = {i: bytes([i]) for i in range(256)}
        for new_id in range(256, vocab_size):
            if not counts:
                warnings.warn(f"BPE training stopped at vocab_size={new_id}: every chunk is a single token, "
                              f"so no pair is left to merge (the text is too small for vocab_size={vocab_size})",
                              stacklevel=2)
                break
            top = max(counts.values())
            pair = min(p for p, c in counts.items() if c == top)  # the smallest of the most frequent pairs
            merges[pair] = new_id
            vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
            touched = set()
            for w in where.pop(pair):  # recount only the chunks that contain the pair
                old, f = words[w], freqs[w]
                new = merge_pair(old, pair, new_id)
                old_pairs, new_pairs = list(zip(old, old[1:])), list(zip(new, new[1:]))
                for p in old_pairs:
                    counts[p] -= f
                for p in new_pairs:
                    counts[p] += f
                    where[p].add(w)
                for p in set(old_pairs).difference(new_pairs):
                    if p != pair:
                        where[p].discard(w)
                touched.update(old_pairs)
                words[w] = new
            for p in touched:  # forget pairs that no longer occur anywhere (the merged pair among them)
                if counts.get(p) == 0:
                    del counts[p]
                    where.pop(p, None)
            if verbose:
                print(f"merge {new_id - 255}/{vocab_size - 256}: {pair} -> {new_id} "
                      f"{vocab[new_id]!r} ({top} occurrences)")

        self.merges, self.vocab = merges, vocab
        self._cache.clear()
        return self

    # ---------------------------------------------------------------------------------- special tokens
    def register_special_tokens(self, tokens: Mapping[str, int]) -> None:
        """Add special tokens, `{string: id}`; each id must lie above the byte and merge ids and be unused."""
        if not isinstance(tokens, Mapping):
            raise TypeError(f"special tokens are a mapping {{string: id}}, got {type(tokens).__name__}")
        merged = dict(self.special_tokens)
        for token, i in tokens.items():
            if not isinstance(token, str) or not token:
                raise ValueError(f"a special token must be a non-empty string, got {token!r}")
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"the id of special token {token!r} must be an int, got {type(i).__name__}")
            if i < len(self.vocab):
                raise ValueError(f"special token {token!r} has id {i}, which is a byte or merge id "
                                 f"(0..{len(self.vocab) - 1}); use an id >= {len(self.vocab)}")
            merged[token] = i
        ids = Counter(merged.values())
        dup = [t for t, i in merged.items() if ids[i] > 1]
        if dup:
            raise ValueError(f"special tokens {sorted(dup)} share an id; every special token needs its own id")
        self.special_tokens = merged
        self._special_ids = {i: t for t, i in merged.items()}
        self._special_re = self._alternation(merged) if merged else None
        self._cache.clear()

    @staticmethod
    def _alternation(tokens: Iterable[str]) -> re.Pattern:
        """A regex matching any of `tokens` literally, longest first (so "<|a|>x" wins over "<|a|>")."""
        return re.compile("(" + "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)) + ")")

    # ---------------------------------------------------------------------------------- encode / decode
    def _encode_chunk(self, chunk: str) -> list[int]:
        cached = self._cache.get(chunk)
        if cached is not None:
            return cached
        ids = list(_utf8(chunk))
        while len(ids) >= 2:
            # The adjacent pair that was learned earliest (lowest new id) is merged first, as in training.
            pair = min(zip(ids, ids[1:]), key=lambda p: self.merges.get(p, _NOT_A_MERGE))
            if pair not in self.merges:
                break
            ids = merge_pair(ids, pair, self.merges[pair])
        if len(self._cache) < _CACHE_LIMIT:
            self._cache[chunk] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of `text`, treating any special-token strings in it as ordinary text."""
        if not isinstance(text, str):
            raise TypeError(f"encode needs a str, got {type(text).__name__}"
                            + (" (decode bytes with .decode('utf-8') first)" if isinstance(text, bytes) else ""))
        out: list[int] = []
        for chunk in self.chunks(text):
            out.extend(self._encode_chunk(chunk))
        return out

    def encode(self, text: str, allowed_special: str | Collection[str] = "none_raise") -> list[int]:
        """Token ids of `text`.

        `allowed_special` says which registered special tokens may appear in `text` as themselves:
        "all"; a set of them; "none" (they are encoded as ordinary text, byte by byte); or "none_raise"
        (the default: none is allowed, and finding one is an error). With "none_raise" or a set, a
        special token that is present but not allowed raises ValueError, as tiktoken does: a document
        that merely contains the text "<|endoftext|>" (scraped from the web, typed by a user) must not
        silently become the end-of-text id and cut the model's context, so the caller has to decide.
        """
        if not isinstance(text, str):
            return self.encode_ordinary(text)  # raises the TypeError
        if allowed_special == "all":
            allowed = set(self.special_tokens)
        elif allowed_special in ("none", "none_raise"):
            allowed = set()
        elif isinstance(allowed_special, str) or not isinstance(allowed_special, Collection):
            raise ValueError(f"allowed_special must be 'all', 'none', 'none_raise' or a set of special tokens, "
                             f"got {allowed_special!r}")
        else:
            allowed = set(allowed_special)
            unknown = sorted(allowed - set(self.special_tokens))
            if unknown:
                raise ValueError(f"{unknown} are not registered special tokens (registered: "
                                 f"{sorted(self.special_tokens)}); use register_special_tokens first")
        if allowed_special != "none":
            disallowed = set(self.special_tokens) - allowed
            found = self._alternation(disallowed).search(text) if disallowed else None
            if found:
                token = found.group()
                raise ValueError(
                    f"the text contains the special token {token!r} (at character {found.start()}), which is not "
                    f"allowed here. Pass allowed_special='all' or a set containing it to encode it as its id "
                    f"{self.special_tokens[token]}, or allowed_special='none' to encode it as ordinary text.")
        if not allowed:
            return self.encode_ordinary(text)
        out: list[int] = []
        for k, part in enumerate(self._alternation(allowed).split(text)):
            if k % 2:  # split() puts the matched specials at odd positions
                out.append(self.special_tokens[part])
            elif part:
                out.extend(self.encode_ordinary(part))
        return out

    def decode_bytes(self, ids: Iterable[int] | torch.Tensor) -> bytes:
        """The bytes that `ids` stand for (special tokens as their UTF-8 string)."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode needs a 1-D sequence of ids, got a tensor of shape {tuple(ids.shape)}")
            ids = ids.tolist()
        parts = []
        for i in ids:
            try:
                i = operator.index(i)
            except TypeError:
                raise TypeError(f"token ids must be integers, got {type(i).__name__} {i!r}") from None
            piece = self.vocab.get(i)
            if piece is None:
                special = self._special_ids.get(i)
                if special is None:
                    specials = f", special ids {sorted(self._special_ids)}" if self._special_ids else ""
                    raise IndexError(f"token id {i} is not in this tokenizer (byte ids 0..255, merge ids "
                                     f"256..{len(self.vocab) - 1}{specials})")
                piece = special.encode("utf-8")
            parts.append(piece)
        return b"".join(parts)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """The text of `ids`.

        Ids are byte sequences, and a sequence a model samples need not be valid UTF-8 (a token can end
        in the middle of a multi-byte character, e.g. the first byte of "東"); such bytes decode to the
        replacement character U+FFFD instead of raising, like GPT-2's tokenizer. Ids that came from
        `encode` always decode to exactly the original text.
        """
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ---------------------------------------------------------------------------------- save / load
    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer as JSON (pattern, merges in order, special tokens); returns the path.

        The file is written to a temporary file next to `path` and renamed over it, so a failed save
        never leaves a half-written tokenizer behind (and an existing file stays intact).
        """
        path = Path(path)
        payload = json.dumps({
            "format": BPE_FILE_FORMAT,
            "version": BPE_FILE_VERSION,
            "pattern": self.pattern,
            "merges": [list(pair) for pair in self.merges],  # the i-th pair became id 256 + i
            "special_tokens": self.special_tokens,
        }, ensure_ascii=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BPETokenizer":
        """Read a tokenizer written by `save`; a truncated, corrupt or foreign file raises ValueError."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not a valid BPE tokenizer file ({err}); it may be truncated or "
                             "corrupt: save the tokenizer again") from None

        def bad(problem: str) -> ValueError:
            return ValueError(f"{path} is not a valid BPE tokenizer file: {problem}")

        if not isinstance(data, dict) or data.get("format") != BPE_FILE_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise bad(f"format is {found!r}, expected {BPE_FILE_FORMAT!r} (was it written by BPETokenizer.save?)")
        if data.get("version") != BPE_FILE_VERSION:
            raise bad(f"version {data.get('version')!r} is not supported (this code reads version {BPE_FILE_VERSION})")
        missing = [k for k in ("pattern", "merges", "special_tokens") if k not in data]
        if missing:
            raise bad(f"missing {missing}")
        pattern, merges, specials = data["pattern"], data["merges"], data["special_tokens"]
        if pattern is not None and not isinstance(pattern, str):
            raise bad(f"pattern must be a string or null, got {pattern!r}")
        if not isinstance(merges, list) or not isinstance(specials, dict):
            raise bad("merges must be a list of pairs and special_tokens an object {string: id}")
        tok = cls(pattern)
        for k, pair in enumerate(merges):
            new_id = 256 + k
            ok = (isinstance(pair, list) and len(pair) == 2
                  and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < new_id for i in pair))
            if not ok:
                raise bad(f"merge {k} is {pair!r}; a merge is a pair of ids that already exist (0..{new_id - 1})")
            pair = (pair[0], pair[1])
            if pair in tok.merges:
                raise bad(f"merge {k} {pair} repeats merge {tok.merges[pair] - 256}")
            tok.merges[pair] = new_id
            tok.vocab[new_id] = tok.vocab[pair[0]] + tok.vocab[pair[1]]
        try:
            tok.register_special_tokens(specials)
        except (TypeError, ValueError) as err:
            raise bad(str(err)) from None
        return tok


# --------------------------------------------------------------------------------------------------
# CLIP's tokenizer (chapter 9): byte-level BPE with OpenAI's merges
# --------------------------------------------------------------------------------------------------
#
# CLIP (Radford et al., 2021, section 2.4) reads text with a lower-cased byte-level BPE of 49,152 tokens
# plus a start and an end token (49,408 ids in all), and a fixed frame of 77 positions. Its merges ship
# as `bpe_simple_vocab_16e6.txt.gz` inside the open_clip package (the same file as OpenAI's CLIP
# repository). It is chapter 7's BPE with four differences, each handled in `CLIPTokenizer`:
#   1. the text is cleaned first: mojibake repaired (ftfy), HTML entities unescaped, runs of white space
#      made one space, everything lower-cased;
#   2. the split pattern differs from GPT-2's: no leading space in a chunk, white space dropped,
#      every digit a chunk of its own ("2021" is four chunks);
#   3. the last symbol of every chunk is marked as word-final (`</w>`), so "the" closing a word and
#      "the" inside "theory" are different tokens;
#   4. the 256 single-byte ids are numbered in the order of GPT-2's printable stand-ins for bytes
#      (`clip_byte_order`), not by byte value.
# The word-final mark is a space after the chunk: "cat" is encoded as "cat " and `</w>` tokens are the
# merges (byte, space), learned before any other. Decoding a `</w>` token then yields the space that
# separates words, which is exactly how OpenAI's decoder reads `</w>`.

CLIP_SPLIT_PATTERN = r"""(?i)<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+"""
CLIP_START, CLIP_END = "<start_of_text>", "<end_of_text>"
CLIP_CONTEXT_LENGTH = 77
CLIP_NUM_MERGES = 49152 - 256 - 2  # OpenAI keeps the first 48,894 merges of the file
CLIP_MERGES_FILE = "bpe_simple_vocab_16e6.txt.gz"


@cache
def clip_byte_order() -> tuple[int, ...]:
    """The byte value of each CLIP id 0..255, and each merge-file character's byte.

    GPT-2's encoder (Radford et al., 2019) writes a byte as a printable character so that merges can be
    stored as text: the 188 bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ')
    stand for themselves, and the other 68 (space, control bytes, ...) are written as chr(256 + k), in
    byte order. CLIP numbers its single-byte tokens in that order: printable bytes first, then the others.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    return tuple(printable + [b for b in range(256) if b not in printable])


def _char_of_byte() -> dict[int, str]:
    """Byte → the character that stands for it in the merges file (GPT-2's byte-to-character table)."""
    return {b: chr(b) if k < 188 else chr(256 + k - 188) for k, b in enumerate(clip_byte_order())}


def clip_clean(text: str) -> str:
    """CLIP's text cleaning: repair mojibake (ftfy), unescape HTML entities twice, make every run of white
    space one space, strip, lower-case (OpenAI's simple_tokenizer; "A  &amp; B" → "a & b")."""
    try:
        import ftfy
    except ImportError:  # pragma: no cover - ftfy comes with open_clip_torch
        raise ImportError("CLIP's text cleaning needs ftfy (it comes with open_clip_torch): pip install ftfy") from None
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


def default_clip_merges_path() -> Path:
    """The merges file shipped inside the installed open_clip package (found without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"CLIP's merges file {CLIP_MERGES_FILE} ships with open_clip, which is not installed: "
                                "pip install open_clip_torch (see requirements.txt), or pass merges_path=")
    path = Path(list(spec.submodule_search_locations)[0]) / CLIP_MERGES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed open_clip package; reinstall open_clip_torch "
                                "or pass merges_path=")
    return path


def _read_clip_merges(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"no CLIP merges file at {path}; leave merges_path out to use the one open_clip ships")
    try:
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a gzip-compressed UTF-8 merges file ({err}); it may be truncated") from None
    merges = [tuple(line.split()) for line in lines[1:CLIP_NUM_MERGES + 1] if line.strip()]  # line 0: a header
    bad = next((k for k, m in enumerate(merges) if len(m) != 2), None)
    if len(merges) < CLIP_NUM_MERGES or bad is not None:
        where = f"it has {len(merges)} merge lines" if bad is None else f"merge {bad} is {' '.join(merges[bad])!r}"
        raise ValueError(f"{path} is not CLIP's merges file: {where}; expected {CLIP_NUM_MERGES} lines of two "
                         "symbols after a version header")
    return merges  # type: ignore[return-value]


class CLIPTokenizer:
    """CLIP's tokenizer (Radford et al., 2021): ids equal to OpenAI's and open_clip's `tokenize`.

    Ids: 0..255 single bytes (in `clip_byte_order`), 256..511 the same bytes marked word-final (`</w>`),
    512..49405 OpenAI's 48,894 merges in rank order, 49406 `<start_of_text>`, 49407 `<end_of_text>`.
    The end token has the largest id, which is how CLIP's text tower finds it (argmax of the ids).

    The BPE itself is chapter 7's: `self.bpe` is a `BPETokenizer` whose merges and vocabulary were read
    from OpenAI's file instead of trained, so the merge loop (earliest merge first), the per-chunk cache
    and decoding are the ones tested there. See the notes above `CLIP_SPLIT_PATTERN` for what differs.

        tok = CLIPTokenizer()
        tok("a photo of a cat")          # (1, 77) int64: 49406, ids..., 49407, then zeros
        tok.decode(tok.encode("A cat!")) # "a cat ! "

    `__call__` frames each text as [start, ids..., end] padded with 0 to `context_length` (77). A longer
    text is truncated, keeping the first context_length - 1 ids and putting the end token last, as
    open_clip does (OpenAI's own `clip.tokenize` raises unless truncate=True); with `truncate=False`
    it raises a ValueError instead. The strings `<start_of_text>` and `<end_of_text>` inside a text are
    read as the special tokens, as OpenAI's tokenizer reads them.
    """

    def __init__(self, merges_path: str | os.PathLike | None = None,
                 context_length: int = CLIP_CONTEXT_LENGTH) -> None:
        _check_context_length(context_length)
        self.context_length = context_length
        self.merges_path = Path(merges_path) if merges_path is not None else default_clip_merges_path()
        merges = _read_clip_merges(self.merges_path)
        self._split = _compile_pattern(CLIP_SPLIT_PATTERN)
        order = clip_byte_order()
        char_of = _char_of_byte()
        # Inside `self.bpe` a single byte has its value as id (as in chapter 7); every other id is CLIP's.
        self._to_clip = [0] * 256
        for clip_id, b in enumerate(order):
            self._to_clip[b] = clip_id
        self._from_clip = order
        bpe = BPETokenizer(pattern=None)  # one chunk at a time: the splitting is done here
        ids = {c: b for b, c in char_of.items()}  # merge-file symbol → id inside self.bpe
        space = ord(" ")
        for clip_id, b in enumerate(order):  # word-final bytes: the merge (byte, space), ids 256..511
            word_final = 256 + clip_id
            bpe.merges[(b, space)] = word_final
            bpe.vocab[word_final] = bytes([b, space])
            ids[char_of[b] + "</w>"] = word_final
        for rank, (first, second) in enumerate(merges):
            new_id = 512 + rank
            try:
                pair = (ids[first], ids[second])
            except KeyError as err:
                raise ValueError(f"{self.merges_path}: merge {rank} {first!r} {second!r} uses {err.args[0]!r}, "
                                 "which no earlier merge made") from None
            bpe.merges[pair] = new_id
            bpe.vocab[new_id] = bpe.vocab[pair[0]] + bpe.vocab[pair[1]]
            ids[first + second] = new_id
        bpe.register_special_tokens({CLIP_START: 512 + len(merges), CLIP_END: 513 + len(merges)})
        self.bpe = bpe
        self.sot_token_id, self.eot_token_id = bpe.special_tokens[CLIP_START], bpe.special_tokens[CLIP_END]

    @property
    def vocab_size(self) -> int:
        """49,408: the rows of CLIP's token embedding."""
        return self.bpe.vocab_size

    def __repr__(self) -> str:
        return (f"CLIPTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length}, "
                f"merges={self.merges_path.name})")

    def encode(self, text: str) -> list[int]:
        """CLIP ids of `text` after cleaning, without the start and end tokens."""
        if not isinstance(text, str):
            raise TypeError(f"CLIPTokenizer.encode needs a str, got {type(text).__name__}")
        out: list[int] = []
        for chunk in self._split.findall(clip_clean(text)):
            if chunk in self.bpe.special_tokens:
                out.append(self.bpe.special_tokens[chunk])
            else:  # the trailing space marks the chunk's last byte word-final (merges 256..511)
                out.extend(i if i >= 256 else self._to_clip[i] for i in self.bpe.encode_ordinary(chunk + " "))
        return out

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """The (cleaned) text of CLIP ids; a word-final token ends in a space, special tokens show as text."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        inner = []
        for i in ids:
            i = operator.index(i)
            if not 0 <= i < self.vocab_size:
                raise IndexError(f"token id {i} is outside CLIP's vocabulary 0..{self.vocab_size - 1}")
            inner.append(self._from_clip[i] if i < 256 else i)
        return self.bpe.decode(inner)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None,
                 truncate: bool = True) -> torch.Tensor:
        """(B, context_length) int64 ids: [<start_of_text>, ids..., <end_of_text>, 0, ...] per text.

        A text needing more than `context_length` positions is truncated to the first context_length - 1
        ids followed by <end_of_text> (open_clip's behaviour), or raises ValueError if `truncate=False`.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
            raise TypeError("CLIPTokenizer takes a str or a sequence of str")
        L = self.context_length if context_length is None else context_length
        _check_context_length(L)
        out = torch.zeros(len(texts), L, dtype=torch.long)  # 0 pads ("!"): never read, see CLIP.encode_text
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > L:
                if not truncate:
                    raise ValueError(f"text {row} ({text[:40]!r}{'...' if len(text) > 40 else ''}) needs {len(ids)} "
                                     f"positions with its start and end tokens, more than context_length={L}; "
                                     "shorten it, or pass truncate=True to keep the first tokens and end it there")
                ids = ids[:L - 1] + [self.eot_token_id]
            out[row, :len(ids)] = torch.tensor(ids)
        return out


def _check_context_length(L: int) -> None:
    if isinstance(L, bool) or not isinstance(L, int) or L < 2:
        raise ValueError(f"context_length must be an int ≥ 2 (room for the start and end tokens), got {L!r}")
