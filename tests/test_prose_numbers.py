"""The numbers the prose quotes are the numbers the code printed, in the section that quotes them.

The check (tests/prose_check.py; `python -m tests.prose_check chapters/X.ipynb` lists what fails):
- every decimal, every percentage and every integer written with thousands separators in a chapter's
  text, and every number with a unit or a sign of a measurement ("23 ms", "4x", "500 steps", "377 MB",
  "2.1 nats") whatever its size, must be printed by an output **of the same section** (the cells between
  the headings around it);
- or it comes from myst-nb's glue (then it is not in the markdown at all and cannot go stale);
- or it is a setting the code holds ("1,800 steps" is the code's `1800`; integers with separators and
  step counts only);
- or it is listed below with what it is instead: a hyperparameter, a target, a constant, a paper's
  figure. An entry that names a benchmark or a script (`benchmarks/X.py`) must find the number in that
  file (its recorded results), rounded at most to the precision quoted, so a stale figure cannot hide here.
Exercises are left out (their solutions quote runs of their own); the runtime at the top of a chapter is
checked by tests/test_book.py.
"""
from __future__ import annotations

import json

import pytest
from prose_check import stale_allowances, unbacked_numbers

from scripts.setup_cell import ROOT, chapter_paths

NOT_OUTPUTS = {  # number or percentage quoted in the text, printed by no output: what it is instead
    "01_word_vectors": {"40,000": "Tiny Shakespeare's line count, rounded",
                        "10,000": "gensim's cap on a sentence", "200,000": "the corpus size, rounded",
                        **{v: "benchmarks/word2vec_throughput.py's measured words/s, rounded"
                           for v in ("108,000", "205,000", "375,000")},
                        "0.75": "word2vec's unigram exponent", "0.025": "the learning rate",
                        "0.1": "CBOW's learning rate (cbow_config)",
                        "0.55": "benchmarks/word2vec_throughput.py's measured ratio to gensim"},
    "02_rnn": {"7,000": "a lane's length in characters, rounded",
               "0.9": "Adam's beta1", "0.999": "Adam's beta2", "0.4": "read off the gradient-norm figure",
               "0.58": "1/sqrt(3), the default init's spectral radius", "1.80": "the target",
               "90%": "a data split's share", "10%": "a data split's share",
               "1.2": "the target: nats below the unigram baseline", "63 steps": "the window of 64 characters, minus one",
               "1.47": "nanoGPT's README: its GPU character model's validation loss"},
    "03_lstm_gru": {"12.5": "chance, 1/8", "0.003": "the learning rate", "0.01": "AdamW's weight decay",
                    "0.88": "sigmoid(2)", "0.5": "sigmoid(0)", "3.4": "the parameter ratio, 350,593 / 103,297",
                    "0.8": "the sampling temperature", "0.2": "an example dropout", "1.65": "the target",
                    "25%": "3 weight blocks instead of 4", "90%": "a data split's share",
                    "10%": "a data split's share"},
    "04_seq2seq": {"1,500": "benchmarks/seq2seq_bottleneck.py's steps", "3,000": "benchmarks/seq2seq_bottleneck.py's steps",
                   "3.3": "the date 3.3.98", "0.6": "GNMT's length-penalty alpha",
                   **{f"{v}%": "benchmarks/seq2seq_bottleneck.py's measured two-date exact match"
                      for v in ("2.3", "6.7", "4.3", "33.2", "59.0", "84.0", "31.7", "75.0", "84.3")},
                   "97%": "chapter 5's three-date accuracy (additive attention), printed there", "90%": "an asserted target",
                   "3.4": "the date 3.4.98", "0.0%": "benchmarks/seq2seq_bottleneck.py's two-date exact match, H = 64",
                   "1,000": "benchmarks/seq2seq_bottleneck.py's steps",
                   "250": "benchmarks/seq2seq_bottleneck.py's scoring interval, every 250 steps",
                   "7 minutes": "benchmarks/seq2seq_bottleneck.py's runtime"},
    "05_attention": {"0.003": "the learning rate", "99%": "an asserted target", "95%": "an asserted target",
                     "800 steps": "chapter 4's training steps on single dates (its fit(steps=800))",
                     "98.4%": "chapter 4's greedy test exact match, printed there"},
    "06_transformer": {"2.30": "ln 10, chance", "99.5%": "the target", "1,024": "GPT-2's context length",
                       "100,000": "today's long contexts in tokens, rounded (a fact, not a run)",
                       "0.1": "a dropout rate tried in runs outside this notebook"},
    "07_gpt": {"50,257": "GPT-2's vocabulary size", "1,500": "chapter 3's steps", "2,000": "chapter 2's steps",
               "10,000": "GPT-4's report: the compute ratio", "3,000": "steps of tries outside the notebook",
               "0.044715": "GPT-2's tanh-GELU constant", "1.702": "QuickGELU's constant", "0.17": "GELU's minimum",
               "0.75": "where GELU has its minimum", "10.7": "nanoGPT's GPU configuration, 10.7M parameters",
               "3.7": "1,800 x 2,048 characters", "1.64": "chapter 2's result",
               "1.47": "nanoGPT's reported validation loss", "1.3": "a model size, 1.3B",
               "3.5": "GPT-3.5; 3.5 nats/token in an exercise", "1.68": "the target",
               "1.6507": "seed 0, benchmarks/gpt_seeds.py (printed as 1.651 above)",
               "1.6582": "seed 1, benchmarks/gpt_seeds.py", "1.6513": "seed 2, benchmarks/gpt_seeds.py",
               "0.022": "1.68 minus the worst seed", "10%": "GPT-4's report: top / bottom 10% of bar-exam takers",
               "95%": "an asserted target", "20%": "an asserted target",
               "1,800": "the CPU recipe's steps (utils.gpt.SHAKESPEARE_CPU.max_steps)",
               "0.02": "GPT-2's initialisation std", "0.8": "the CPU model's 818,048 parameters, in millions",
               "500 MB": "the size of GPT-2's weights on the Hub", "40 GB": "GPT-2's WebText, from its paper",
               "1.88": "nanoGPT's README: its CPU configuration's validation loss", "12.5%": "chance, 1 in 8"},
    "08_vision_transformer": {"50,000": "CIFAR-10's training images",
                              "0.05": "the weight decay", "1.3": "ImageNet's 1.3 million images",
                              "0.1": "the label smoothing",
                              "10%": "a timing difference seen across runs; the warm-up share; a subset size",
                              "20%": "a data split's share", "30%": "a subset size; a timing difference seen across runs",
                              "40%": "a timing difference seen across runs (the convolution at 0.59x in one run)",
                              "15%": "the augmentation's scale range", "97%": "an asserted target",
                              "170 MB": "the size of torchvision's CIFAR-10 archive (170,498,071 bytes)"},
    "09_clip": {"32,768": "CLIP's batch size", "48,894": "the merges in OpenAI's BPE file",
                "65,504": "float16's largest number", "32,000": "SigLIP's paper: batch size beyond which little is gained",
                "0.07": "CLIP's initial temperature", "14.3": "1/0.07", "2.5": "a section of the paper",
                "2.4": "a section of the paper", "1.702": "QuickGELU's constant", "3.1": "a section of the paper",
                "3.2": "a section of the paper", "3.3": "a section of the paper",
                "49,408": "the size of CLIP's BPE vocabulary (tokenizer.vocab_size, printed in the tokenizer's section)",
                "25,600": "the images each run of the batch study sees (the code's 25_600)",
                "3%": "chance among the 32 classes (1/32)",
                "60%": "a target; the low end of a range seen over four seeds (runs not in this notebook)",
                "80%": "a target; the high end of that range", "50%": "an asserted target",
                "25%": "chance within a colour"},
    "10_vision_language": {"1,024": "LLaVA's vision width", "4,096": "LLaVA's language width",
                           "1.5": "LLaVA-1.5", "7.6": "questions per scene, counted from the data set (not printed)",
                           "90%": "an asserted target", "50%": "a coin's chance",
                           "45%": "an asserted target",
                           "0.1": "read off the loss figure", "60%": "an asserted target (held-out phrasings)"},
    "11_compression": {"0.125": "the ideal int4 ratio, 1/8",
                       "3.5": "GPT-3.5; 3.5 GB of int4 weights", "0.3": "the target's byte ratio",
                       "40%": "DistilBERT's size reduction (its paper)", "82%": "GPT-4o mini's MMLU (OpenAI)",
                       "60%": "GPT-4o mini's price cut (OpenAI)",
                       "3 MB": "the checkpoint file's size, 3,277,808 bytes", "2.14": "torch's version",
                       "0.5": "the distillation weight alpha",
                       "0.01": "the int8 target, asserted", "0.05": "the int4 and pruning targets, asserted",
                       "0.0": "the number zero, which the quantization grid must hold exactly",
                       "0.25": "the ideal int8 byte ratio, 1/4", "6.7": "LLM.int8()'s model size (6.7B) where outliers appear",
                       "12.6": "Llama-2-7B's 6.74e9 weights x 2 bytes, in GiB"},
    "12_text_to_image": {"10,000": "the training set's size, captioned_shapes(10_000) as in chapter 9",
                         "2.2": "a section number of Ramesh et al. (2021)",
                         "80%": "the 500-step CLIP's best of 16 in one run while the chapter was prepared (utils.checkpoints' docstring); "
                                "the GPT route's target, asserted",
                         "86%": "the 2,000-step CLIP's best of 16 in that run (the chapter's own run prints 88.5%)",
                         "7 MB": "the checkpoint file's size, 7,082,706 bytes", "0.25": "the VQ-VAE's commitment weight beta",
                         "70%": "the share of VQ-VAE training during which dead codes are reset",
                         "8.6": "the left/top place's centre, 0.27 x 32 pixels", "23.4": "the right/bottom place's centre, 0.73 x 32",
                         "10%": "the share of captions dropped for guidance (p_uncond 0.1)", "0.02": "DDPM's last beta",
                         "2%": "the epsilon-predicting prototype's share right (utils.diffusion's docstring)",
                         "8,192": "DALL-E's codebook size (its paper)", "1,024": "DALL-E's 32 x 32 image tokens (its paper)",
                         "8 ×": "Stable Diffusion's downsampling factor (its paper)",
                         "99%": "the attribute reader's target, asserted",
                         "3.5": "the standard error of a share near one half over 200 prompts, sqrt(0.25 / 200)",
                         "2.6": "a section number of Ramesh et al. (2021)",
                         "1,300": "the steps of the prototype's diffusion runs (utils.diffusion's docstring)",
                         "5%": "the epsilon-predicting prototype's best share right (utils.diffusion's docstring: 2-5%)",
                         "45%": "the x0-predicting prototype's best share right (utils.diffusion's docstring: 25-45%)"},
}


@pytest.mark.parametrize("path", chapter_paths(), ids=lambda p: p.stem)
def test_quoted_numbers_are_printed(path):
    missing = unbacked_numbers(json.loads(path.read_text()), NOT_OUTPUTS.get(path.stem, {}))
    assert not missing, (f"{path.name}: numbers in the text that no output of their section prints "
                         f"(re-executed without updating the prose? use glue): {missing}")


def test_allow_list_entries_that_name_a_file_are_in_it():
    stale = {chapter: bad for chapter, allowed in NOT_OUTPUTS.items() if (bad := stale_allowances(allowed))}
    assert not stale, f"allow-list entries whose benchmark or script does not hold the number: {stale}"


# ---------------------------------------------------------------------------------------------- the check itself

def _nb(*cells):
    """A notebook from ("md", text) and ("code", printed) pairs."""
    out = []
    for kind, text in cells:
        if kind == "md":
            out.append({"cell_type": "markdown", "source": text, "metadata": {}})
        else:
            out.append({"cell_type": "code", "source": "pass", "metadata": {},
                        "outputs": [{"output_type": "stream", "name": "stdout", "text": text}]})
    return {"cells": out}


TIMING = ("code", "model   ms/step\nRNN     14.5\nLSTM    32.6\n")


def test_a_stale_timing_fails_whatever_its_size():
    assert unbacked_numbers(_nb(("md", "## Speed"), TIMING, ("md", "A step costs 14.5 ms here.")), {}) == []
    assert unbacked_numbers(_nb(("md", "## Speed"), TIMING, ("md", "A step costs 23 ms here.")), {}) == [
        "cell 2: 23 ms"]
    for quoted in ("4x faster", "3× the work", "500 steps", "377 MB", "2 nats"):
        assert unbacked_numbers(_nb(("md", "## A"), ("code", "nothing"), ("md", quoted)), {}), quoted
    # sizes and plain small integers are not measurements
    assert unbacked_numbers(_nb(("md", "## A"), ("md", "a 224×224 image, 3 × 3 kernels, 5 negatives")), {}) == []


def test_a_number_printed_only_in_another_section_fails():
    nb = _nb(("md", "## Training"), ("code", "accuracy 97.3%\n"), ("md", "## Results"),
             ("md", "The model reached 97.3% on held-out dates."))
    assert unbacked_numbers(nb, {}) == ["cell 3: 97.3%"]
    nb["cells"].insert(3, _nb(("code", "accuracy 97.3%\n"))["cells"][0])  # printed in its own section: passes
    assert unbacked_numbers(nb, {}) == []


def test_allow_list_and_settings_and_exercises():
    nb = _nb(("md", "## A"), ("md", "Adam's 0.999, 1,800 steps, 2,000 more"))
    nb["cells"].insert(1, {"cell_type": "code", "source": "STEPS = 1800", "metadata": {}, "outputs": []})
    assert unbacked_numbers(nb, {"0.999": "Adam's beta2"}) == ["cell 2: 2,000"]
    exercises = _nb(("md", "## Exercises\n1. Reach 99.9% (we got 98.7%)."), ("md", "## Summary\nWe got 12.5%."))
    assert unbacked_numbers(exercises, {}) == ["cell 1: 12.5%"]


def test_an_allowed_benchmark_figure_must_be_in_the_benchmark(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "speed.py").write_text('"""Measured: 108,404 words/s; ratio 0.553."""')
    ok = {"108,000": "benchmarks/speed.py's words/s, rounded", "0.55": "benchmarks/speed.py's ratio"}
    assert stale_allowances(ok, tmp_path) == []
    assert stale_allowances({"125,000": "benchmarks/speed.py's words/s"}, tmp_path) == [
        "125,000: not in benchmarks/speed.py"]
    assert stale_allowances({"0.7": "benchmarks/speed.py's ratio"}, tmp_path) == ["0.7: not in benchmarks/speed.py"]
    assert stale_allowances({"1": "benchmarks/gone.py"}, tmp_path) == ["1: benchmarks/gone.py does not exist"]


def test_the_stale_timing_the_reading_found_would_fail_today():
    """Chapter 3's text once quoted 23 ms per step beside a table printing 14.5: planted back, it fails."""
    path = ROOT / "chapters" / "03_lstm_gru.ipynb"
    nb = json.loads(path.read_text())
    k = next(k for k, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and "ms/step" in json.dumps(c))
    nb["cells"].insert(k + 1, {"cell_type": "markdown", "metadata": {}, "source": "Here a step cost 23 ms."})
    assert f"cell {k + 1}: 23 ms" in unbacked_numbers(nb, NOT_OUTPUTS[path.stem])
