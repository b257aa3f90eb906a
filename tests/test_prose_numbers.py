"""The numbers the prose quotes are the numbers the code printed.

Every decimal number, every percentage and every integer written with thousands separators ("642,135")
in a chapter's text (outside the exercises, whose solutions quote runs of their own) must appear in one
of the chapter's saved outputs, unless it is listed below with what it is instead: a hyperparameter, a
target, a constant, a paper's figure. (A separated integer also passes when an output or the code has
it without separators: "1,800 steps" is the code's `1800`.) A re-execution that changes a result then
fails here until the text follows it. Numbers the text takes from myst-nb's glue are not in the
markdown at all, so they are always right. Small plain integers ("5 negatives") are not checked: most
are settings the code states beside them.
"""
from __future__ import annotations

import json
import re

import pytest

from scripts.setup_cell import chapter_paths

NOT_OUTPUTS = {  # number or percentage quoted in the text, printed by no output: what it is instead
    "01_word_vectors": {"40,000": "Tiny Shakespeare's line count, rounded",
                        "10,000": "gensim's cap on a sentence", "200,000": "the corpus size, rounded",
                        **{v: "benchmarks/word2vec_throughput.py's measured words/s, rounded"
                           for v in ("108,000", "205,000", "375,000")},
                        "0.75": "word2vec's unigram exponent", "0.025": "the learning rate",
                        "0.55": "benchmarks/word2vec_throughput.py's measured ratio to gensim"},
    "02_rnn": {"7,000": "a lane's length in characters, rounded",
               "0.9": "Adam's beta1", "0.999": "Adam's beta2", "0.4": "read off the gradient-norm figure",
               "0.58": "1/sqrt(3), the default init's spectral radius", "1.80": "the target",
               "90%": "a data split's share", "10%": "a data split's share"},
    "03_lstm_gru": {"12.5": "chance, 1/8", "0.003": "the learning rate", "0.01": "AdamW's weight decay",
                    "0.88": "sigmoid(2)", "0.5": "sigmoid(0)", "3.4": "the parameter ratio, 350,593 / 103,297",
                    "0.8": "the sampling temperature", "0.2": "an example dropout", "1.65": "the target",
                    "25%": "3 weight blocks instead of 4", "90%": "a data split's share",
                    "10%": "a data split's share"},
    "04_seq2seq": {"1,500": "benchmarks/seq2seq_bottleneck.py's steps", "3,000": "benchmarks/seq2seq_bottleneck.py's steps",
                   "3.3": "the date 3.3.98", "0.6": "GNMT's length-penalty alpha",
                   **{f"{v}%": "benchmarks/seq2seq_bottleneck.py's measured two-date exact match"
                      for v in ("2.3", "6.7", "4.3", "33.2", "59.0", "84.0", "31.7", "75.0", "84.3")},
                   "96%": "chapter 5's three-date accuracy, printed there", "90%": "an asserted target"},
    "05_attention": {"0.003": "the learning rate", "99%": "an asserted target", "95%": "an asserted target"},
    "06_transformer": {"2.30": "ln 10, chance", "99.5%": "the target"},
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
               "95%": "an asserted target", "20%": "an asserted target"},
    "08_vision_transformer": {"50,000": "CIFAR-10's training images",
                              "0.05": "the weight decay", "1.3": "ImageNet's 1.3 million images",
                              "0.1": "the label smoothing",
                              "10%": "a timing difference seen across runs; the warm-up share; a subset size",
                              "20%": "a data split's share", "30%": "a subset size; a timing difference seen across runs",
                              "15%": "the augmentation's scale range", "97%": "an asserted target"},
    "09_clip": {"32,768": "CLIP's batch size", "48,894": "the merges in OpenAI's BPE file",
                "65,504": "float16's largest number", "32,000": "SigLIP's paper: batch size beyond which little is gained",
                "0.07": "CLIP's initial temperature", "14.3": "1/0.07", "2.5": "a section of the paper",
                "2.4": "a section of the paper", "1.702": "QuickGELU's constant", "3.1": "a section of the paper",
                "3.9": "a range of x, read off the GELU figure",
                "60%": "a target; the low end of a range seen over four seeds (runs not in this notebook)",
                "80%": "a target; the high end of that range", "50%": "an asserted target",
                "25%": "chance within a colour"},
    "10_vision_language": {"1,024": "LLaVA's vision width", "4,096": "LLaVA's language width",
                           "1.5": "LLaVA-1.5", "7.6": "questions per scene, counted from the data set (not printed)",
                           "0.03": "read off the loss figure", "90%": "an asserted target", "50%": "a coin's chance",
                           "45%": "an asserted target",
                           "65%": "an earlier run of the question-only prefix model (not in this notebook)",
                           "77%": "the same run at 2,000 steps"},
    "11_compression": {"0.125": "the ideal int4 ratio, 1/8", "3.0": "benchmarks/quantized_decode.py's measured ratio",
                       "3.5": "GPT-3.5; 3.5 GB of int4 weights", "0.3": "the target's byte ratio",
                       "40%": "DistilBERT's size reduction (its paper)", "82%": "GPT-4o mini's MMLU (OpenAI)",
                       "60%": "GPT-4o mini's price cut (OpenAI)"},
}
NUMBER = re.compile(r"(?<![\w.$\\{,])(\d{1,3}(?:,\d{3})+(?![\d.])|\d+\.\d+%?|\d+%)")


@pytest.mark.parametrize("path", chapter_paths(), ids=lambda p: p.stem)
def test_quoted_numbers_are_printed(path):
    nb = json.loads(path.read_text())
    printed = "".join("".join(o.get("text", "")) + json.dumps(o.get("data", {}).get("text/plain", ""))
                      for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))
    code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    allowed = NOT_OUTPUTS.get(path.stem, {})
    missing = []
    in_exercises = False
    for k, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"])
        if "## Exercises" in text:
            in_exercises = True
        if "## Summary" in text:
            in_exercises = False
        if in_exercises or "exercise" in (cell.get("metadata", {}).get("tags") or []):
            continue
        missing += [f"cell {k}: {m[0]}" for m in NUMBER.finditer(text)
                    if m[0] not in printed and m[0] not in allowed and not bare_in(m[0], printed + code)]
    assert not missing, (f"{path.name}: numbers in the text that no output prints (re-executed without "
                         f"updating the prose?): {missing}")


def bare_in(number: str, text: str) -> bool:
    """A number with thousands separators, found in text without them ("1800" or "1_800")."""
    if "," not in number:
        return False
    digits = number.replace(",", "")
    return any(re.search(rf"(?<![\d_]){re.escape(form)}(?![\d_])", text)
               for form in (digits, number.replace(",", "_")))
