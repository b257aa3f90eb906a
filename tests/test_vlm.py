"""utils.vlm: the image path (which layer, the class token dropped, the projector) and the merge of the visual
tokens into the text equal Hugging Face's LlavaForConditionalGeneration; the loss counts answer tokens only;
Flamingo's gates at 0 give exactly the language model; a frozen tower gets no gradient; generation with and
without the KV cache agree; bad input fails clearly. All offline, tiny configs, scrambled weights."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPConfig as HFCLIPConfig
from transformers import CLIPModel, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from utils import clip as C
from utils.gpt import GPT, GPTConfig
from utils.vlm import (IGNORE, GatedCrossAttention, VisionLanguageModel, VLMConfig, answer_targets, image_features,
                       merge_image_tokens)
from weights import scramble_

TOL = {torch.float64: dict(atol=1e-10, rtol=0), torch.float32: dict(atol=1e-5, rtol=1e-5)}
V, C_LM, IMAGE = 40, 32, 39  # vocabulary, LM width, the image token's id
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_tower(seed=0, dtype=torch.float64):
    """CLIP's ViT tower: 32×32 images, patches of 8 (a 4×4 grid), 3 blocks, width 24, E = 16."""
    vision = C.CLIPVisionConfig(image_size=32, layers=3, width=24, patch_size=8, head_width=8)
    clip = C.CLIP(C.CLIPConfig(embed_dim=16, vision=vision,
                               text=C.CLIPTextConfig(context_length=8, vocab_size=10, width=16, layers=1, head_width=8)))
    return scramble_(clip, seed).to(dtype).visual.eval()


def tiny_vlm(fusion="prefix", seed=0, dtype=torch.float64, strategy="default", block_size=32, **config):
    torch.manual_seed(seed)
    lm = GPT(GPTConfig(vocab_size=V, block_size=block_size, n_layer=2, n_head=4, n_embd=C_LM))
    model = VisionLanguageModel(tiny_tower(seed, dtype), scramble_(lm, seed + 1).to(dtype),
                                VLMConfig(fusion=fusion, image_token_id=config.pop(
                                    "image_token_id", IMAGE if fusion == "prefix" else None),
                                          vision_feature_select_strategy=strategy, **config))
    scramble_(model.multi_modal_projector, seed + 2)
    if model.cross_attn is not None:
        scramble_(model.cross_attn, seed + 3)  # gates included: non-zero
    return model.to(dtype).eval()


def images(B, seed=0, dtype=torch.float64):
    return torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def prompt(B, N, text=5, seed=0, fusion="prefix"):
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(0, IMAGE, (B, text), generator=g)  # (B, text) never the image id
    return torch.cat([torch.full((B, N), IMAGE), words], dim=1) if fusion == "prefix" else words


# ---------------------------------------------------------------------------------------------- equal to HF Llava

def tiny_llava(dtype, layer, strategy):
    """HF's Llava with a 3-block CLIP ViT (the weights of an HF CLIPModel's vision half) and a Llama text model."""
    vision = dict(hidden_size=24, intermediate_size=96, num_hidden_layers=3, num_attention_heads=3, image_size=32,
                  patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=16)
    text = dict(vocab_size=V, hidden_size=C_LM, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=4, max_position_embeddings=64, pad_token_id=0)
    hf_clip = scramble_(CLIPModel(HFCLIPConfig(vision_config=vision, projection_dim=16, text_config=dict(
        vocab_size=10, hidden_size=16, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=8, hidden_act="quick_gelu", bos_token_id=7, eos_token_id=8))), 0).to(dtype).eval()
    llava = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=vision, text_config=LlamaConfig(**text), image_token_id=IMAGE, projector_hidden_act="gelu",
        vision_feature_layer=layer, vision_feature_select_strategy=strategy))
    scramble_(llava, 1).to(dtype).eval()
    llava.model.vision_tower.load_state_dict(hf_clip.vision_model.state_dict(), strict=True)
    return hf_clip, llava


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layer, strategy", [(-2, "default"), (-1, "full"), (1, "default")])
def test_image_path_and_merge_equal_hf_llava(dtype, layer, strategy):
    hf_clip, llava = tiny_llava(dtype, layer, strategy)
    clip = C.build_model(C.from_hf_clip_state_dict(hf_clip.state_dict()), head_width=8).to(dtype).eval()
    lm = GPT(GPTConfig(vocab_size=V, block_size=64, n_layer=1, n_head=4, n_embd=C_LM)).to(dtype)
    with torch.no_grad():
        lm.transformer.wte.weight.copy_(llava.model.language_model.embed_tokens.weight)
    ours = VisionLanguageModel(clip.visual, lm, VLMConfig(image_token_id=IMAGE, vision_feature_layer=layer,
                                                          vision_feature_select_strategy=strategy)).to(dtype).eval()
    ours.multi_modal_projector.load_state_dict(llava.model.multi_modal_projector.state_dict(), strict=True)
    x = images(2, seed=3, dtype=dtype)
    N = ours.num_image_tokens
    assert N == (17 if strategy == "full" else 16)
    # the image tokens sit at different places in the two texts: after 2 words, and at the start
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(1, IMAGE, (2, N + 6), generator=g)
    ids[0, 2:2 + N] = IMAGE
    ids[1, :N] = IMAGE
    with torch.no_grad():
        hf_features = llava.model.get_image_features(pixel_values=x).pooler_output  # list of (N, C)
        torch.testing.assert_close(ours.encode_images(x), torch.stack(list(hf_features)), **TOL[dtype])
        hf_embeds = llava.model(input_ids=ids, pixel_values=x, output_hidden_states=True).hidden_states[0]
        merged = merge_image_tokens(lm.transformer.wte(ids), ids, IMAGE, ours.encode_images(x))
        torch.testing.assert_close(merged, hf_embeds, **TOL[dtype])


def test_hidden_state_indexing_and_pooled_strategy():
    tower = tiny_tower()
    x = images(2)
    with torch.no_grad():
        full, last = image_features(tower, x, -1, "full"), image_features(tower, x, 3, "full")
        torch.testing.assert_close(full, last, atol=0, rtol=0)  # -1 is block 3 of 3
        torch.testing.assert_close(image_features(tower, x, 0, "full"), tower.embed(x), atol=0, rtol=0)
        torch.testing.assert_close(tower.ln_post(full)[:, 0] @ tower.proj, image_features(tower, x, -1, "pooled")[:, 0],
                                   **TOL[torch.float64])
    with pytest.raises(ValueError, match="layer must be an int in"):
        image_features(tower, x, 4)
    with pytest.raises(ValueError, match="strategy must be one of"):
        image_features(tower, x, -2, "cls")


# ---------------------------------------------------------------------------------------------- the loss, the gates

def test_loss_counts_answer_tokens_only():
    model = tiny_vlm()
    N = model.num_image_tokens
    ids = prompt(3, N, text=7, seed=1)  # image tokens, then 7 words: question and answer
    start = [N + 4, N + 5, N + 6]  # where each answer begins
    targets = answer_targets(ids, start)
    assert (targets[:, : N + 3] == IGNORE).all() and (targets[:, -1] == IGNORE).all()
    with torch.no_grad():
        logits, loss = model(images(3), ids, targets)
    # reference: sum of -log p(answer token | everything before it) over the answer tokens, over their count
    nll, count = 0.0, 0
    for b in range(3):
        for t in range(start[b], ids.shape[1]):
            nll -= F.log_softmax(logits[b, t - 1], dim=-1)[ids[b, t]]
            count += 1
    torch.testing.assert_close(loss, nll / count, **TOL[torch.float64])
    # padding is skipped too
    padded = answer_targets(torch.tensor([[IMAGE, 5, 6, 0, 0]]), [2], pad_id=0)
    assert padded.tolist() == [[IGNORE, 6, IGNORE, IGNORE, IGNORE]]


def test_gates_at_zero_give_exactly_the_language_model():
    model = tiny_vlm("cross")
    for layer in model.cross_attn:
        with torch.no_grad():
            layer.attn_gate.zero_()
            layer.ff_gate.zero_()
    ids = prompt(2, 0, text=9, fusion="cross")
    with torch.no_grad():
        alone = model.language_model(ids)
        torch.testing.assert_close(model(images(2), ids), alone, atol=0, rtol=0)
        torch.testing.assert_close(model(images(2, seed=7), ids), alone, atol=0, rtol=0)  # the image is ignored
        model.cross_attn[0].attn_gate.fill_(0.5)
        assert (model(images(2), ids) - alone).abs().max() > 1e-3  # an open gate lets the image in
    assert isinstance(model.cross_attn[0], GatedCrossAttention)
    fresh = VisionLanguageModel(tiny_tower(), GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=4,
                                                            n_embd=C_LM)), VLMConfig(fusion="cross"))
    assert all(p.item() == 0.0 for n, p in fresh.named_parameters() if n.endswith("_gate"))  # α = β = 0 at init


@pytest.mark.parametrize("fusion", ["prefix", "cross"])
def test_frozen_tower_gets_no_gradient(fusion):
    model = tiny_vlm(fusion, dtype=torch.float32).train()
    assert not model.vision_tower.training  # a frozen tower stays in eval mode
    N = model.num_image_tokens if fusion == "prefix" else 0
    ids = prompt(2, N, seed=2, fusion=fusion)
    _, loss = model(images(2, dtype=torch.float32), ids, answer_targets(ids, [N + 3, N + 2]))
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.vision_tower.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.multi_modal_projector.parameters())
    assert model.language_model.transformer.h[0].attn.in_proj.weight.grad.abs().sum() > 0
    unfrozen = tiny_vlm(fusion, dtype=torch.float32, freeze_vision=False).train()
    _, loss = unfrozen(images(2, dtype=torch.float32), ids, answer_targets(ids, [N + 3, N + 2]))
    loss.backward()
    assert unfrozen.vision_tower.conv1.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- generation

@pytest.mark.parametrize("fusion, strategy", [("prefix", "default"), ("prefix", "pooled"), ("cross", "default")])
def test_generation_with_and_without_cache_agree(fusion, strategy):
    model = tiny_vlm(fusion, strategy=strategy)
    N = model.num_image_tokens if fusion == "prefix" else 0
    ids = prompt(3, N, text=4, seed=5, fusion=fusion)
    x = images(3, seed=6)
    cached = model.generate(x, ids, 8, use_cache=True)
    plain = model.generate(x, ids, 8, use_cache=False)
    assert cached.shape == (3, 8) and torch.equal(cached, plain)
    # the cached logits equal the full forward's
    with torch.no_grad():
        full = model(x, torch.cat([ids, cached], dim=1))
        visual = model.encode_images(x)
        first, cache = model.forward_cached(ids, visual)
        more, _ = model.forward_cached(cached[:, :3], visual, cache)
    torch.testing.assert_close(torch.cat([first, more], dim=1), full[:, : ids.shape[1] + 3], **TOL[torch.float64])
    # stopping at an end token: what follows it is the end token again
    eos = int(cached[0, -1])
    stopped = model.generate(x, ids, 8, eos_id=eos)
    for row, full_row in zip(stopped.tolist(), cached.tolist()):
        end = full_row.index(eos) + 1 if eos in full_row else len(full_row)
        assert row[:end] == full_row[:end] and set(row[end:]) <= {eos}
    assert stopped.shape[1] <= 8


def test_generation_never_picks_the_image_token():
    """A model whose logits rank the image token first (an early checkpoint can) still answers: the
    image token is skipped and the next best token taken, with and without the cache."""
    model = tiny_vlm("prefix")
    N = model.num_image_tokens
    ids, x = prompt(2, N, text=4, seed=3), images(2, seed=4)
    boost = model.language_model.lm_head.register_forward_hook(
        lambda module, inputs, out: out + 1e3 * F.one_hot(torch.tensor(IMAGE), V).to(out.dtype))
    try:
        with torch.no_grad():
            logits = model(x, ids)[:, -1]  # (B, V)
        assert bool((logits.argmax(-1) == IMAGE).all())  # the hook works: the image token ranks first
        runner_up = logits.clone()
        runner_up[:, IMAGE] = float("-inf")
        for use_cache in (True, False):
            out = model.generate(x, ids, 5, use_cache=use_cache)
            assert out.shape == (2, 5) and not bool((out == IMAGE).any())
            assert torch.equal(out[:, 0], runner_up.argmax(-1))
    finally:
        boost.remove()


def test_generation_may_end_one_past_the_context_window():
    """The last new token is never fed back: with block_size 32, a 28-token prompt takes 5 new tokens (the 5th
    comes from a forward pass over 32 positions), and 6 is refused."""
    model = tiny_vlm("prefix", block_size=32)
    N = model.num_image_tokens  # 16
    ids, x = prompt(2, N, text=32 - 4 - N, seed=8), images(2, seed=9)
    assert ids.shape[1] == 28
    cached, plain = model.generate(x, ids, 5, use_cache=True), model.generate(x, ids, 5, use_cache=False)
    assert cached.shape == (2, 5) and torch.equal(cached, plain)
    with torch.no_grad():
        full = model(x, torch.cat([ids, cached[:, :4]], dim=1))  # (B, 32, V): all the model ever reads
    masked = full[:, -1].clone()
    masked[:, IMAGE] = float("-inf")
    assert torch.equal(cached[:, 4], masked.argmax(-1))
    with pytest.raises(ValueError, match="does not fit the context window"):
        model.generate(x, ids, 6)


def test_return_attn_shapes():
    for fusion in ("prefix", "cross"):
        model = tiny_vlm(fusion)
        N = model.num_image_tokens if fusion == "prefix" else 0
        ids = prompt(2, N, text=3, fusion=fusion)
        with torch.no_grad():
            logits, maps = model(images(2), ids, return_attn=True)
        T = ids.shape[1]
        assert maps["self"].shape == (2, 2, 4, T, T)
        if fusion == "cross":
            assert maps["cross"].shape == (2, 2, 4, T, 16)
            torch.testing.assert_close(maps["cross"].sum(-1), torch.ones(2, 2, 4, T, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- bad input

def test_bad_input_is_named():
    model = tiny_vlm()
    N = model.num_image_tokens
    ids = prompt(2, N)
    with pytest.raises(ValueError, match=r"32×32"):  # wrong image size: the tower says which and how to fix it
        model(torch.zeros(2, 3, 24, 24, dtype=torch.float64), ids)
    with pytest.raises(ValueError, match="image tokens .* per sequence"):  # image-token count does not match
        model(images(2), ids[:, 1:])
    with pytest.raises(ValueError, match="1 image.* for 2 text"):  # one image for two texts
        model(images(1), ids)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(images(2), torch.cat([ids, torch.full((2, 1), V)], dim=1))
    with pytest.raises(ValueError, match="more than the context window"):  # a question longer than the context
        model(images(2), prompt(2, N, text=40))
    with pytest.raises(ValueError, match="does not fit the context window"):
        model.generate(images(2), ids, 20)
    with pytest.raises(ValueError, match="leave no room for text"):  # more image tokens than the context holds
        tiny_vlm(block_size=16)
    with pytest.raises(ValueError, match="image_token_id"):
        VLMConfig(fusion="prefix")
    with pytest.raises(ValueError, match="fusion must be"):
        VLMConfig(fusion="early", image_token_id=3)
    with pytest.raises(ValueError, match="outside the language model's vocabulary"):
        VisionLanguageModel(tiny_tower(), GPT(GPTConfig(vocab_size=V, block_size=32, n_layer=1, n_head=4,
                                                        n_embd=C_LM)), VLMConfig(image_token_id=V))
    with pytest.raises(TypeError, match="VisionTransformer"):
        VisionLanguageModel(torch.nn.Linear(2, 2), model.language_model)


# ---------------------------------------------------------------------------------------------- the data

def test_shapes_qa_keeps_held_out_combinations_and_phrasings_out_of_training():
    from utils.shapes import HELD_OUT
    from utils.shapes_qa import TEMPLATES, collate, shapes_qa, vocab

    train = shapes_qa(400, seed=0)
    again = shapes_qa(400, seed=0)
    assert train.items == again.items and torch.equal(train.shapes.images, again.shapes.images)
    held = {f"{c} {s}" for c, s in HELD_OUT}
    for q in train.items:
        scene = train.shapes.scenes[q.image]
        assert not {s.name for s in scene} & held
        assert not any(h in q.question or h == q.answer for h in held), q  # not in the words either
        assert q.question not in {t for ts in TEMPLATES.values() for t in ts[-1:]}
        if q.kind == "count":
            assert q.answer == {1: "one", 2: "two"}[len(scene)]
        if q.kind == "yes/no":
            named = " ".join(q.question.split()[-3:-1])
            assert (q.answer == "yes") == (named in {s.name for s in scene})
        if q.kind == "colour":
            shape = next(s for s in scene if f" {s.kind} " in f" {q.question} ")
            assert q.answer == shape.colour
    kinds = {q.kind for q in train.items}
    assert kinds == {"colour", "shape", "count", "where", "which", "yes/no"}
    seen_words = {w for ts in TEMPLATES.values() for t in ts[:-1] for w in t.split()}
    for ts in TEMPLATES.values():  # a held-out phrasing is new word order, not new words
        assert {w for w in ts[-1].split() if "{" not in w} <= seen_words
    phrased = shapes_qa(50, seed=13, phrasing="held_out")
    assert all(any(_matches(t, q.question) for t in TEMPLATES[q.kind][-1:]) for q in phrased.items)
    combos = shapes_qa(50, seed=12, combos=HELD_OUT)
    assert all({s.name for s in combos.shapes.scenes[q.image]} <= held for q in combos.items)
    V = vocab()
    ids, start = collate(V, train.items[:3], 16)
    assert (ids[:, :16] == V.index("<image>")).all() and ids.shape[0] == 3
    assert V.decode(ids[0, int(start[0]):]).count("<end>") == 1


def test_captions_describe_every_shape_and_stay_on_seen_combinations():
    from utils.shapes import HELD_OUT
    from utils.shapes_qa import DESCRIBE, captioning, describe, shapes_qa, vocab

    plain, mixed = shapes_qa(200, seed=0), shapes_qa(200, seed=0, captions=2)
    captions = [q for q in mixed.items if q.kind == "caption"]
    assert mixed.items[:len(plain)] == plain.items and len(captions) == 2 * len(plain.shapes)
    assert all(q.question == DESCRIBE and q.answer == describe(mixed.shapes.scenes[q.image]) for q in captions)
    scene = mixed.shapes.scenes[captions[0].image]
    assert all(f"{s.colour} {s.kind}" in captions[0].answer for s in scene)
    assert max(len(q.answer.split()) for q in captions) <= 13
    held = {f"{c} {s}" for c, s in HELD_OUT}
    assert not any(h in q.answer for q in captions for h in held)
    V = vocab()
    assert all(w in V.stoi for q in captions for w in (q.question + " " + q.answer).split())
    test = captioning(shapes_qa(30, seed=12, combos=HELD_OUT))
    assert len(test) == 30 and all(q.kind == "caption" for q in test.items)
    assert any(h in q.answer for q in test.items for h in held)
    with pytest.raises(ValueError, match="captions is how many times"):
        shapes_qa(5, captions=-1)


def test_token_f1_counts_shared_words():
    from utils.vlm import token_f1

    assert token_f1("a red circle", "a red circle") == 1.0
    assert token_f1("a blue square", "a red circle") == pytest.approx(1 / 3)  # "a": p = r = 1/3
    assert token_f1("a red circle on the left", "a red circle") == pytest.approx(2 * 0.5 * 1 / 1.5)  # p 1/2, r 1
    assert token_f1("red red", "red") == pytest.approx(2 * 0.5 * 1 / 1.5)  # a word counts as often as it occurs
    assert token_f1("green", "red") == 0.0 and token_f1("", "") == 1.0 and token_f1("", "red") == 0.0


def _matches(template, question):
    import re
    pattern = "".join(".+" if part.startswith("{") else re.escape(part) for part in re.split(r"(\{\w+\})", template))
    return re.fullmatch(pattern, question) is not None


# ---------------------------------------------------------------------------------------------- the explorer

def explorer_views(rng, L=2):
    """Two scenes, questions answered by two models, maps per layer: every view different."""
    def answer(words, seed):
        r = np.random.default_rng(seed)
        n = max(1, len(words))
        return dict(answer=words, attention=r.uniform(0, 1, (L, n, 4, 4)), share=r.uniform(0, 1, (L, n)))
    import numpy as np
    return [[dict(question="what colour is the circle ?", expected="red",
                  models={"prefix": answer(["red"], 1), "cross": answer(["blue"], 2)}),
             dict(question="what is on the left ?", expected="blue circle",
                  models={"prefix": answer(["red", "circle"], 3), "cross": answer(["blue", "circle"], 4)})],
            [dict(question="how many shapes are there ?", models={"prefix": answer(["two"], 5),
                                                                  "cross": answer([], 6)})]]


def test_answer_explorer_switches_scenes_questions_models_and_layers():
    import ipywidgets as widgets
    import numpy as np

    from utils import viz

    rng = np.random.default_rng(0)
    pictures = rng.uniform(0, 1, (2, 3, 32, 32))
    views = explorer_views(rng)
    box = viz.answer_explorer(pictures, views, ["a", "b"], share_notes={"cross": "the gate tanh(α) of the layer"})
    scene, model, layer = box.controls
    assert scene.options == (("a", 0), ("b", 1)) and model.options == (("prefix", 0), ("cross", 1))
    assert layer.options == (("mean", 0), ("layer 1", 1), ("layer 2", 2))
    controls, scenes = box.children
    assert list(controls.children) == [scene, model, layer] and len(scenes.children) == 2
    question, questions = scenes.children[0].children
    assert len(questions.children) == 2
    models = questions.children[1]  # "what is on the left ?"
    assert len(models.children) == 2 and all(len(m.children) == 3 for m in models.children)
    cross_layer_2 = models.children[1].children[2]
    head = cross_layer_2.children[0].value
    share = views[0][1]["models"]["cross"]["share"]
    assert "A (cross):</b> blue circle ✓" in head and "(layer 2)" in head and f"“circle” {share[1, 1]:.2f}" in head
    assert "the gate tanh(α) of the layer" in head
    mean_head = models.children[0].children[0].children[0].value  # prefix, mean over layers
    p_share = views[0][1]["models"]["prefix"]["share"]
    assert "✗ (expected: blue circle)" in mean_head and f"“red” {p_share[:, 0].mean():.2f}" in mean_head
    pngs = [c.children[1].value for m in models.children for c in m.children]
    assert all(p[:4] == b"\x89PNG" for p in pngs) and len(set(pngs)) == 6  # drawn up front, each its own
    # linked in the browser (jslink) and in a kernel: each control moves every stack it governs
    assert all(isinstance(link, widgets.widget_link.Link) for link in box.links)
    assert len(box.links) == 1 + 2 + 3 + 6  # the scene, 2 question menus, 3 model stacks, 6 layer stacks
    targets = {id(link.target[0]) for link in box.links if link.source[0] is layer}
    assert len(targets) == 6 and id(models.children[1]) in targets
    question.value, model.value, layer.value = 1, 1, 2
    assert questions.selected_index == 1 and models.selected_index == 1 and models.children[1].selected_index == 2
    scene.value = 1
    assert scenes.selected_index == 1
    assert scenes.children[1].children[1].children[0].children[1].selected_index == 2  # the layer holds
    # one model given flat, one layer: no model or layer control, as the chapter's first explorer
    flat = [[dict(question="q about a", answer=["red"], attention=rng.uniform(0, 1, (1, 4, 4)), expected="red")],
            [dict(question="q about b", answer=["two"], attention=rng.uniform(0, 1, (1, 4, 4)))]]
    box = viz.answer_explorer(pictures, flat)
    assert box.controls[1:] == (None, None) and len(box.links) == 3
    assert "A:</b> red ✓" in box.children[1].children[0].children[1].children[0].children[0].value
    with pytest.raises(ValueError, match="one map per answer token"):
        viz.answer_explorer(pictures[:1], [[dict(question="q", answer=["a", "b"], attention=np.zeros((1, 4, 4)))]])
    with pytest.raises(ValueError, match="one per entry of views"):
        viz.answer_explorer(pictures, views[:1])
    with pytest.raises(ValueError, match="same models with the same layers"):
        viz.answer_explorer(pictures, [views[0], [dict(question="q", models={"prefix": views[1][0]["models"]["prefix"]})]])
    with pytest.raises(ValueError, match="share must be"):
        bad = dict(question="q", answer=["a"], attention=np.zeros((2, 1, 4, 4)), share=np.zeros((1, 1)))
        viz.answer_explorer(pictures[:1], [[bad]])


VISIBLE_JS = """async () => {
  const visible = el => el.getClientRects().length > 0;
  const parts = [];
  for (const el of document.querySelectorAll('.widget-html-content')) if (visible(el)) parts.push(el.innerText);
  for (const img of document.querySelectorAll('img')) {
    if (!visible(img)) continue;
    const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
    let h = 2166136261;
    for (let k = 0; k < bytes.length; k++) { h ^= bytes[k]; h = Math.imul(h, 16777619) >>> 0; }
    parts.push(`img:${bytes.length}:${h}`);
  }
  return parts.join('\\n');
}"""


def test_answer_explorer_works_in_the_browser_without_a_kernel(tmp_path):
    """The explorer saved as a web page (widget state, the book's offline widget manager) in headless Chromium:
    the model and layer buttons and the scene menu change what is shown, with no kernel."""
    import functools
    import json
    import os
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
    from pathlib import Path

    import numpy as np
    from ipywidgets.embed import embed_data

    from utils import viz

    root = Path(__file__).resolve().parents[1]
    manager = root / "site_assets" / "widgets" / "embed-offline.js"
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
    missing = [what for what, ok in (("playwright", sync_api is not None), (str(manager), manager.is_file()),
                                     (chromium, Path(chromium).is_file())) if not ok]
    if missing:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"the browser test needs {missing} (make site)")
    rng = np.random.default_rng(0)
    box = viz.answer_explorer(rng.uniform(0, 1, (2, 3, 32, 32)), explorer_views(rng), ["scene a", "scene b"])
    data = embed_data(views=[box], drop_defaults=False)  # as a notebook saves it (the Image needs its description)
    (tmp_path / "embed-offline.js").write_bytes(manager.read_bytes())
    (tmp_path / "index.html").write_text(
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>explorer</title>'
        '<script src="embed-offline.js"></script><script type="application/vnd.jupyter.widget-state+json">'
        f'{json.dumps(data["manager_state"])}</script></head><body><div class="cell_output">'
        f'<script type="application/vnd.jupyter.widget-view+json">{json.dumps(data["view_specs"][0])}</script>'
        '</div></body></html>', encoding="utf-8")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
            page = browser.new_page()
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
                ("http://127.0.0.1", "blob:", "data:")) else route.abort())
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html", wait_until="load")
            page.wait_for_selector(".widget-toggle-buttons", timeout=20_000)
            page.wait_for_function("document.querySelectorAll('img').length > 0", timeout=20_000)

            def shown():
                return page.evaluate(VISIBLE_JS)

            def press(label, name):
                page.locator(".widget-toggle-buttons", has=page.locator(f"label:text-is('{label}')")) \
                    .locator(f"button:text-is('{name}')").click()
                page.wait_for_timeout(150)

            first = shown()
            assert "A (prefix):" in first and "what colour is the circle" in first and first.count("img:") == 1
            press("model", "cross")
            by_cross = shown()
            assert "A (cross): blue" in by_cross and by_cross != first
            press("layer", "layer 2")
            at_2 = shown()
            assert "(layer 2)" in at_2 and at_2.split("img:")[1] != by_cross.split("img:")[1]  # another picture
            press("layer", "layer 1")
            assert "(layer 1)" in shown() and shown() not in (at_2, by_cross)
            page.select_option("select >> nth=0", index=1)  # the scene
            page.wait_for_timeout(150)
            other = shown()
            assert "how many shapes" in other and "A (cross): (nothing)" in other and "(layer 1)" in other
            browser.close()
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------- training stages

STAGE_PARTS = {"align": {"multi_modal_projector"}, "instruct": {"multi_modal_projector", "language_model"},
               "xattn": {"multi_modal_projector", "cross_attn"},
               "all": {"multi_modal_projector", "language_model", "cross_attn"}}  # LLaVA stages 1 and 2, Flamingo


@pytest.mark.parametrize("fusion, stage", [("prefix", "align"), ("prefix", "instruct"), ("prefix", "all"),
                                           ("cross", "xattn"), ("cross", "instruct"), ("cross", "all")])
def test_stage_trains_exactly_its_parts(fusion, stage):
    """After one backward pass exactly the stage's parts hold gradients (every tensor of them non-zero) and the
    frozen ones None; an AdamW step with weight decay over *all* parameters leaves the frozen ones bit-identical."""
    from utils.vlm import count_parameters, set_stage

    model = tiny_vlm(fusion, dtype=torch.float32)
    counts = set_stage(model, stage)
    learns = STAGE_PARTS[stage] & set(model.parts)
    part_of = {id(p): name for name, m in model.parts.items() for p in m.parameters()}
    assert set(part_of.values()) == set(model.parts)
    model.train()
    N = model.num_image_tokens if fusion == "prefix" else 0
    ids = prompt(3, N, text=6, seed=2, fusion=fusion)
    x = images(3, dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    _, loss = model(x, ids, answer_targets(ids, [N + 2, N + 3, N + 4]))
    loss.backward()
    for name, p in model.named_parameters():
        if part_of[id(p)] in learns:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    opt.step()
    for name, p in model.named_parameters():
        if part_of[id(p)] in learns:
            assert not torch.equal(p, before[name]), name
        else:
            assert torch.equal(p, before[name]), name  # bit-identical
    # the counts: trainable parts in full, frozen ones 0; the tied token table counted once
    totals = count_parameters(model)
    assert counts == {n: (t if n in learns else 0) for n, (_, t) in totals.items()}
    assert sum(t for _, t in totals.values()) == model.num_params()
    assert sum(counts.values()) == model.num_params(trainable=True)
    lm = model.language_model
    assert totals["language_model"][1] == lm.num_params()
    assert totals["language_model"][1] == sum(p.numel() for _, p in lm.named_parameters(remove_duplicate=False)) - \
        lm.transformer.wte.weight.numel()  # lm_head.weight is wte.weight


def test_frozen_parts_stay_in_eval_mode_and_stages_switch():
    """A frozen language model runs without dropout in model.train() (its output is then deterministic), a
    trained one with it; switching from LLaVA's stage 1 to stage 2 unfreezes the language model."""
    from utils.vlm import set_stage, set_trainable

    torch.manual_seed(0)
    lm = GPT(GPTConfig(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_embd=C_LM, dropout=0.5))
    model = VisionLanguageModel(tiny_tower(dtype=torch.float32), lm, VLMConfig(image_token_id=IMAGE))
    N = model.num_image_tokens
    ids, x = prompt(2, N, text=4, seed=1), images(2, dtype=torch.float32)
    set_stage(model, "align")
    model.train()
    assert model.training and model.multi_modal_projector.training
    assert not any(m.training for m in lm.modules()) and not model.vision_tower.training
    with torch.no_grad():
        torch.testing.assert_close(model(x, ids), model(x, ids), atol=0, rtol=0)  # no dropout anywhere
    set_stage(model, "instruct")
    assert model.training and lm.training and all(p.requires_grad for p in lm.parameters())
    with torch.no_grad():
        assert not torch.equal(model(x, ids), model(x, ids))  # dropout in the language model again
    model(x, ids, answer_targets(ids, [N + 2, N + 3]))[1].backward()
    assert lm.transformer.wte.weight.grad is not None
    set_stage(model, "align")  # frozen again: the stale gradients go, so no optimizer can apply them
    assert all(p.grad is None for p in lm.parameters())
    assert model.multi_modal_projector.linear_1.weight.grad is not None
    model.eval()
    assert not any(m.training for m in model.modules())
    set_trainable(model, ["vision_tower", "multi_modal_projector"])  # the tower ablation: the tower learns
    assert not model.config.freeze_vision and model.frozen_parts == ("language_model",)
    assert all(p.requires_grad for p in model.vision_tower.parameters())


def test_stage_errors_are_named():
    from utils.vlm import set_stage, set_trainable

    prefix, cross = tiny_vlm("prefix"), tiny_vlm("cross")
    with pytest.raises(ValueError, match="unknown stage 'pretrain'.*'align', 'instruct', 'xattn', 'all'"):
        set_stage(prefix, "pretrain")
    with pytest.raises(ValueError, match="has no 'cross_attn'.*fusion='cross'"):
        set_stage(prefix, "xattn")
    with pytest.raises(ValueError, match="unknown part 'projector'"):
        set_trainable(cross, ["projector"])
    with pytest.raises(TypeError, match="VisionLanguageModel"):
        set_stage(prefix.language_model, "align")


# ---------------------------------------------------------------------------------------------- interleaved images

def interleaved(markers, T, seed=0):
    """ids (B, T) of random words with the image marker (IMAGE) at each row's given positions."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, IMAGE, (len(markers), T), generator=g)  # (B, T) never the marker
    for b, places in enumerate(markers):
        ids[b, places] = IMAGE
    return ids


def many_images(B, M, seed=0, dtype=torch.float64):
    return images(B * M, seed=seed, dtype=dtype).unflatten(0, (B, M))  # (B, M, 3, 32, 32)


def test_masked_cross_attention_equals_a_per_position_reference():
    """Flamingo's per-image masking (section 2.3, figure 7), against torch's nn.MultiheadAttention run one position
    at a time on that position's image only; a position before every image gets no attention term (and no NaN)."""
    torch.manual_seed(0)
    B, T, M, N, C, H = 2, 8, 3, 4, C_LM, 4
    layer = scramble_(GatedCrossAttention(C, H), 5).double()  # gates non-zero
    x = torch.randn(B, T, C, dtype=torch.float64, requires_grad=True)
    visual = torch.randn(B, M, N, C, dtype=torch.float64)
    # row 0: markers at 1, 3, 6 (position 0 sees nothing); row 1: at 0, 4, 5 (image 1 covers a single position)
    index = torch.tensor([[-1, 0, 0, 1, 1, 1, 2, 2], [0, 0, 0, 0, 1, 2, 2, 2]])
    out, attn = layer(x, visual, index, return_attn=True)  # (B, T, C), (B, H, T, M·N)
    assert attn.shape == (B, H, T, M * N) and not out.isnan().any()
    mha = torch.nn.MultiheadAttention(C, H, batch_first=True, dtype=torch.float64)
    mha.load_state_dict({"in_proj_weight": layer.attn.in_proj.weight, "in_proj_bias": layer.attn.in_proj.bias,
                         "out_proj.weight": layer.attn.out_proj.weight, "out_proj.bias": layer.attn.out_proj.bias})
    with torch.no_grad():
        for b in range(B):
            for t in range(T):
                m, y = int(index[b, t]), x[b, t]
                ref_map = torch.zeros(H, M * N, dtype=torch.float64)
                if m >= 0:
                    q = layer.ln_1(y)[None, None]  # (1, 1, C)
                    a, w = mha(q, visual[b, m][None], visual[b, m][None], average_attn_weights=False)
                    y = y + torch.tanh(layer.attn_gate) * a[0, 0]
                    ref_map[:, m * N:(m + 1) * N] = w[0, :, 0]
                y = y + torch.tanh(layer.ff_gate) * layer.mlp(layer.ln_2(y))
                torch.testing.assert_close(out[b, t], y, **TOL[torch.float64])
                torch.testing.assert_close(attn[b, :, t], ref_map, **TOL[torch.float64])
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    # changing image m changes exactly the positions that see it
    for m in range(M):
        other = visual.clone()
        other[:, m] += 1.0
        with torch.no_grad():
            changed = (layer(x, other, index) - out).abs().amax(-1) > 1e-9  # (B, T)
        assert torch.equal(changed, index == m), m


@pytest.mark.parametrize("fusion", ["prefix", "cross"])
def test_an_image_changes_only_what_comes_after_it(fusion):
    """Three images per text: changing image m changes the logits from its place on (its first image token, or
    its marker), and not one bit before; the places differ between the two rows."""
    M = 3
    if fusion == "prefix":
        model, N = tiny_vlm("prefix", block_size=64), 16
        starts = [[2, 20, 40], [0, 16, 45]]  # each image's first token
        ids = interleaved([[s + i for s in row for i in range(N)] for row in starts], 62, seed=1)
    else:
        model = tiny_vlm("cross", image_token_id=IMAGE)
        starts = [[1, 4, 8], [0, 6, 7]]  # the markers
        ids = interleaved(starts, 11, seed=1)
    x = many_images(2, M, seed=2)
    with torch.no_grad():
        base = model(x, ids)
        for m in range(M):
            other = x.clone()
            other[:, m] = images(2, seed=10 + m)
            diff = (model(other, ids) - base).abs().amax(-1)  # (B, T)
            for b in range(2):
                s = starts[b][m]
                assert bool((diff[b, :s] == 0).all()), (m, b)
                assert bool((diff[b, s:] > 1e-6).all()), (m, b)


@pytest.mark.parametrize("fusion", ["prefix", "cross"])
def test_one_image_in_a_row_of_images_is_the_single_image_model(fusion):
    """M = 1: images (B, 1, 3, S, S) give exactly what images (B, 3, S, S) give; a cross model whose texts open
    with their image's marker equals the same model without markers (every position sees the image)."""
    model = tiny_vlm(fusion, image_token_id=IMAGE) if fusion == "cross" else tiny_vlm("prefix")
    N = model.num_image_tokens
    ids = prompt(2, N if fusion == "prefix" else 0, text=6, seed=3, fusion=fusion)
    if fusion == "cross":
        ids[:, 0] = IMAGE  # the marker first
    x = images(2, seed=4)
    with torch.no_grad():
        one = model(x, ids)
        torch.testing.assert_close(model(x[:, None], ids), one, atol=0, rtol=0)
        torch.testing.assert_close(model.generate(x[:, None], ids, 4), model.generate(x, ids, 4), atol=0, rtol=0)
        if fusion == "cross":
            _, maps = model(x, ids, return_attn=True)
            assert maps["cross"].shape == (2, 2, 4, ids.shape[1], N)
            model.config.image_token_id = None  # the single-image model: no mask at all
            try:
                torch.testing.assert_close(model(x, ids), one, **TOL[torch.float64])
            finally:
                model.config.image_token_id = IMAGE


@pytest.mark.parametrize("fusion", ["prefix", "cross"])
def test_interleaved_generation_with_and_without_cache_agree(fusion):
    M = 2
    if fusion == "prefix":
        model, N = tiny_vlm("prefix", block_size=48), 16
        ids = interleaved([list(range(0, 16)) + list(range(18, 34)), list(range(3, 19)) + list(range(19, 35))], 38,
                          seed=5)
    else:
        model = tiny_vlm("cross", image_token_id=IMAGE)
        ids = interleaved([[0, 4], [2, 3]], 7, seed=5)
    x = many_images(2, M, seed=6)
    cached, plain = model.generate(x, ids, 8, use_cache=True), model.generate(x, ids, 8, use_cache=False)
    assert cached.shape == (2, 8) and torch.equal(cached, plain) and not bool((cached == IMAGE).any())
    with torch.no_grad():
        full = model(x, torch.cat([ids, cached], dim=1))
        visual = model.encode_images(x)  # (B, M, N, C)
        assert visual.shape == (2, M, 16, C_LM)
        first, cache = model.forward_cached(ids, visual)
        more, _ = model.forward_cached(cached[:, :4], visual, cache)
        torch.testing.assert_close(torch.cat([first, more], dim=1), full[:, : ids.shape[1] + 4], **TOL[torch.float64])
        torch.testing.assert_close(model(None, ids, visual=visual), full[:, : ids.shape[1]], **TOL[torch.float64])
    if fusion == "cross":
        with torch.no_grad():
            _, maps = model(x, ids, return_attn=True)
        cross = maps["cross"]  # (B, L, H, T, M·N)
        assert cross.shape == (2, 2, 4, 7, M * 16)
        sums = cross.sum(-1)  # (B, L, H, T): 1 where a position sees an image, 0 before the first
        seen = torch.tensor([[1.0] * 7, [0, 0] + [1.0] * 5], dtype=torch.float64)
        torch.testing.assert_close(sums, seen[:, None, None].expand_as(sums), **TOL[torch.float64])
        assert bool((cross[0, :, :, 1:4, 16:] == 0).all()) and bool((cross[0, :, :, 4:, :16] == 0).all())


def test_interleaved_bad_input_is_named():
    cross, prefix = tiny_vlm("cross", image_token_id=IMAGE), tiny_vlm("prefix", block_size=48)
    x = many_images(2, 2)
    with pytest.raises(ValueError, match="must hold exactly 2, one marker where each"):
        cross(x, interleaved([[0, 3], [2]], 6))
    with pytest.raises(ValueError, match="2 images per sequence need markers"):
        tiny_vlm("cross")(x, interleaved([[], []], 6))
    with pytest.raises(ValueError, match="exactly 32, one per visual token of its 2 image"):
        prefix(x, prompt(2, 16, text=4))
    with pytest.raises(ValueError, match=r"visual tokens must be \(B, N, C\) or \(B, M, N, C\) with C=32"):
        cross(None, interleaved([[0, 3], [2, 4]], 6), visual=torch.zeros(2, 2, 16, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="image_index must lie in"):
        cross.cross_attn[0](torch.zeros(1, 3, C_LM, dtype=torch.float64), torch.zeros(1, 2, 4, C_LM,
                            dtype=torch.float64), torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match="outside the language model's vocabulary"):
        VisionLanguageModel(tiny_tower(), GPT(GPTConfig(vocab_size=V, block_size=32, n_layer=1, n_head=4,
                                                        n_embd=C_LM)), VLMConfig(fusion="cross", image_token_id=V))


# ---------------------------------------------------------------------------------------------- the explorer's maps

@pytest.mark.parametrize("fusion", ["prefix", "cross"])
def test_answer_attention_reads_the_position_that_produced_each_token(fusion):
    """Token i's map is the attention of position answer_start - 1 + i (the one that predicted it), read patch by
    patch row-major from the image positions (which start at 3 here, not 0); the share is the map's mass (prefix)
    or |tanh(α_l)| (cross, whose map sums to 1). Changing answer token i changes map i + 1, not maps 0..i."""
    from utils.vlm import answer_attention

    model = tiny_vlm(fusion)
    G, L, H = 4, 2, 4
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, IMAGE, (1, 3 + (16 if fusion == "prefix" else 0) + 7), generator=g)  # (1, T)
    if fusion == "prefix":
        ids[0, 3:19] = IMAGE  # the image after three words
    start = ids.shape[1] - 3  # three answer tokens
    x = images(1, seed=8)
    maps, share = answer_attention(model, x, ids, start)
    assert maps.shape == (L, 3, G, G) and share.shape == (L, 3)
    with torch.no_grad():
        _, attn = model(x, ids, return_attn=True)
    for layer in range(L):
        for i in range(3):
            p = start - 1 + i
            for r in range(G):
                for c in range(G):
                    if fusion == "prefix":
                        want = sum(attn["self"][0, layer, h, p, 3 + r * G + c] for h in range(H)) / H
                    else:
                        want = sum(attn["cross"][0, layer, h, p, r * G + c] for h in range(H)) / H
                    torch.testing.assert_close(maps[layer, i, r, c], want, **TOL[torch.float64])
    if fusion == "prefix":
        torch.testing.assert_close(share, maps.sum(dim=(-2, -1)), **TOL[torch.float64])
        assert bool((share > 0).all() and (share < 1).all())  # some attention goes to the text
    else:
        torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(L, 3, dtype=torch.float64), **TOL[torch.float64])
        gates = torch.tensor([abs(math.tanh(layer.attn_gate.item())) for layer in model.cross_attn], dtype=torch.float64)
        torch.testing.assert_close(share, gates[:, None].expand(L, 3), **TOL[torch.float64])
    other = ids.clone()
    other[0, start + 1] = (other[0, start + 1] + 1) % IMAGE  # answer token 1
    changed, _ = answer_attention(model, x, other, start)
    assert torch.equal(changed[:, :2], maps[:, :2]) and not torch.allclose(changed[:, 2], maps[:, 2])
    empty, _ = answer_attention(model, x, ids[:, :start], start)  # no answer: the map of the first token produced
    torch.testing.assert_close(empty[:, 0], maps[:, 0], **TOL[torch.float64])
    with pytest.raises(ValueError, match="answer_start must be an int in"):
        answer_attention(model, x, ids, 0)
    with pytest.raises(ValueError, match="one text ids"):
        answer_attention(model, images(2), ids.repeat(2, 1), start)
    with pytest.raises(ValueError, match="strategy 'default'"):
        answer_attention(tiny_vlm("prefix", strategy="pooled"), x, ids, start)


def test_prefix_takes_any_number_of_visual_tokens():
    """Exercise 4's route: K = 4 resampled visual tokens instead of the 16 patches, given as `visual=`; the text
    then holds 4 image tokens, and forward, the cache and generate agree."""
    model = tiny_vlm("prefix")
    visual = torch.randn(2, 4, C_LM, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # (B, K, C)
    ids = prompt(2, 4, text=5, seed=2)
    with torch.no_grad():
        logits = model(None, ids, visual=visual)
        first, _ = model.forward_cached(ids, visual)
        by_hand = model.language_model.transformer.wte(ids)
        by_hand[:, :4] = visual  # the 4 image positions take the 4 tokens, in order
    torch.testing.assert_close(first, logits, **TOL[torch.float64])
    assert torch.equal(model.generate(None, ids, 3, visual=visual), model.generate(None, ids, 3, visual=visual,
                                                                                   use_cache=False))
    with torch.no_grad():
        alone = model.language_model  # the merged embeddings through the GPT's own blocks give the same logits
        x = alone.transformer.drop(by_hand + alone.transformer.wpe(torch.arange(ids.shape[1])))
        for block in alone.transformer.h:
            x = block(x, is_causal=True)
        torch.testing.assert_close(alone.lm_head(alone.transformer.ln_f(x)), logits, **TOL[torch.float64])
    with pytest.raises(ValueError, match="exactly 4, one per visual token"):
        model(None, prompt(2, 16, text=5), visual=visual)
