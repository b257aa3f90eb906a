import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell
exec(open("drafts/07_gpt/edit_nb.py").read().split("# --- title, runtime, goals")[0])  # helpers, fresh read

# LSTM verdict computed by the code, not written by hand
replace_in("b98956a9", 'glue("lstm_val_loss", f"{lstm_val:.3f}", display=False)',
           'better, worse = ("LSTM", "GPT") if lstm_val < val_loss else ("GPT", "LSTM")\n'
           'glue("equal_steps_verdict", f"the {better} ends {abs(val_loss - lstm_val):.3f} nats/char below the {worse}", '
           'display=False)\nglue("lstm_val_loss", f"{lstm_val:.3f}", display=False)')
cell("fa18bd8a").source = cell("fa18bd8a").source.replace(
    """At equal steps, on the same text, the two end close together: the GPT at {glue:text}`gpt_val_loss`
nats/char, the LSTM at {glue:text}`lstm_val_loss` (over the whole validation split; `benchmarks/gpt_seeds.py`
repeats both with three seeds, and the gap between them is larger than the spread between seeds). Chapter
2's plain tanh RNN reached about 1.64 after 2,000 steps of the same size. So at this scale the Transformer
buys nothing in loss, and on this CPU it costs more:""",
    """At equal steps, on the same text, {glue:text}`equal_steps_verdict`: the GPT at {glue:text}`gpt_val_loss`
nats/char, the LSTM at {glue:text}`lstm_val_loss`, over the whole validation split (`benchmarks/gpt_seeds.py`
repeats both with other seeds). Chapter 2's plain tanh RNN reached about 1.64 in 2,000 steps of the same
size. So at this scale the Transformer buys nothing in loss, and on this CPU it costs more:""")
assert "equal_steps_verdict" in cell("fa18bd8a").source

# --- From GPT-2 to GPT-4 -------------------------------------------------------------------------------------------
ROAD_MD = r"""## From GPT-2 to GPT-4

Our model and GPT-2 differ only in their sizes. The path from GPT-2 (2019) to today's assistants
kept the decoder-only block almost unchanged, and changed what surrounds it: scale, what the model is
asked to do, and how it is fine-tuned.

- **Scaling laws.** Kaplan et al. {footcite}`kaplan2020scaling` trained many GPT-style models and found
  the test loss falling as a smooth power law in the number of parameters, the amount of data and the
  compute, over seven orders of magnitude, with the architecture's details (depth versus width) mattering
  much less. This made it possible to predict a large model's loss from small runs, and to decide how
  to spend a compute budget. Hoffmann et al. {footcite}`hoffmann2022training` later revised the recipe:
  for a given compute, a smaller model trained on more tokens (about 20 per parameter) does better than
  the large, under-trained models of 2020.
- **GPT-3 and in-context learning.** GPT-3 {footcite}`brown2020language` is GPT-2's architecture at 175
  billion parameters, trained on about 300 billion tokens. Its finding: the model performs tasks it
  was never fine-tuned for when the prompt shows a few examples ("few-shot"), with no gradient step:
  the examples are just more context. The gap between few-shot and zero-shot accuracy grew with the
  model's size, so this ability is itself a product of scale.
- **Codex.** GPT models fine-tuned on public code from GitHub {footcite}`chen2021evaluating` write
  Python functions from their docstrings, measured by running unit tests (HumanEval); a production
  version of Codex powered GitHub Copilot.
- **Instruction tuning and RLHF.** A language model continues text; it does not follow instructions.
  InstructGPT {footcite}`ouyang2022training` fine-tuned GPT-3 in three steps: supervised fine-tuning on
  answers written by people, a reward model trained on people's rankings of several answers, and
  reinforcement learning (PPO) against that reward, the method of Christiano et al.
  {footcite}`christiano2017deep`. People preferred the answers of a 1.3B InstructGPT to those of the
  175B GPT-3.
- **GPT-4.** GPT-4 {footcite}`openai2023gpt4` accepts images as well as text and answers in text, and
  scores in the top 10% of human takers of a simulated bar exam, where GPT-3.5 scored in the bottom
  10%. Its report shows the loss of the final model predicted beforehand from runs with up to 10,000
  times less compute, scaling laws used in earnest.

**What is known, and what is not.** For GPT-2 and GPT-3 the papers give the architecture, the sizes,
the data mixture and the training recipe; GPT-2's weights are public (we load them above). For GPT-4,
the technical report states that it gives no details of "the architecture (including model size),
hardware, training compute, dataset construction, training method, or similar", citing competition and
safety. What it reports are evaluations, the predictable-scaling results, and the fine-tuning with
RLHF. Anything more specific about GPT-4's size or design is rumour, not a citable fact.

### In-context learning, shown

GPT-3's few-shot prompts look like this: a few input → output pairs, then an input whose output the
model must write. With real GPT-2 we can measure how the probability of the right answer changes as the
prompt shows more examples of the task. **This cell needs the Hugging Face Hub** for GPT-2's weights
(about 500 MB); on the book's website it only prints a note. Run the chapter in Colab (the rocket button
at the top of the page) to see it: for each number of examples in the prompt, it prints GPT-2's
probability of the correct next word for a country → capital task and an English → French task. Expect
that probability to be low with no example and to climb with one or two, GPT-3's finding at a smaller
scale."""

ROAD_CODE = r"""def few_shot_probabilities(model, encode, tasks, device, max_shots=4):
    # P(correct answer | prompt with k solved examples) for k = 0..max_shots, for each task
    rows = {}
    for name, (pairs, query, answer) in tasks.items():
        probs = []
        for k in range(max_shots + 1):
            prompt = "".join(f"{x} -> {y}\n" for x, y in pairs[:k]) + f"{query} ->"
            ids, target = encode(prompt), encode(" " + answer)
            full = torch.tensor(ids + target, device=device)[None]  # (1, T)
            with torch.no_grad():
                logp = model(full)[0, len(ids) - 1:-1].float().log_softmax(-1)  # (len(target), V)
            probs.append(logp.gather(1, torch.tensor(target, device=device)[:, None]).sum().exp().item())
        rows[name] = probs
    return rows


tasks = {"country -> capital": ([("France", "Paris"), ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Canada", "Ottawa")],
                                "Italy", "Rome"),
         "English -> French": ([("cat", "chat"), ("house", "maison"), ("water", "eau"), ("book", "livre")],
                               "dog", "chien")}
if reachable("https://huggingface.co"):
    gpt2 = GPT.from_pretrained("gpt2").to(device).eval()
    gpt2_tok = transformers.AutoTokenizer.from_pretrained("gpt2")
    rows = few_shot_probabilities(gpt2, gpt2_tok.encode, tasks, device)
    print(f"{'examples in the prompt':>24} " + " ".join(f"{k:>6}" for k in range(5)))
    for name, probs in rows.items():
        print(f"{name:>24} " + " ".join(f"{p:>6.3f}" for p in probs))
else:
    print("Not run here: this cell needs the Hugging Face Hub (https://huggingface.co) for GPT-2's weights. "
          "Run the chapter in Colab to see GPT-2's probability of the right answer with 0 to 4 examples "
          "in the prompt.")"""

ROAD_AFTER = r"""Nothing in GPT-2's training asked for this: it has seen lists and dictionaries in web text, and
the examples in the prompt tell it which continuation is wanted. The same mechanism, asked in plain
words rather than by example ("a photo of a dog"), is what chapter 9's CLIP does with images: the task
is stated at test time, not trained in."""

insert_after("abb4cd05", md(ROAD_MD, "c7road-md"), code(ROAD_CODE, "c7road-code"), md(ROAD_AFTER, "c7road-after"))

# --- results -----------------------------------------------------------------------------------------------------
cell("c156875c").source = r"""## Results

The chapter's target: after its fixed 1,800 steps the character-level GPT reaches a validation loss of
at most **1.67 nats per character** over the whole validation split, on any machine, however fast: the
run is a fixed number of steps, so a slower machine takes longer but trains the same model. The margin
above our {glue:text}`gpt_val_loss` covers the spread between seeds measured by `benchmarks/gpt_seeds.py`
(and between machines, whose rounding differs like a change of seed). For scale, nanoGPT's README reports
1.88 for its CPU configuration of the same model size. The cache must not change a single generated
token, and the model must be causal."""
cell("7da5c160").source = r"""print(f"validation loss {val_loss:.3f} nats/char after {history.steps} steps ({history.seconds:.0f} s of training "
      f"on {device.type}, {gpt_ms:.0f} ms per step)")
assert history.steps == recipe.max_steps, f"training stopped after {history.steps} of {recipe.max_steps} steps"
if device.type == "cpu":  # the CPU recipe's target; the GPU recipe reaches about 1.47
    assert val_loss <= 1.67, f"validation loss {val_loss:.3f} is above the target 1.67"
assert same_greedy and same_sampled, "the KV cache changed the generated tokens"
assert earlier == 0.0, "a future token changed an earlier position's logits"
print("✓ all targets met")"""

# --- exercises, summary --------------------------------------------------------------------------------------------
replace_in("b2c8c78b", "worse than our character model's 1.64.", "worse than our character model's {glue:text}`gpt_val_loss`.")
replace_in("54cde95c", """- Trained with AdamW (decay on matrices only), warm-up and cosine decay, and clipping, a 0.8M-parameter
  character GPT reaches about 1.6 nats/char on Shakespeare in three minutes on a CPU. At that size and
  budget chapter 3's LSTM does as well or better; the Transformer's advantages are parallelism,
  scaling and long context.""",
           """- GELU is a smooth gate $x\\,\\Phi(x)$; GPT-2's initialisation (std 0.02, residual projections divided by
  $\\sqrt{2L}$) keeps the residual stream's scale independent of the depth.
- Trained with AdamW (decay on matrices only), warm-up and cosine decay, and clipping, a 0.8M-parameter
  character GPT reaches about 1.64 nats/char on Shakespeare in a fixed 1,800 steps (about three minutes
  on a CPU). At that size and at equal steps chapter 3's LSTM does as well or better, and faster per
  step; the Transformer's advantages are parallel training, scaling and long context.""")
replace_in("54cde95c", """- Data-parallel training averages shard gradients, which is exactly the full-batch gradient; DDP
  and `torchrun` run the same loop on many devices.""",
           """- Data-parallel training averages shard gradients, which is exactly the full-batch gradient; DDP
  and `torchrun` run the same loop on many devices.
- From GPT-2 to GPT-4 the block barely changed: scale (predicted by scaling laws), in-context learning
  from examples in the prompt, fine-tuning on code, instructions and human preferences (RLHF), and
  images as input. GPT-4's architecture, size and data are not public.""")
nbformat.write(nb, PATH)
print("ok2", len(nb.cells))
