"""The chat template of utils.shapes_qa (chapter 10's instruction tuning): the layout of a conversation, its loss
mask (the assistant's answers and their <end> only, LLaVA's eq. 3) and the next-token targets, pinned to sequences
written out by hand. (The questions and captions themselves are tested in tests/test_vlm.py.)"""
import pytest
import torch
import torch.nn.functional as F

from utils.shapes_qa import (ASSISTANT, END, IGNORE, IMAGE, PAD, USER, by_scene, chat, chat_collate, shapes_qa,
                             vocab)


def test_chat_lays_out_the_turns_and_scores_only_the_answers():
    V = vocab(chat=True)
    ids, scored = chat(V, [("how many shapes are there ?", "two"), ("what is on the left ?", "red circle")], 2)
    expected = [USER, IMAGE, IMAGE, "how", "many", "shapes", "are", "there", "?", ASSISTANT, "two", END,
                USER, "what", "is", "on", "the", "left", "?", ASSISTANT, "red", "circle", END]
    assert V.decode(ids) == expected  # the image only in the first user turn
    marked = [tok for tok, s in zip(expected, scored) if s]
    assert marked == ["two", END, "red", "circle", END]  # answers and their <end>: nothing else
    assert len(scored) == len(ids)


def test_chat_prompt_ends_with_the_assistant_role_and_text_only_has_no_image():
    V = vocab(chat=True)
    ids, scored = chat(V, [("what do you see ?", None)], 3)
    assert V.decode(ids) == [USER, IMAGE, IMAGE, IMAGE, "what", "do", "you", "see", "?", ASSISTANT]
    assert not any(scored)
    ids, scored = chat(V, [("is there a red circle ?", "no"), ("how many are there ?", None)], 0)
    assert IMAGE not in V.decode(ids)
    assert V.decode(ids)[-1] == ASSISTANT and sum(scored) == 2  # "no" and its <end>


def test_chat_collate_targets_are_the_next_scored_token_and_the_loss_is_the_answers_likelihood():
    V = vocab(chat=True)
    conversations = [[("how many shapes are there ?", "one")],  # a short one: padded
                     [("what colour is the square ?", "green"), ("what is on the left ?", "blue square")]]
    ids, targets = chat_collate(V, conversations, 1)
    assert ids.dtype == targets.dtype == torch.long and ids.shape == targets.shape
    row0 = [USER, IMAGE, "how", "many", "shapes", "are", "there", "?", ASSISTANT, "one", END]
    assert V.decode(ids[0, :len(row0)]) == row0 and (ids[0, len(row0):] == V.index(PAD)).all()
    # written out: position t predicts token t + 1, scored only if that token is an answer word or its <end>
    t0 = [IGNORE] * ids.shape[1]
    t0[8], t0[9] = V.index("one"), V.index(END)  # <assistant> -> one, one -> <end>
    assert targets[0].tolist() == t0
    toks = V.decode(ids[1])
    a1, a2 = [i for i, t in enumerate(toks) if t == ASSISTANT]
    t1 = [IGNORE] * ids.shape[1]
    t1[a1], t1[a1 + 1] = V.index("green"), V.index(END)
    t1[a2], t1[a2 + 1], t1[a2 + 2] = V.index("blue"), V.index("square"), V.index(END)
    assert targets[1].tolist() == t1
    # the loss with these targets is the mean of -log p over the 7 answer tokens, nothing else (LLaVA eq. 3)
    logits = torch.randn(*ids.shape, len(V), generator=torch.Generator().manual_seed(0))
    by_hand = []
    for b, row in ((0, t0), (1, t1)):
        by_hand += [-torch.log_softmax(logits[b, t], -1)[y] for t, y in enumerate(row) if y != IGNORE]
    assert len(by_hand) == 7
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
    torch.testing.assert_close(loss, torch.stack(by_hand).mean())


def test_by_scene_groups_every_item_under_its_image():
    data = shapes_qa(30, seed=3, captions=1)
    groups = by_scene(data)
    assert len(groups) == 30 and sorted(i for g in groups for i in g) == list(range(len(data)))
    assert all(data.items[i].image == s for s, g in enumerate(groups) for i in g)
    assert all(any(data.items[i].kind == "caption" for i in g) for g in groups)


def test_chat_rejects_bad_conversations():
    V = vocab(chat=True)
    with pytest.raises(ValueError, match="at least one"):
        chat(V, [], 1)
    with pytest.raises(ValueError, match="only the last turn"):
        chat(V, [("how many are there ?", None), ("what do you see ?", "a red circle")], 1)
    with pytest.raises(ValueError, match="image_tokens"):
        chat(V, [("how many are there ?", "one")], -1)
    with pytest.raises(ValueError, match="empty"):
        chat_collate(V, [], 1)


def test_interleaved_chat_puts_an_image_in_every_turn_and_scores_the_last_answer_only():
    V = vocab(chat=True)
    turns = [("what is this ?", "dax"), ("what is this ?", "wug"), ("what is this ?", "dax")]
    ids, targets = chat_collate(V, [turns], 1, every_turn=True, last_only=True)
    toks = V.decode(ids[0])
    assert toks == \
        [USER, IMAGE, "what", "is", "this", "?", ASSISTANT, "dax", END,
         USER, IMAGE, "what", "is", "this", "?", ASSISTANT, "wug", END,
         USER, IMAGE, "what", "is", "this", "?", ASSISTANT, "dax", END]
    expected = [IGNORE] * len(toks)
    expected[24], expected[25] = V.index("dax"), V.index(END)  # the query's answer only, not the examples'
    assert targets[0].tolist() == expected
    _, scored = chat(V, turns, 1, every_turn=True)  # by default every answer counts
    assert sum(scored) == 6


def test_naming_prompts_name_kinds_anew_and_the_query_repeats_an_example_kind():
    from utils.shapes_qa import NAMES, naming

    prompts = naming(300, shots=2, seed=5, pool=400)
    again = naming(300, shots=2, seed=5, pool=400)
    assert torch.equal(prompts.images, again.images) and prompts.names == again.names
    assert prompts.images.shape == (300, 3) and len(prompts) == 300
    kinds_named = set()
    for row, names in zip(prompts.images.tolist(), prompts.names):
        kinds = [prompts.shapes.scenes[i][0].kind for i in row]
        assert len(prompts.shapes.scenes[row[0]]) == 1  # single shapes
        assert kinds[0] != kinds[1] and names[0] != names[1]  # two kinds, two names
        assert kinds[2] in kinds[:2] and names[2] == names[kinds[:2].index(kinds[2])]  # the answer is the example's
        assert row[2] not in row[:2]  # another picture of that kind
        assert set(names) <= set(NAMES)
        kinds_named |= {(kinds[0], names[0])}
    assert len(kinds_named) > 8  # a kind gets different names in different prompts
    queries = [prompts.names[i][-1] == prompts.names[i][0] for i in range(300)]
    assert 0.35 < sum(queries) / 300 < 0.65  # the query is the first example's kind about half the time
    assert prompts.turns(0, examples=False, answer=False) == [("what is this ?", None)]
    assert prompts.turns(0)[:2] == [("what is this ?", prompts.names[0][0]), ("what is this ?", prompts.names[0][1])]
    by_colour = naming(200, shots=2, seed=6, pool=400, by="colour")
    for row, names in zip(by_colour.images.tolist(), by_colour.names):
        colours = [by_colour.shapes.scenes[i][0].colour for i in row]
        assert colours[0] != colours[1] and colours[2] in colours[:2]
        assert names[2] == names[colours[:2].index(colours[2])]
    with pytest.raises(ValueError, match="shots"):
        naming(3, shots=0)
    with pytest.raises(ValueError, match="by must be"):
        naming(3, by="size")


def test_task_prompts_answer_all_with_the_colour_or_all_with_the_kind():
    from utils.shapes import COLOURS, SHAPES
    from utils.shapes_qa import task_prompts

    prompts = task_prompts(400, shots=2, seed=3, pool=300)
    assert prompts.names == task_prompts(400, shots=2, seed=3, pool=300).names and prompts.images.shape == (400, 3)
    by_colour = 0
    for row, names in zip(prompts.images.tolist(), prompts.names):
        shapes = [prompts.shapes.scenes[i][0] for i in row]
        if names[0] in COLOURS:
            assert names == [s.colour for s in shapes]  # every answer, the query's too, is its own colour
            by_colour += 1
        else:
            assert names == [s.kind for s in shapes] and set(names) <= set(SHAPES)
    assert 150 < by_colour < 250  # about half the prompts ask for the colour
    assert prompts.turns(1, examples=False, answer=False) == [("what is this ?", None)]
    with pytest.raises(ValueError, match="shots"):
        task_prompts(3, shots=0)


def test_plain_vocabulary_is_unchanged_and_the_chat_one_adds_roles():
    plain, chatty = vocab(), vocab(chat=True)
    assert len(plain) == 45 and plain.itos[:3] == [PAD, IMAGE, END] and USER not in plain.stoi
    assert chatty.itos[:5] == [PAD, IMAGE, END, USER, ASSISTANT]
    assert set(plain.itos) < set(chatty.itos) and {"dax", "this"} <= set(chatty.itos) - set(plain.itos)
