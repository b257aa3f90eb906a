"""Questions and answers about `utils.shapes` scenes: the data of chapter 10's vision-language model.

Six kinds of question, each asked only where its answer is unique:
    colour   "what colour is the circle ?"            → "red"          (a kind that occurs once)
    shape    "which shape is red ?"                   → "circle"       (a colour that occurs once)
    count    "how many shapes are there ?"            → "one" / "two"
    where    "where is the red circle ?"              → "left", "top", "middle", ...
    which    "what is on the left ?"                  → "red circle"   (the shape at a place)
    yes/no   "is there a red circle ?"                → "yes" / "no"   (half and half; the "no" differs from a
                                                                        shape of the scene in colour or kind)
A seventh task, "caption", asks `DESCRIBE` ("what do you see ?") and expects `describe(scene)`, every shape's
colour, kind and place in one sentence ("a red circle on the left and a blue square on the right"): the
captioning data LLaVA's first stage trains on, in miniature. `shapes_qa(..., captions=k)` adds it k times per scene;
`captioning(data)` asks it once of every scene of `data`.
Every kind has seen phrasings and one held-out phrasing (`TEMPLATES[kind][-1]`), made of words the seen ones
use, so a model can be asked a question in a form it was never trained on. Held-out colour-shape
combinations stay held out as in chapter 9: training scenes come from `SEEN`, and the "no" questions of
training name seen combinations only.

`ShapesQA` holds a `CaptionedShapes` and (image, kind, question, answer) items; `vocab()` is the word
vocabulary with the special tokens <pad>, <image>, <end> (`vocab(chat=True)` adds <user>, <assistant>); `encode` lays out a sequence as
N × <image>, the question, "?", the answer, <end>, and says where the answer starts.

The chat template (LLaVA's instruction tuning, Liu et al. 2023, section 4.2 and table 2, in miniature):
`chat` lays out a conversation about one image as
    <user> N × <image> question_1 <assistant> answer_1 <end> <user> question_2 <assistant> answer_2 <end> ...
and marks the tokens the model is trained to predict: each answer's words and the <end> that closes it, never
the user's turns nor the image (LLaVA's eq. 3: the likelihood of the assistant's answers given the image and the
instructions). `chat_collate` pads a batch and turns the marks into next-token targets (-100 where nothing is
scored); with 0 image tokens the same template is a text-only conversation.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .shapes import COLOURS, HELD_OUT, PLACES, SEEN, SHAPES, CaptionedShapes, Shape, captioned_shapes
from .text import Vocab

__all__ = ["KINDS", "TEMPLATES", "DESCRIBE", "describe", "captioning", "PAD", "IMAGE", "END", "USER", "ASSISTANT",
           "IGNORE", "QA", "ShapesQA", "scene_questions", "shapes_qa", "vocab", "encode", "collate", "chat",
           "chat_collate", "by_scene", "NAMES", "NAME_QUESTION", "Naming", "naming", "task_prompts"]

PAD, IMAGE, END = "<pad>", "<image>", "<end>"
USER, ASSISTANT = "<user>", "<assistant>"  # the chat template's role markers
IGNORE = -100  # a target F.cross_entropy skips (the same value as utils.vlm.IGNORE)
KINDS = ("colour", "shape", "count", "where", "which", "yes/no")
TEMPLATES: dict[str, tuple[str, ...]] = {  # the last phrasing of each kind is held out of training
    "colour": ("what colour is the {shape} ?", "which colour is the {shape} ?", "the {shape} is which colour ?"),
    "shape": ("which shape is {colour} ?", "what is the {colour} shape ?", "which is the {colour} shape ?"),
    "count": ("how many shapes are there ?", "how many shapes do you see ?", "how many are there ?"),
    "where": ("where is the {colour} {shape} ?", "where is the {shape} ?", "the {colour} {shape} is where ?"),
    "which": ("what is {where} ?", "which shape is {where} ?", "{where} is what ?"),
    "yes/no": ("is there a {colour} {shape} ?", "do you see a {colour} {shape} ?", "is a {colour} {shape} there ?"),
}
NUMBERS = {1: "one", 2: "two"}
NAMES = ("dax", "wug", "fep", "zib")  # made-up names: each prompt gives them to the kinds of shape anew
NAME_QUESTION = "what is this ?"  # the few-shot task's question (answer: the name this prompt gave the kind)
DESCRIBE = "what do you see ?"  # the captioning prompt (kind "caption"); its words are the questions'


@dataclass(frozen=True)
class QA:
    image: int  # index of the scene in the dataset
    kind: str
    question: str
    answer: str


def _pick(rng: np.random.Generator, options: Sequence) -> object:
    return options[int(rng.integers(len(options)))]


def scene_questions(scene: Sequence[Shape], rng: np.random.Generator, phrasing: str = "seen",
                    combos: Sequence[tuple[str, str]] = SEEN) -> list[tuple[str, str, str]]:
    """(kind, question, answer) for every kind that has a unique answer about `scene`, each in a phrasing drawn by
    `rng` among the seen ones (`phrasing="seen"`) or the held-out one ("held_out"). A "no" question names a
    combination of `combos` that is not in the scene (differing in colour or kind from one of its shapes)."""
    if phrasing not in ("seen", "held_out"):
        raise ValueError(f"scene_questions: phrasing must be 'seen' or 'held_out', got {phrasing!r}")
    scene = tuple(scene)

    def template(kind: str) -> str:
        t = TEMPLATES[kind]
        return t[-1] if phrasing == "held_out" else str(_pick(rng, t[:-1]))

    kinds = [s.kind for s in scene]
    colours = [s.colour for s in scene]
    out = [("count", template("count"), NUMBERS[len(scene)])]
    for s in scene:
        if kinds.count(s.kind) == 1:
            out.append(("colour", template("colour").format(shape=s.kind), s.colour))
        if colours.count(s.colour) == 1:
            out.append(("shape", template("shape").format(colour=s.colour), s.kind))
        t = template("where")
        if "{colour}" in t or kinds.count(s.kind) == 1:  # "where is the circle ?" needs a single circle
            out.append(("where", t.format(colour=s.colour, shape=s.kind), s.place))
        out.append(("which", template("which").format(where=PLACES[s.place][1]), s.name))
    present = {s.name for s in scene}
    s = scene[int(rng.integers(len(scene)))]
    if rng.random() < 0.5:
        out.append(("yes/no", template("yes/no").format(colour=s.colour, shape=s.kind), "yes"))
    else:  # a near miss: same colour or same kind as a shape of the scene, absent from it
        near = [(c, k) for c, k in combos if (c == s.colour) != (k == s.kind) and f"{c} {k}" not in present]
        c, k = _pick(rng, near)  # type: ignore[misc]
        out.append(("yes/no", template("yes/no").format(colour=c, shape=k), "no"))
    return out


def describe(scene: Sequence[Shape]) -> str:
    """The caption a model is trained to give: "a {colour} {shape} {where}" for each shape, joined by "and"
    (left before right, top before bottom, as `captioned_shapes` orders a pair). No sizes: 13 words at most."""
    return " and ".join(f"a {s.colour} {s.kind} {PLACES[s.place][1]}" for s in scene)


@dataclass
class ShapesQA:
    """Scenes (a CaptionedShapes) and questions about them."""

    shapes: CaptionedShapes
    items: list[QA]

    def __len__(self) -> int:
        return len(self.items)

    def of_kind(self, kind: str) -> list[int]:
        return [i for i, q in enumerate(self.items) if q.kind == kind]


def shapes_qa(n: int, seed: int = 0, combos: Sequence[tuple[str, str]] = SEEN, phrasing: str = "seen",
              pairs: float = 0.5, per_scene: int | None = None, captions: int = 0) -> ShapesQA:
    """`n` scenes (`captioned_shapes(n, seed, combos=combos, pairs=pairs)`) and their questions: all of them
    (about 6 per scene), or `per_scene` drawn at random; then, if `captions` > 0, each scene's caption question
    (`DESCRIBE` → `describe(scene)`) `captions` times, the weight of captioning in a training mix.
    Same arguments → same data."""
    if not isinstance(captions, int) or captions < 0:
        raise ValueError(f"shapes_qa: captions is how many times each scene's caption is asked, an int >= 0, "
                         f"got {captions!r}")
    shapes = captioned_shapes(n, seed=seed, combos=combos, pairs=pairs)
    rng = np.random.default_rng(seed + 10_000)
    # "no" questions name seen combinations, unless the scenes themselves show held-out ones
    negatives = SEEN if set(map(tuple, combos)) <= set(SEEN) else tuple(SEEN) + tuple(HELD_OUT)
    items = []
    for i, scene in enumerate(shapes.scenes):
        qs = scene_questions(scene, rng, phrasing, negatives)
        if per_scene is not None:
            qs = [qs[j] for j in sorted(rng.choice(len(qs), size=min(per_scene, len(qs)), replace=False))]
        items += [QA(i, *q) for q in qs]
    items += [QA(i, "caption", DESCRIBE, describe(scene)) for i, scene in enumerate(shapes.scenes)] * captions
    return ShapesQA(shapes, items)


def captioning(data: ShapesQA) -> ShapesQA:
    """The same scenes, each asked for its caption once (kind "caption"): a test set for captioning."""
    return ShapesQA(data.shapes, [QA(i, "caption", DESCRIBE, describe(scene)) for i, scene in enumerate(data.shapes.scenes)])


def vocab(chat: bool = False) -> Vocab:
    """Every word the questions and answers can use, after <pad>, <image>, <end>; fixed order (alphabetical).
    `chat`: also the chat template's roles <user>, <assistant> (after <end>) and the few-shot prompts' words
    (`NAMES`, `NAME_QUESTION`)."""
    words = {w for ts in TEMPLATES.values() for t in ts for w in t.split() if "{" not in w}
    words |= set(COLOURS) | set(SHAPES) | set(PLACES) | set(NUMBERS.values()) | {"yes", "no"}
    words |= {w for _, where in PLACES.values() for w in where.split()} | set(DESCRIBE.split()) | {"a", "and"}
    if not chat:
        return Vocab([PAD, IMAGE, END] + sorted(words))
    words |= set(NAMES) | set(NAME_QUESTION.split())
    return Vocab([PAD, IMAGE, END, USER, ASSISTANT] + sorted(words))


def encode(v: Vocab, question: str, answer: str | None, image_tokens: int) -> tuple[list[int], int]:
    """ids of N × <image>, the question's words (its "?" included), then the answer's words and <end> (none if
    answer is None: a prompt), and the position where the answer starts."""
    prompt = [IMAGE] * image_tokens + question.split()
    ids = v.encode(prompt + ([] if answer is None else answer.split() + [END])).tolist()
    return ids, len(prompt)


def collate(v: Vocab, items: Sequence[QA], image_tokens: int) -> tuple[Tensor, Tensor]:
    """Training sequences, padded on the right with <pad>: ids (B, T) and each answer's start (B,)."""
    encoded = [encode(v, q.question, q.answer, image_tokens) for q in items]
    T = max(len(ids) for ids, _ in encoded)
    pad = v.index(PAD)
    ids = torch.tensor([ids + [pad] * (T - len(ids)) for ids, _ in encoded])  # (B, T)
    return ids, torch.tensor([start for _, start in encoded])  # (B, T), (B,)


def by_scene(data: ShapesQA) -> list[list[int]]:
    """The indices of `data.items` grouped by scene: entry i lists the items about scene i, in order."""
    groups: list[list[int]] = [[] for _ in range(len(data.shapes))]
    for i, q in enumerate(data.items):
        groups[q.image].append(i)
    return groups


def chat(v: Vocab, turns: Sequence[tuple[str, str | None]], image_tokens: int, every_turn: bool = False,
         last_only: bool = False) -> tuple[list[int], list[bool]]:
    """One conversation about one image in the chat template:

        <user> N × <image> q_1 <assistant> a_1 <end> <user> q_2 <assistant> a_2 <end> ...

    `turns` are (question, answer) pairs; the last answer may be None, and the conversation then ends with
    <assistant>, a prompt for the model's answer. Returns the ids and, for each id, whether it is scored: True
    exactly at the answers' words and the <end> after each (LLaVA's eq. 3 takes the likelihood of the assistant's
    turns only), False at the roles, the image and the questions.
    `every_turn`: each user turn starts with its own `image_tokens` <image>s (an interleaved conversation, one
    image per turn: Flamingo's few-shot prompts, with one <image> marker per image). `last_only`: only the last
    answer is scored (the earlier turns are examples given in the prompt)."""
    if not turns:
        raise ValueError("chat: a conversation needs at least one (question, answer) turn")
    if not isinstance(image_tokens, int) or image_tokens < 0:
        raise ValueError(f"chat: image_tokens is how many <image> placeholders to put in, an int >= 0, got "
                         f"{image_tokens!r}")
    tokens: list[str] = []
    scored: list[bool] = []
    for k, (question, answer) in enumerate(turns):
        if answer is None and k != len(turns) - 1:
            raise ValueError(f"chat: only the last turn may leave its answer out (None), turn {k} of {len(turns)} does")
        prompt = [USER] + [IMAGE] * (image_tokens if k == 0 or every_turn else 0) + question.split() + [ASSISTANT]
        tokens += prompt
        scored += [False] * len(prompt)
        if answer is not None:
            reply = answer.split() + [END]
            tokens += reply
            scored += [not last_only or k == len(turns) - 1] * len(reply)
    return v.encode(tokens).tolist(), scored


def chat_collate(v: Vocab, conversations: Sequence[Sequence[tuple[str, str | None]]], image_tokens: int,
                 every_turn: bool = False, last_only: bool = False) -> tuple[Tensor, Tensor]:
    """A batch of conversations (`chat`, same options), padded on the right with <pad>: ids (B, T) and next-token
    targets (B, T), where targets[b, t] = ids[b, t + 1] if token t + 1 is scored and -100 (ignored) otherwise."""
    if not conversations:
        raise ValueError("chat_collate: the batch is empty")
    laid = [chat(v, turns, image_tokens, every_turn, last_only) for turns in conversations]
    T = max(len(ids) for ids, _ in laid)
    pad = v.index(PAD)
    ids = torch.full((len(laid), T), pad, dtype=torch.long)  # (B, T)
    targets = torch.full((len(laid), T), IGNORE, dtype=torch.long)  # (B, T)
    for b, (row, scored) in enumerate(laid):
        ids[b, :len(row)] = torch.tensor(row)
        nxt = torch.tensor(row[1:])  # (T_b - 1,) what position t predicts
        keep = torch.tensor(scored[1:], dtype=torch.bool)
        targets[b, :len(row) - 1] = torch.where(keep, nxt, torch.full_like(nxt, IGNORE))
    return ids, targets


@dataclass
class Naming:
    """Few-shot naming prompts: `shapes` holds single-shape scenes; prompt i shows the scenes `images[i]`
    (examples first, the query last) and gives them the names `names[i]` (the query's is the answer)."""

    shapes: CaptionedShapes
    images: Tensor  # (n, shots + 1) indices into shapes
    names: list[list[str]]

    def __len__(self) -> int:
        return len(self.names)

    def turns(self, i: int, examples: bool = True, answer: bool = True) -> list[tuple[str, str | None]]:
        """Prompt i as chat turns: one (NAME_QUESTION, name) per example (`examples`), then the query's, its
        answer left out unless `answer`."""
        named = [(NAME_QUESTION, name) for name in self.names[i]]
        query = (NAME_QUESTION, self.names[i][-1] if answer else None)
        return (named[:-1] if examples else []) + [query]


def naming(n: int, shots: int = 2, seed: int = 0, pool: int = 4000, combos: Sequence[tuple[str, str]] = SEEN,
           by: str = "kind") -> Naming:
    """`n` few-shot prompts (Flamingo's interleaved prompts, in miniature): each draws `shots` single shapes of
    different kinds (`by="kind"`) or colours (`by="colour"`) and a query shape of one of those kinds (colours),
    another picture drawn separately, and names the kinds (colours) with distinct `NAMES` drawn anew for each
    prompt, so the answer can only come from the examples: without them a model can do no better than guess
    among the names. Same arguments → same prompts."""
    if by not in ("kind", "colour"):
        raise ValueError(f"naming: by must be 'kind' or 'colour' (what the names stand for), got {by!r}")
    if not isinstance(shots, int) or not 1 <= shots < len(NAMES):
        raise ValueError(f"naming: shots must be between 1 and {len(NAMES) - 1}, got {shots!r}")
    shapes = captioned_shapes(pool, seed=seed, combos=combos, pairs=0.0)
    by_kind: dict[str, list[int]] = {}  # by kind or by colour
    for i, scene in enumerate(shapes.scenes):
        by_kind.setdefault(getattr(scene[0], by), []).append(i)
    kinds = sorted(by_kind)
    if len(kinds) < shots:
        raise ValueError(f"naming: the pool shows {len(kinds)} {by}s, fewer than shots={shots}")
    rng = np.random.default_rng(seed + 20_000)
    images, names = [], []
    for _ in range(n):
        chosen = [kinds[j] for j in rng.choice(len(kinds), size=shots, replace=False)]
        label = dict(zip(chosen, (NAMES[j] for j in rng.choice(len(NAMES), size=shots, replace=False))))
        query = chosen[int(rng.integers(shots))]
        shown = chosen + [query]
        picks = [by_kind[k][int(rng.integers(len(by_kind[k])))] for k in shown]
        while picks[-1] == picks[shown.index(query)]:  # the query is never the example's very picture
            picks[-1] = by_kind[query][int(rng.integers(len(by_kind[query])))]
        images.append(picks)
        names.append([label[k] for k in shown])
    return Naming(shapes, torch.tensor(images), names)


def task_prompts(n: int, shots: int = 2, seed: int = 0, pool: int = 4000,
                 combos: Sequence[tuple[str, str]] = SEEN) -> Naming:
    """`n` few-shot prompts whose examples set the task (Flamingo's few-shot prompting, in miniature): `shots + 1`
    single shapes, each asked `NAME_QUESTION` ("what is this ?"), which alone does not say what is wanted; in
    each prompt the examples answer with their shape's colour, or all with its kind (chosen at random per
    prompt), and the query's answer is its own colour or kind, the same way. Without the examples the question
    is ambiguous. Returned as a `Naming` whose `names` are the answers. Same arguments → same prompts."""
    if not isinstance(shots, int) or shots < 1:
        raise ValueError(f"task_prompts: shots must be an int >= 1, got {shots!r}")
    shapes = captioned_shapes(pool, seed=seed, combos=combos, pairs=0.0)
    rng = np.random.default_rng(seed + 30_000)
    images = rng.integers(pool, size=(n, shots + 1))
    colour = rng.random(n) < 0.5
    names = [[shapes.scenes[i][0].colour if c else shapes.scenes[i][0].kind for i in row]
             for row, c in zip(images.tolist(), colour)]
    return Naming(shapes, torch.tensor(images), names)
