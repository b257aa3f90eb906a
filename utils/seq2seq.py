"""Sequence to sequence: a date-normalisation task, an encoder-decoder LSTM, greedy and beam decoding.

The task (generated in code, fixed seed): a date written the way people write it, in one of
`DATE_FORMATS` ("3rd of March 1998", "03/03/98", "Tuesday, March 3, 1998", ...), is translated
character by character into ISO 8601, "1998-03-03". Every format fixes one convention so the target is
recoverable: slashes are month-first (US), dots are day-first unless the year comes first, and
two-digit years are only used for 1969-2068, the POSIX pivot Python's `strptime` applies
(69-99 → 19xx, 00-68 → 20xx). Test and validation dates are held out: no date of the test set appears,
in any format, in training.

The model (Sutskever, Vinyals & Le 2014, "Sequence to sequence learning with neural networks";
Cho et al. 2014): an LSTM encoder reads the input; its final (h, c) is the decoder's initial state and
the ONLY thing the decoder learns about the input (the bottleneck that attention, chapter 5, removes).
The decoder is trained with teacher forcing (Williams & Zipser 1989) or, with probability
1 - `teacher_forcing`, is fed its own previous prediction (scheduled sampling, Bengio et al. 2015).

Extension point for attention: a decoder is a `Decoder` with `init_state(memory)`,
`step(y_prev, state, memory) -> (logits, state, attn)` and `reorder_state(state, index)`. `memory`
carries the encoder's outputs and padding mask as well as its final state, so an attention decoder
subclasses `Decoder`, overrides `step` (and `init_state` if its state differs), returns its
attention weights as `attn`, and `greedy_decode`/`beam_search`/`Seq2Seq` work unchanged.

Letter legend (shape comments):
    B  batch size              S  source length (characters)      T  target length (tokens)
    E  embedding size          H  hidden size                     L  LSTM layers
    V  vocabulary size         K  live beams
"""
from __future__ import annotations

import random
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Iterable, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .attention import AdditiveAttention, DotProductAttention
from .text import Vocab

__all__ = [
    "PAD", "SOS", "EOS", "UNK", "SPECIALS", "Seq2SeqVocab", "UnknownCharacterError",
    "DATE_FORMATS", "DATE_SEPARATOR", "render_date", "parse_date", "parse_dates", "DatePair", "DateSplits",
    "make_date_dataset",
    "date_vocabs", "Batch", "encode_sources", "make_batch",
    "Memory", "Seq2SeqConfig", "Encoder", "Decoder", "LSTMDecoder", "Seq2Seq", "eval_mode", "seq2seq_loss",
    "sequence_log_prob", "Decoded", "greedy_decode", "Candidate", "beam_search", "translate",
    "exact_match",
]

# ----------------------------------------------------------------------------------------------
# Vocabulary

PAD, SOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<sos>", "<eos>", "<unk>")


class UnknownCharacterError(ValueError):
    """A text contains a character the vocabulary has never seen."""


class Seq2SeqVocab(Vocab):
    """A character vocabulary (a `utils.text.Vocab`) with <pad>=0, <sos>=1, <eos>=2, <unk>=3 first and
    the characters, sorted, after them. Unknown characters are an error unless asked otherwise."""

    def __init__(self, chars: Iterable[str]) -> None:
        chars = sorted(set(chars))
        for ch in chars:
            if not isinstance(ch, str) or len(ch) != 1:
                raise ValueError(f"a Seq2SeqVocab holds single characters, got {ch!r}")
        super().__init__(list(SPECIALS) + chars)  # no automatic <unk>: encode() decides
        self.chars = "".join(chars)

    def __repr__(self) -> str:
        return f"Seq2SeqVocab({len(self)} ids: 4 specials + {self.chars!r})"

    def encode(self, text: str, *, sos: bool = False, eos: bool = False,  # type: ignore[override]
               unknown: str = "error") -> Tensor:
        """Ids (N,) of `text`'s characters, optionally wrapped in <sos> ... <eos>.

        An unknown character raises UnknownCharacterError naming it (`unknown="error"`, the default),
        or becomes <unk> (`unknown="unk"`).
        """
        if unknown not in ("error", "unk"):
            raise ValueError(f"unknown must be 'error' or 'unk', got {unknown!r}")
        if not isinstance(text, str):
            raise TypeError(f"encode takes a string, got {type(text).__name__}")
        ids = []
        for pos, ch in enumerate(text):
            i = self.stoi.get(ch)  # a single character never matches a special like '<eos>'
            if i is None:
                if unknown == "error":
                    raise UnknownCharacterError(
                        f"unknown character {ch!r} at position {pos} of {text!r}; the vocabulary knows "
                        f"only {self.chars!r} (pass unknown='unk' to map it to <unk>)")
                i = UNK
            ids.append(i)
        return torch.tensor([SOS] * sos + ids + [EOS] * eos, dtype=torch.long)  # (N,)

    def decode(self, ids: Iterable[int] | Tensor, *, keep_special: bool = False) -> str:  # type: ignore[override]
        """Text of `ids`. By default stops at the first <eos> and drops <pad>/<sos>/<unk>."""
        tokens = super().decode(ids)  # range-checked
        if keep_special:
            return "".join(tokens)
        if "<eos>" in tokens:
            tokens = tokens[:tokens.index("<eos>")]
        return "".join(t for t in tokens if t not in SPECIALS)


# ----------------------------------------------------------------------------------------------
# The date task

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# token → (renderer, strptime directive). Names are English whatever the locale.
_FIELDS = {
    "YYYY": (lambda d: f"{d.year:04d}", "%Y"),
    "YY": (lambda d: f"{d.year % 100:02d}", "%y"),
    "MM": (lambda d: f"{d.month:02d}", "%m"),
    "M": (lambda d: str(d.month), "%m"),
    "DD": (lambda d: f"{d.day:02d}", "%d"),
    "D": (lambda d: str(d.day), "%d"),
    "Do": (lambda d: _ordinal(d.day), "%d"),  # 3rd; the suffix is removed before strptime
    "Month": (lambda d: MONTHS[d.month - 1], "%B"),
    "MONTH": (lambda d: MONTHS[d.month - 1].upper(), "%B"),
    "month": (lambda d: MONTHS[d.month - 1].lower(), "%B"),
    "Mon": (lambda d: MONTHS[d.month - 1][:3], "%b"),
    "MON": (lambda d: MONTHS[d.month - 1][:3].upper(), "%b"),
    "mon": (lambda d: MONTHS[d.month - 1][:3].lower(), "%b"),
    "Weekday": (lambda d: WEEKDAYS[d.weekday()], "%A"),
    "weekday": (lambda d: WEEKDAYS[d.weekday()].lower(), "%A"),
    "Wkd": (lambda d: WEEKDAYS[d.weekday()][:3], "%a"),
}
_FIELD_RE = re.compile(r"\{(\w+)\}")

DATE_FORMATS: tuple[str, ...] = (
    "{Weekday}, {Month} {D}, {YYYY}",  # Tuesday, March 3, 1998
    "{Do} of {Month} {YYYY}",  # 3rd of March 1998
    "{Month} {Do}, {YYYY}",  # March 3rd, 1998
    "{Month} {Do}, {YY}",  # March 3rd, 98
    "{D} {mon} {YYYY}",  # 3 mar 1998
    "{DD} {Mon} {YYYY}",  # 03 Mar 1998
    "{D} {Month} {YYYY}",  # 3 March 1998
    "{D} {MONTH} {YYYY}",  # 3 MARCH 1998
    "{Wkd} {DD} {Mon} {YYYY}",  # Tue 03 Mar 1998
    "{weekday} {D} {month} {YYYY}",  # tuesday 3 march 1998
    "{month} {D} {YYYY}",  # march 3 1998
    "{Mon} {D}, {YY}",  # Mar 3, 98
    "{DD}-{MON}-{YYYY}",  # 03-MAR-1998
    "{DD}-{Mon}-{YY}",  # 03-Mar-98
    "{MM}/{DD}/{YY}",  # 03/03/98    slashes: month first (US)
    "{M}/{D}/{YYYY}",  # 3/3/1998
    "{DD}.{MM}.{YYYY}",  # 03.03.1998  dots: day first (European)
    "{D}.{M}.{YY}",  # 3.3.98
    "{YYYY}.{MM}.{DD}",  # 1998.03.03  year first: always four digits
    "{YYYY}{MM}{DD}",  # 19980303
)
TWO_DIGIT_YEARS = (1969, 2068)  # Python's strptime pivot for %y
DATE_SEPARATOR = "; "  # joins the dates of a multi-date pair (make_date_dataset(max_dates > 1)), source and target


def _fields(template: str) -> list[str]:
    names = _FIELD_RE.findall(template)
    for name in names:
        if name not in _FIELDS:
            raise ValueError(f"unknown field {{{name}}} in date format {template!r}; known: {sorted(_FIELDS)}")
    return names


def _allowed(d: date, template: str) -> bool:
    return "YY" not in _fields(template) or TWO_DIGIT_YEARS[0] <= d.year <= TWO_DIGIT_YEARS[1]


def render_date(d: date, template: str) -> str:
    """`d` written in `template`: render_date(date(1998, 3, 3), "{Do} of {Month} {YYYY}") == "3rd of March 1998"."""
    _fields(template)
    if not _allowed(d, template):
        raise ValueError(f"{template!r} has a two-digit year, which is only unambiguous for years "
                         f"{TWO_DIGIT_YEARS[0]}-{TWO_DIGIT_YEARS[1]}; got {d.isoformat()}")
    return _FIELD_RE.sub(lambda m: _FIELDS[m.group(1)][0](d), template)


def parse_date(text: str, template: str) -> date:
    """Inverse of `render_date` by Python's `datetime.strptime` (an independent check of the generator).

    Raises ValueError if `text` is not a date in `template`. Weekday names are matched but, as in
    strptime, not checked against the date.
    """
    pattern = _FIELD_RE.sub(lambda m: _FIELDS[m.group(1)][1], template.replace("%", "%%"))
    if "Do" in _fields(template):
        text = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", text)
    return datetime.strptime(text, pattern).date()


def parse_dates(text: str, template: str) -> list[date]:
    """Inverse of a (possibly multi-date) `DatePair`: split `text` and `template` at `DATE_SEPARATOR`
    and `parse_date` each piece. No date format contains the separator, so the split is unambiguous."""
    texts, templates = text.split(DATE_SEPARATOR), template.split(DATE_SEPARATOR)
    if len(texts) != len(templates):
        raise ValueError(f"{text!r} has {len(texts)} dates but {template!r} has {len(templates)} formats")
    return [parse_date(t, f) for t, f in zip(texts, templates)]


@dataclass(frozen=True)
class DatePair:
    source: str  # "3rd of March 1998" (several dates joined by DATE_SEPARATOR if max_dates > 1)
    target: str  # "1998-03-03"        (likewise)
    template: str  # "{Do} of {Month} {YYYY}" (likewise)


@dataclass(frozen=True)
class DateSplits:
    train: list[DatePair]
    val: list[DatePair]
    test: list[DatePair]


def make_date_dataset(n_train: int = 20_000, n_val: int = 1_000, n_test: int = 2_000, seed: int = 0,
                      start: date = date(1900, 1, 1), end: date = date(2099, 12, 31),
                      held_out: float = 0.1, max_dates: int = 1) -> DateSplits:
    """Random dates in [start, end], each written in a random format of `DATE_FORMATS`.

    The days of the range are shuffled with `seed` and split: a `held_out` fraction only for the test
    set, another `held_out` fraction only for validation, the rest for training; so no test date,
    hence no test input string, is ever seen in training. Same arguments → same dataset.

    max_dates > 1 makes longer inputs that carry more information: each pair holds k dates, k drawn
    uniformly from 1..max_dates, each in its own random format; source, target and template are the k
    pieces joined by `DATE_SEPARATOR` ("3 March 1998; 04/05/21" → "1998-03-03; 2021-04-05"). Every
    date of a pair comes from its split's pool. Use `date_vocabs(multi_date=True)` for this task.
    max_dates=1 (the default) gives exactly the single-date dataset.
    """
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be a non-negative int, got {n!r}")
    if not (1000 <= start.year and start <= end and end.year <= 9999):
        raise ValueError(f"need 1000-01-01 ≤ start ≤ end ≤ 9999-12-31, got {start} .. {end}")
    if not 0.0 < held_out < 0.5:
        raise ValueError(f"held_out must be in (0, 0.5), got {held_out}")
    if not isinstance(max_dates, int) or isinstance(max_dates, bool) or max_dates < 1:
        raise ValueError(f"max_dates must be an int ≥ 1, got {max_dates!r}")
    rng = random.Random(seed)
    days = list(range(start.toordinal(), end.toordinal() + 1))
    rng.shuffle(days)
    n_held = max(1, int(held_out * len(days)))
    if len(days) < 3 * n_held or len(days) < 3:
        raise ValueError(f"the range {start} .. {end} is too short to hold out {held_out:.0%} of its days twice")
    pools = {"test": days[:n_held], "val": days[n_held:2 * n_held], "train": days[2 * n_held:]}

    def one(pool: list[int]) -> DatePair:
        d = date.fromordinal(rng.choice(pool))
        template = rng.choice([t for t in DATE_FORMATS if _allowed(d, t)])
        return DatePair(render_date(d, template), d.isoformat(), template)

    def draw(pool: list[int], n: int) -> list[DatePair]:
        if max_dates == 1:  # (no extra random draw: the single-date dataset stays as it was)
            return [one(pool) for _ in range(n)]
        pairs = []
        for _ in range(n):
            parts = [one(pool) for _ in range(rng.randint(1, max_dates))]
            pairs.append(DatePair(*(DATE_SEPARATOR.join(getattr(p, f) for p in parts)
                                    for f in ("source", "target", "template"))))
        return pairs

    return DateSplits(train=draw(pools["train"], n_train), val=draw(pools["val"], n_val),
                      test=draw(pools["test"], n_test))


def date_vocabs(multi_date: bool = False) -> tuple[Seq2SeqVocab, Seq2SeqVocab]:
    """(source, target) vocabularies: every character the date formats can produce, and "0-9" plus "-".
    multi_date=True adds the characters of `DATE_SEPARATOR` to both (for `max_dates` > 1)."""
    year = [date(2000, 1, 1).replace(month=m, day=d) for m in range(1, 13) for d in range(1, 29)]
    year += [date(2000, 1, 29), date(2000, 3, 30), date(2000, 3, 31)]
    chars = {ch for d in year for t in DATE_FORMATS for ch in render_date(d, t)}
    extra = set(DATE_SEPARATOR) if multi_date else set()
    return Seq2SeqVocab(chars | extra), Seq2SeqVocab(set("0123456789-") | extra)


# ----------------------------------------------------------------------------------------------
# Batches

class Batch(NamedTuple):
    src: Tensor  # (B, S) source ids, <pad> after each source's end
    src_len: Tensor  # (B,) source lengths
    tgt_in: Tensor  # (B, T) <sos> y_1 ... y_{T-1}: the decoder's inputs under teacher forcing
    tgt_out: Tensor  # (B, T) y_1 ... y_{T-1} <eos>: what it must predict


def _pad(seqs: Sequence[Tensor], device=None) -> Tensor:
    S = max(len(s) for s in seqs)
    out = torch.full((len(seqs), S), PAD, dtype=torch.long)  # (B, S)
    for b, s in enumerate(seqs):
        out[b, :len(s)] = s
    return out.to(device)


def encode_sources(texts: Sequence[str], src_vocab: Seq2SeqVocab, device=None,
                   unknown: str = "error") -> tuple[Tensor, Tensor]:
    """Padded source ids (B, S) and lengths (B,) of `texts`. Unknown characters raise (default)."""
    if isinstance(texts, str):
        raise TypeError("encode_sources takes a list of strings; wrap a single text as [text]")
    if len(texts) == 0:
        raise ValueError("empty batch: no texts to encode")
    for i, t in enumerate(texts):
        if not t:
            raise ValueError(f"text {i} is empty; a source needs at least one character")
    seqs = [src_vocab.encode(t, unknown=unknown) for t in texts]
    return _pad(seqs, device), torch.tensor([len(s) for s in seqs], device=device)  # (B, S), (B,)


def make_batch(pairs: Sequence[DatePair], src_vocab: Seq2SeqVocab, tgt_vocab: Seq2SeqVocab, device=None) -> Batch:
    """Tensors for a list of (source, target) pairs, targets wrapped as <sos> y <eos>."""
    src, src_len = encode_sources([p.source for p in pairs], src_vocab, device)
    tgt_in = _pad([tgt_vocab.encode(p.target, sos=True) for p in pairs], device)  # (B, T)
    tgt_out = _pad([tgt_vocab.encode(p.target, eos=True) for p in pairs], device)  # (B, T)
    return Batch(src, src_len, tgt_in, tgt_out)


# ----------------------------------------------------------------------------------------------
# The model

class Memory(NamedTuple):
    """What the encoder hands the decoder."""

    outputs: Tensor  # (B, S, H) top-layer encoder state at every source position, zero at padding
    #                  (bidirectional: [forward; backward] states, H/2 each)
    mask: Tensor  # (B, S) True at real characters, False at padding
    state: tuple  # (h, c), each (L, B, H): the LSTM encoder's final state; () for a Transformer encoder
    #               (bidirectional: per layer, [forward's final; backward's final], H/2 each)


@dataclass
class Seq2SeqConfig:
    src_vocab_size: int
    tgt_vocab_size: int
    embed_dim: int = 32
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.0  # between LSTM layers, training only
    bidirectional: bool = False  # encoder reads the source both ways (H/2 units per direction)


class Encoder(nn.Module):
    """Embedding → LSTM over the source; padding is skipped (packed), so h_n is each source's own last step.

    bidirectional=True (Bahdanau, Cho & Bengio 2015) adds a second LSTM that reads each source backwards,
    from its own last character x_n to its first x_1. Each direction has H/2 units (hidden_size must be
    even), so the shapes do not change. Output s is [forward state at s; backward state at s] (B, S, H),
    an "annotation" of character s with context on both sides (with one layer: forward after x_1..x_s,
    backward after x_n..x_s; each higher layer reads both halves of the layer below). The final (h, c)
    of each layer is [forward's after x_n; backward's after x_1] (L, B, H).
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, bidirectional: bool = False) -> None:
        super().__init__()
        if bidirectional and hidden_size % 2 != 0:
            raise ValueError(f"a bidirectional encoder needs an even hidden_size (H/2 units per direction), "
                             f"got hidden_size={hidden_size}")
        self.vocab_size = vocab_size
        self.bidirectional = bidirectional
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        self.rnn = nn.LSTM(embed_dim, hidden_size // 2 if bidirectional else hidden_size, num_layers,
                           batch_first=True, dropout=dropout, bidirectional=bidirectional)  # H/2 per direction

    def forward(self, src: Tensor, src_len: Tensor) -> Memory:
        """src (B, S) ids, src_len (B,) → Memory(outputs (B, S, H), mask (B, S), (h, c) each (L, B, H))."""
        S = src.shape[1]
        x = self.embed(src)  # (B, S, E)
        packed = pack_padded_sequence(x, src_len.cpu(), batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)  # state: (h, c) each (L, B, H), in the batch's original order
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=S)  # (B, S, H), zero at padding
        if self.bidirectional:
            # torch's (h, c) are each (2L, B, H/2): layer 0 forward, layer 0 backward, layer 1 forward, ...
            state = tuple(torch.cat([s[0::2], s[1::2]], dim=-1) for s in state)  # each (L, B, H/2 + H/2)
        mask = torch.arange(S, device=src.device)[None, :] < src_len[:, None]  # (B, S)
        return Memory(out, mask, state)


def _check_teacher_forcing(ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"teacher_forcing must be in [0, 1], got {ratio}")


class Decoder(nn.Module):
    """Interface of a decoder, and training-time unrolling over the target with teacher forcing.

    Subclasses implement `init_state(memory)` and `step(y_prev, state, memory)`; `reorder_state` must
    be overridden if the state is not a tuple of tensors with the batch on dimension 1 (like (h, c)).
    """

    def init_state(self, memory: Memory):
        raise NotImplementedError

    def step(self, y_prev: Tensor, state, memory: Memory) -> tuple[Tensor, object, Tensor | None]:
        """y_prev (B,) previous token ids → logits (B, V) for the next token, new state, attention (B, S) or None."""
        raise NotImplementedError

    def reorder_state(self, state, index: Tensor):
        """Select/repeat batch entries of `state` (beam search): index (K,) → state with batch K."""
        return tuple(s.index_select(1, index) for s in state)  # each (L, K, H)

    def forward(self, y_in: Tensor, memory: Memory, teacher_forcing: float = 1.0,
                generator: torch.Generator | None = None, return_attn: bool = False):
        """Logits (B, T, V) for every target position (and attention (B, T, S) if `return_attn`).

        At step t the input is the true previous token y_in[:, t] with probability `teacher_forcing`,
        otherwise the model's own previous prediction (argmax, no gradient through the choice).
        """
        _check_teacher_forcing(teacher_forcing)
        B, T = y_in.shape
        state = self.init_state(memory)
        y = y_in[:, 0]  # (B,) <sos>
        logits_all, attn_all = [], []
        for t in range(T):
            logits, state, attn = self.step(y, state, memory)  # (B, V)
            logits_all.append(logits)
            attn_all.append(attn)
            if t + 1 < T:
                y = y_in[:, t + 1]  # (B,)
                if teacher_forcing < 1.0:
                    coin = torch.rand(B, generator=generator,
                                      device=generator.device if generator is not None else "cpu")
                    y = torch.where(coin.to(y.device) < teacher_forcing, y, logits.argmax(-1).detach())
        logits = torch.stack(logits_all, dim=1)  # (B, T, V)
        if not return_attn:
            return logits
        return logits, (torch.stack(attn_all, dim=1) if attn_all[0] is not None else None)  # (B, T, S)


class LSTMDecoder(Decoder):
    """Embedding → LSTM → linear head, started from the encoder's final state and blind to the rest."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        self.rnn = nn.LSTM(embed_dim, hidden_size, num_layers, batch_first=True, dropout=dropout)
        self.head = nn.Linear(hidden_size, vocab_size)

    def init_state(self, memory: Memory) -> tuple[Tensor, Tensor]:
        return memory.state  # the bottleneck: one (h, c) summarises the whole input

    def step(self, y_prev: Tensor, state, memory: Memory):
        x = self.embed(y_prev)[:, None]  # (B, 1, E)
        out, state = self.rnn(x, state)  # (B, 1, H)
        return self.head(out[:, 0]), state, None  # (B, V); memory.outputs are ignored here

    def forward(self, y_in: Tensor, memory: Memory, teacher_forcing: float = 1.0,
                generator: torch.Generator | None = None, return_attn: bool = False):
        _check_teacher_forcing(teacher_forcing)
        plain = type(self).step is LSTMDecoder.step and type(self).init_state is LSTMDecoder.init_state
        if teacher_forcing >= 1.0 and plain and not return_attn:
            # Teacher forcing knows every input in advance: one fused LSTM call over all T steps.
            out, _ = self.rnn(self.embed(y_in), self.init_state(memory))  # (B, T, H)
            return self.head(out)  # (B, T, V)
        return super().forward(y_in, memory, teacher_forcing, generator, return_attn)


class Seq2Seq(nn.Module):
    """Encoder-decoder (Sutskever et al. 2014). `encoder`/`decoder` default to `Encoder`/`LSTMDecoder`
    built from `config`; chapter 5 passes an attention decoder."""

    def __init__(self, config: Seq2SeqConfig, encoder: nn.Module | None = None,
                 decoder: Decoder | None = None) -> None:
        super().__init__()
        self.config = config
        c = config
        self.encoder = encoder or Encoder(c.src_vocab_size, c.embed_dim, c.hidden_size, c.num_layers, c.dropout,
                                          c.bidirectional)
        self.decoder = decoder or LSTMDecoder(c.tgt_vocab_size, c.embed_dim, c.hidden_size, c.num_layers,
                                              c.dropout)

    def encode(self, src: Tensor, src_len: Tensor) -> Memory:
        """Check the source batch and encode it: src (B, S) ids, src_len (B,) → Memory."""
        if not isinstance(src, Tensor) or src.dtype != torch.long or src.dim() != 2:
            raise ValueError(f"src must be a (B, S) tensor of int64 ids, got "
                             f"{tuple(src.shape) if isinstance(src, Tensor) else type(src).__name__}"
                             f"{' ' + str(src.dtype) if isinstance(src, Tensor) else ''}")
        B, S = src.shape
        if B == 0:
            raise ValueError(f"empty batch: src has shape {tuple(src.shape)}")
        if S == 0:
            raise ValueError(f"sequence length 0: src has shape {tuple(src.shape)}; every source needs ≥ 1 character")
        if not isinstance(src_len, Tensor) or tuple(src_len.shape) != (B,):
            raise ValueError(f"src_len must be a ({B},) tensor of lengths, got "
                             f"{tuple(src_len.shape) if isinstance(src_len, Tensor) else src_len!r}")
        if int(src_len.min()) < 1 or int(src_len.max()) > S:
            raise ValueError(f"source lengths must be in [1, {S}], got min {int(src_len.min())}, "
                             f"max {int(src_len.max())}; a length-0 source cannot be encoded")
        V = self.config.src_vocab_size
        if int(src.min()) < 0 or int(src.max()) >= V:
            raise ValueError(f"source id out of range [0, {V}): min {int(src.min())}, max {int(src.max())}")
        return self.encoder(src, src_len)

    def forward(self, src: Tensor, src_len: Tensor, tgt_in: Tensor, teacher_forcing: float = 1.0,
                generator: torch.Generator | None = None) -> Tensor:
        """Training pass: logits (B, T, V) for every target position given src (B, S) and tgt_in (B, T)."""
        memory = self.encode(src, src_len)
        if tgt_in.dim() != 2 or tgt_in.shape[0] != src.shape[0] or tgt_in.shape[1] == 0:
            raise ValueError(f"tgt_in must be (B, T) with B={src.shape[0]} and T ≥ 1, got {tuple(tgt_in.shape)}")
        return self.decoder(tgt_in, memory, teacher_forcing, generator)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Decode with dropout off, then restore the model's mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def seq2seq_loss(logits: Tensor, tgt_out: Tensor) -> Tensor:
    """Mean cross-entropy per target token, padding ignored. logits (B, T, V), tgt_out (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD)


def sequence_log_prob(model: Seq2Seq, src: Tensor, src_len: Tensor, tgt_out: Tensor) -> Tensor:
    """log p(y | x) summed over each target (B, T) up to and including its <eos> (padding after it ignored)."""
    with torch.no_grad():
        tgt_in = torch.cat([torch.full_like(tgt_out[:, :1], SOS), tgt_out[:, :-1]], dim=1)  # (B, T)
        with eval_mode(model):
            logp = F.log_softmax(model(src, src_len, tgt_in), dim=-1)  # (B, T, V)
        tok = logp.gather(-1, tgt_out[..., None])[..., 0]  # (B, T)
        return (tok * (tgt_out != PAD)).sum(dim=1)  # (B,)


# ----------------------------------------------------------------------------------------------
# Decoding

class Decoded(NamedTuple):
    tokens: Tensor  # (B, T') ids up to and including <eos>, <pad> after it
    log_prob: Tensor  # (B,) log p of each decoded sequence
    attn: Tensor | None  # (B, T', S) attention weights if the decoder has them and they were asked for


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_decode_args(max_len: int) -> None:
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")


def greedy_decode(model: Seq2Seq, src: Tensor, src_len: Tensor, max_len: int = 16,
                  return_attn: bool = False) -> Decoded:
    """Batched greedy decoding: at each step feed back the most likely token, until every row has <eos>."""
    with torch.no_grad():
        _check_decode_args(max_len)
        device = _device(model)
        src, src_len = src.to(device), src_len.to(device)
        with eval_mode(model):
            return _greedy(model, src, src_len, max_len, return_attn)


def _greedy(model: Seq2Seq, src: Tensor, src_len: Tensor, max_len: int, return_attn: bool) -> Decoded:
    device = src.device
    memory = model.encode(src, src_len)
    B = src.shape[0]
    state = model.decoder.init_state(memory)
    y = torch.full((B,), SOS, dtype=torch.long, device=device)  # (B,)
    done = torch.zeros(B, dtype=torch.bool, device=device)  # (B,)
    log_prob = torch.zeros(B, device=device)  # (B,)
    tokens, attns = [], []
    for _ in range(max_len):
        logits, state, attn = model.decoder.step(y, state, memory)  # (B, V)
        logp = F.log_softmax(logits, dim=-1)  # (B, V)
        y = logp.argmax(dim=-1)  # (B,)
        log_prob = log_prob.to(logp.dtype) + torch.where(done, 0.0, logp.gather(1, y[:, None])[:, 0])
        tokens.append(torch.where(done, PAD, y))
        attns.append(attn)
        done |= y == EOS
        if bool(done.all()):
            break
    attn = torch.stack(attns, dim=1) if return_attn and attns[0] is not None else None  # (B, T', S)
    return Decoded(torch.stack(tokens, dim=1), log_prob, attn)  # (B, T')


@dataclass(frozen=True)
class Candidate:
    tokens: list[int]  # output ids, ending with <eos> if finished
    log_prob: float  # log p(tokens | source)
    score: float  # log_prob / len(tokens) ** alpha, what the beam ranks by
    finished: bool  # ended with <eos> (False only if max_len was reached first)


def beam_search(model: Seq2Seq, src: Sequence[int] | Tensor, beam_width: int = 4, max_len: int = 16,
                alpha: float = 0.0) -> list[Candidate]:
    """Beam search for one source (ids, (S,)): the best `beam_width` candidates, best first.

    Keeps K = `beam_width` partial outputs; at each step every live beam is extended by every token
    and the extensions are ranked by total log-probability. An extension ending in <eos> that ranks
    among the K best becomes a finished candidate (one outside the K best is pruned); the K best
    other extensions are the next live beams. The search stops when K candidates have finished (or at
    `max_len`, returning the live beams, unfinished, only if none finished). Finished candidates are
    ranked by log p / |y|^alpha, |y| counting <eos>: alpha = 0 is plain log-probability, larger alpha
    favours longer outputs (length normalisation; Wu et al. 2016 use a smoothed variant).
    With beam_width=1 this is exactly greedy decoding.
    """
    with torch.no_grad():
        _check_decode_args(max_len)
        if not isinstance(beam_width, int) or beam_width < 1:
            raise ValueError(f"beam_width must be a positive int, got {beam_width!r}")
        if alpha < 0:
            raise ValueError(f"alpha must be ≥ 0, got {alpha}")
        device = _device(model)
        src = torch.as_tensor(src, dtype=torch.long, device=device)
        if src.dim() == 2 and src.shape[0] == 1:
            src = src[0]
        if src.dim() != 1:
            raise ValueError(f"beam_search decodes one source of shape (S,), got {tuple(src.shape)}; "
                             "loop over a batch, or use greedy_decode for batches")
        if src.numel() == 0:
            raise ValueError("sequence length 0: the source is empty")
        with eval_mode(model):
            return _beam(model, src, beam_width, max_len, alpha)


def _beam(model: Seq2Seq, src: Tensor, beam_width: int, max_len: int, alpha: float) -> list[Candidate]:
    device = src.device
    memory = model.encode(src[None], torch.tensor([src.numel()], device=device))  # batch of 1
    state = model.decoder.init_state(memory)
    beams: list[list[int]] = [[]]  # tokens of each live beam
    beam_logp = torch.zeros(1, device=device)  # (K,)
    y = torch.tensor([SOS], device=device)  # (K,)
    finished: list[Candidate] = []

    def score(logp: float, length: int) -> float:
        return logp / (length ** alpha)

    for _ in range(max_len):
        K = len(beams)
        mem = Memory(outputs=memory.outputs.expand(K, -1, -1),  # (K, S, H): one source, K beams
                     mask=memory.mask.expand(K, -1),  # (K, S)
                     state=tuple(s.expand(-1, K, -1) for s in memory.state))  # each (L, K, H)
        logits, state, _ = model.decoder.step(y, state, mem)  # (K, V)
        total = beam_logp[:, None] + F.log_softmax(logits, dim=-1)  # (K, V)
        V = total.shape[1]
        top_logp, top_idx = total.flatten().topk(min(2 * beam_width, K * V))  # (≤2K,)
        parents, next_tokens, next_logp = [], [], []
        for rank, (lp, idx) in enumerate(zip(top_logp.tolist(), top_idx.tolist())):
            parent, token = divmod(idx, V)
            if token == EOS:
                if rank < beam_width:  # only an <eos> among the K best counts
                    toks = beams[parent] + [EOS]
                    finished.append(Candidate(toks, lp, score(lp, len(toks)), True))
            else:
                parents.append(parent)
                next_tokens.append(token)
                next_logp.append(lp)
                if len(parents) == beam_width:
                    break
        if len(finished) >= beam_width or not parents:
            break
        index = torch.tensor(parents, device=device)  # (K',)
        state = model.decoder.reorder_state(state, index)
        beams = [beams[p] + [t] for p, t in zip(parents, next_tokens)]
        beam_logp = torch.tensor(next_logp, dtype=total.dtype, device=device)  # (K',)
        y = torch.tensor(next_tokens, device=device)  # (K',)
    if not finished:  # max_len reached first: the live beams, unfinished
        finished = [Candidate(b, lp, score(lp, len(b)), False) for b, lp in zip(beams, beam_logp.tolist())]
    return sorted(finished, key=lambda c: c.score, reverse=True)[:beam_width]


def translate(model: Seq2Seq, texts: Sequence[str], src_vocab: Seq2SeqVocab, tgt_vocab: Seq2SeqVocab,
              max_len: int = 16, batch_size: int = 512, unknown: str = "error") -> list[str]:
    """Greedy-decode a list of texts in batches; returns the output strings."""
    with torch.no_grad():
        if isinstance(texts, str):
            raise TypeError("translate takes a list of strings; wrap a single text as [text]")
        out: list[str] = []
        for s in range(0, len(texts), batch_size):
            src, src_len = encode_sources(texts[s:s + batch_size], src_vocab, unknown=unknown)
            tokens = greedy_decode(model, src, src_len, max_len).tokens
            out += [tgt_vocab.decode(row) for row in tokens]
        return out


def exact_match(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Fraction of predictions identical to their target."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
    if len(targets) == 0:
        raise ValueError("exact_match of an empty list is undefined")
    return sum(p == t for p, t in zip(predictions, targets)) / len(targets)


# ----------------------------------------------------------------------------------------------
# Chapter 5: a decoder that attends to every encoder output

ATTENTION_KINDS = ("additive", "dot", "general")


class AttentionDecoder(Decoder):
    """An LSTM decoder that looks at the whole source at every step (Bahdanau, Cho & Bengio 2015,
    "Neural machine translation by jointly learning to align and translate", eqs. 4-6 and A.2.2).

    At step t, with previous state s_{t-1} = (h, c) and previous token y_{t-1}:
        a_t = attention(query = h_{t-1} (top layer), keys = values = encoder outputs, mask)   (B, S)
        c_t = sum_s a_t[s] * enc_s                                                            (B, H)
        h_t = LSTM([embed(y_{t-1}); c_t], s_{t-1})                                            (B, H)
        logits_t = W [h_t; c_t] + b                                                           (B, V)
    so the bottleneck is gone: each output character reads the source positions it needs. The state
    is the LSTM's (h, c), started from the encoder's final state as in chapter 4, plus the keys
    projected once per source (`project_keys`), which no step changes. The attention is
    `attention="additive"` (Bahdanau: v^T tanh(W q + U k)) or `"general"` (q^T W k) / `"dot"` (q^T k,
    needs hidden_size == encoder size) (Luong, Pham & Manning 2015), from `utils.attention`.
    `step` returns a_t as its third value, so `greedy_decode(..., return_attn=True)` gives (B, T, S).
    Shape comments take encoder_size == hidden_size (H), as `Seq2Seq` builds them; both can differ.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, attention: str = "additive",
                 num_layers: int = 1, dropout: float = 0.0, encoder_size: int | None = None,
                 attn_dim: int | None = None) -> None:
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        H_enc = encoder_size or hidden_size  # size of each encoder output (key and value)
        if attention == "dot" and H_enc != hidden_size:
            raise ValueError(f"dot attention needs hidden_size == encoder_size, got {hidden_size} and {H_enc}; "
                             "use attention='general' or 'additive'")
        self.vocab_size = vocab_size
        self.attention_kind = attention
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        if attention == "additive":
            self.attn = AdditiveAttention(hidden_size, H_enc, attn_dim or hidden_size)
        else:
            self.attn = DotProductAttention(hidden_size, H_enc, kind=attention)
        self.rnn = nn.LSTM(embed_dim + H_enc, hidden_size, num_layers, batch_first=True, dropout=dropout)
        self.head = nn.Linear(hidden_size + H_enc, vocab_size)

    def init_state(self, memory: Memory) -> tuple[Tensor, Tensor, Tensor]:
        """(h, c) each (L, B, H): the encoder's summary is still a good start; plus the projected keys
        (B, S, A), computed once per source instead of once per output step."""
        h, c = memory.state
        return h, c, self.attn.project_keys(memory.outputs)

    def step(self, y_prev: Tensor, state, memory: Memory):
        """y_prev (B,) → logits (B, V), new (h, c, keys), attention weights (B, S) (exactly 0 at padding)."""
        h, c, keys = state  # (L, B, H), (L, B, H), (B, S, A)
        context, weights = self.attn(h[-1], memory.outputs, memory.mask, projected=keys)  # (B, H), (B, S)
        x = torch.cat([self.embed(y_prev), context], dim=-1)[:, None]  # (B, 1, E + H)
        out, (h, c) = self.rnn(x, (h, c))  # (B, 1, H)
        logits = self.head(torch.cat([out[:, 0], context], dim=-1))  # (B, H + H) → (B, V)
        return logits, (h, c, keys), weights

    def reorder_state(self, state, index: Tensor):
        h, c, keys = state
        return h.index_select(1, index), c.index_select(1, index), keys.index_select(0, index)


__all__ += ["ATTENTION_KINDS", "AttentionDecoder"]
