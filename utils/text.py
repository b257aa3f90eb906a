"""Text to integers: word and character vocabularies with explicit unknown-token handling.

Chapter 1 splits Tiny Shakespeare into lower-cased words; chapters 2-7 work on characters.
A `Vocab` maps tokens to ids and back; a token it does not know either maps to `<unk>`
(if the vocabulary has one) or raises a `KeyError` that names the token.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

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
