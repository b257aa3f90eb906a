"""Tests of utils.viz: each figure draws what it was given, and rejects what it cannot draw."""
from __future__ import annotations

import io
import re
import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from explorers import controls_of, on_the_page
from utils import viz  # noqa: E402
from utils.train import EvalRecord, History, TrainRecord  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def make_history(n: int = 5, evals: bool = True) -> History:
    train = [TrainRecord(s, 0.1 * s, 3.0 / s, 1.0, 1e-3) for s in range(1, n + 1)]
    ev = [EvalRecord(s, 0.1 * s, {"val_loss": 3.5 / (s + 1), "accuracy": 0.1 * s}) for s in (0, n)] if evals else []
    return History(train, ev, n, 0.1 * n, "max_steps")


# ---------------------------------------------------------------------------------------- heatmap

def test_heatmap_draws_the_matrix_with_labels_and_colorbar():
    matrix = torch.arange(12, dtype=torch.float32, requires_grad=True).reshape(3, 4)
    ax = viz.heatmap(matrix, row_labels=["a", "b", "c"], col_labels=["w", "x", "y", "z"], title="t")
    assert np.array_equal(ax.images[0].get_array(), matrix.detach().numpy())
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["w", "x", "y", "z"]
    assert len(ax.figure.axes) == 2 and ax.get_title() == "t"  # the image and its colorbar
    assert ax.figure.dpi == 100


def test_heatmap_annotates_in_a_readable_colour_and_thins_ticks():
    ax = viz.heatmap(np.array([[0.0, 1.0], [0.25, 0.5]]), colorbar=False, annotate=True, fmt=".1f")
    texts = {t.get_text(): t.get_color() for t in ax.texts}
    assert set(texts) == {"0.0", "1.0", "0.2", "0.5"}  # .1f of 0.25 is "0.2"
    assert texts["0.0"] == "white" and texts["1.0"] == "black"  # dark purple / light yellow cells
    assert len(ax.figure.axes) == 1

    ax = viz.heatmap(np.zeros((5, 200)), col_labels=[f"tok{i}" for i in range(200)], max_ticks=50)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    k = int(labels[1][3:])
    assert 2 <= len(labels) <= 50 and labels[0] == "tok0" and labels[:3] == ["tok0", f"tok{k}", f"tok{2 * k}"]
    assert ax.get_xticklabels()[0].get_rotation() == 90  # long labels are turned
    assert ax.figure.get_figwidth() <= viz.figures.PAGE_WIDTH  # shown at its own size on the page
    assert ax.figure.get_figwidth() * 0.775 * 72 / len(labels) >= 10  # a 10-point label every k: no overlap

    chars = list("to be, or not to be: that is")  # 28 characters: every one fits at the page width
    ax = viz.heatmap(np.zeros((3, len(chars))), col_labels=chars)
    assert [t.get_text() for t in ax.get_xticklabels()] == chars
    assert ax.figure.get_figwidth() <= viz.figures.PAGE_WIDTH


def test_heatmap_rejects_bad_input():
    with pytest.raises(ValueError, match=r"2-D matrix \(rows, cols\), got shape \(2, 3, 4\); pick one map"):
        viz.heatmap(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="2-D matrix"):
        viz.heatmap(np.zeros(5))
    with pytest.raises(ValueError, match="row_labels has 2 labels but there are 3 rows"):
        viz.heatmap(np.zeros((3, 4)), row_labels=["a", "b"])
    with pytest.raises(ValueError, match="col_labels has 5 labels but there are 4 columns"):
        viz.heatmap(np.zeros((3, 4)), col_labels="abcde")
    with pytest.raises(ValueError, match="annotate matrices up to 30x30"):
        viz.heatmap(np.zeros((40, 40)), annotate=True)
    with pytest.raises(ValueError, match="empty"):
        viz.heatmap(np.zeros((0, 3)))


# ---------------------------------------------------------------------------------------- loss curves

def test_loss_curves_draws_train_and_eval_losses_of_each_run():
    a, b = make_history(5), make_history(8)
    ax = viz.loss_curves({"rnn": a, "lstm": b})
    assert len(ax.lines) == 4  # train + val_loss per run; accuracy is not a loss, so not drawn
    labels = [line.get_label() for line in ax.lines]
    assert labels == ["rnn (train)", "rnn (val_loss)", "lstm (train)", "lstm (val_loss)"]
    assert list(ax.lines[0].get_xdata()) == [1, 2, 3, 4, 5]
    assert list(ax.lines[0].get_ydata()) == [r.loss for r in a.train]
    assert ax.lines[0].get_color() == ax.lines[1].get_color() != ax.lines[2].get_color()
    assert ax.lines[1].get_linestyle() == "--"
    assert ax.get_ylabel() == "loss (nats)" and ax.get_xlabel() == "step"

    ax = viz.loss_curves({"rnn": a.to_dict()}, x="seconds", eval_metrics=["accuracy"], ylabel="")
    assert list(ax.lines[0].get_xdata()) == pytest.approx([0.1 * s for s in range(1, 6)])
    assert list(ax.lines[1].get_ydata()) == pytest.approx([0.0, 0.5])
    assert ax.get_xlabel() == "training time (s)"

    ax = viz.loss_curves({"bigram": [2.0, 1.5, 1.2]}, logy=True)
    assert len(ax.lines) == 1 and list(ax.lines[0].get_xdata()) == [1, 2, 3]
    assert ax.get_yscale() == "log"


def test_loss_curves_rejects_bad_input():
    with pytest.raises(ValueError, match="x must be 'step' or 'seconds'"):
        viz.loss_curves({"a": make_history()}, x="epoch")
    with pytest.raises(ValueError, match="non-empty dict"):
        viz.loss_curves({})
    with pytest.raises(ValueError, match="plain list of losses with no times"):
        viz.loss_curves({"a": [1.0, 2.0]}, x="seconds")
    with pytest.raises(KeyError, match="no evaluation metric"):
        viz.loss_curves({"a": make_history()}, eval_metrics=["bleu"])
    with pytest.raises(ValueError, match="recorded nothing to plot"):
        viz.loss_curves({"a": History()})
    with pytest.raises(ValueError, match="1-D list of losses"):
        viz.loss_curves({"a": np.zeros((2, 2))})


# ---------------------------------------------------------------------------------------- scatter

def test_scatter_2d_highlights_and_labels_a_readable_subset():
    rng = np.random.default_rng(0)
    points = torch.tensor(rng.normal(size=(200, 2)))
    words = [f"w{i}" for i in range(200)]
    ax = viz.scatter_2d(points, words, highlight=["w150", "w199"], max_labels=10)
    base, high = ax.collections
    assert len(base.get_offsets()) == 198 and len(high.get_offsets()) == 2
    assert np.allclose(high.get_offsets(), points[[150, 199]].numpy())
    assert mcolors.same_color(high.get_facecolor()[0], viz.HIGHLIGHT)
    assert not mcolors.same_color(base.get_facecolor()[0], viz.HIGHLIGHT)
    texts = [t.get_text() for t in ax.texts]
    assert texts[:2] == ["w150", "w199"]  # highlighted points are always labelled
    assert len(texts) == 12 and all(t in words[:150] for t in texts[2:])


def test_scatter_2d_does_not_stack_labels_on_a_blob():
    points = np.vstack([np.zeros((50, 2)), [[1.0, 1.0]]])  # 50 points on one spot, one apart
    ax = viz.scatter_2d(points, [str(i) for i in range(51)], max_labels=20)
    assert [t.get_text() for t in ax.texts] == ["0", "50"]
    ax = viz.scatter_2d(points, [str(i) for i in range(51)], max_labels=0)
    assert len(ax.texts) == 0
    ax = viz.scatter_2d(points)  # no labels at all
    assert len(ax.texts) == 0 and len(ax.collections) == 1


def test_scatter_2d_rejects_bad_input():
    with pytest.raises(ValueError, match=r"shape \(N, 2\), got \(5, 3\); reduce the 3-D vectors to 2-D"):
        viz.scatter_2d(np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"shape \(N, 2\), got \(10,\)"):
        viz.scatter_2d(np.zeros(10))
    with pytest.raises(ValueError, match="labels has 4 labels but there are 5 points"):
        viz.scatter_2d(np.zeros((5, 2)), labels=list("abcd"))
    with pytest.raises(ValueError, match=r"not in labels: \['zebra'\]"):
        viz.scatter_2d(np.zeros((2, 2)), labels=["cat", "dog"], highlight=["cat", "zebra"])
    with pytest.raises(ValueError, match="labels= must be given"):
        viz.scatter_2d(np.zeros((2, 2)), highlight=["cat"])


# ---------------------------------------------------------------------------------------- png and style

def test_figure_to_png_returns_png_bytes_and_closes_the_figure():
    ax = viz.heatmap(np.eye(3))
    fig = ax.figure
    png = viz.figure_to_png(ax)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert not plt.fignum_exists(fig.number)
    with pytest.raises(TypeError, match="Figure or Axes"):
        viz.figure_to_png(np.eye(3))


def test_the_book_style_applies_whatever_the_global_settings():
    with plt.rc_context({"figure.dpi": 37, "axes.spines.top": True}):
        ax = viz.heatmap(np.eye(2))
        assert ax.figure.dpi == 100
        ax = viz.loss_curves({"a": [1.0, 0.5]})
        assert not ax.spines["top"].get_visible()
        with viz.style():
            assert plt.rcParams["figure.dpi"] == 100
        assert plt.rcParams["figure.dpi"] == 37


# ---------------------------------------------------------------------------------------- explorers on a static page

def text_of(box):
    return " ".join(v for v in on_the_page(box) if isinstance(v, str))


def test_switched_pages_follow_every_control_in_the_browser():
    import ipywidgets as widgets

    from utils.viz.explorers import _switched

    a = widgets.Dropdown(options=["x", "y"], description="a")
    b = widgets.IntSlider(min=0, max=2, description="b")
    c = widgets.ToggleButtons(options=["only"])  # one choice: no stack, no link
    made = []

    def page(i, j, k):
        made.append((i, j, k))
        return widgets.HTML(f"{i}{j}{k}")

    links = []
    root = _switched([a, b, c], page, links)
    assert sorted(made) == [(i, j, 0) for i in range(2) for j in range(3)]  # every combination, drawn once
    assert len(links) == 1 + 2 and all(isinstance(link, widgets.widget_link.Link) for link in links)
    box = widgets.VBox([a, b, root])
    box.links = links
    assert on_the_page(box) == ["000"]
    a.value, b.value = "y", 2
    assert on_the_page(box) == ["120"]
    with pytest.raises(TypeError, match="cannot switch pages"):
        _switched([widgets.IntSlider(min=1, max=3)], page, [])


def test_small_png_keeps_the_picture_and_is_smaller():
    from PIL import Image

    from utils.viz.explorers import _small_png

    fig = viz.attention_grid(softmax_maps(4, 12, 12), list("abcdefghijkl"), list("abcdefghijkl"))
    big = viz.figure_to_png(viz.attention_grid(softmax_maps(4, 12, 12), list("abcdefghijkl"), list("abcdefghijkl")))
    small = _small_png(fig)
    assert small[:4] == b"\x89PNG" and len(small) < 0.7 * len(big)
    a = np.asarray(Image.open(io.BytesIO(big)).convert("RGB"), dtype=float)
    b = np.asarray(Image.open(io.BytesIO(small)).convert("RGB"), dtype=float)
    assert a.shape == b.shape and np.abs(a - b).mean() < 2.0  # the same picture to the eye


def test_word_explorer_switches_words_in_the_browser_and_takes_typed_words_in_a_kernel():
    from utils.viz import word_explorer

    table = {"king": [("queen", 0.9), ("prince", 0.8)], "queen": [("king", 0.9)]}

    def lookup(word):
        return table[word]  # KeyError for unknown words, like most_similar

    points = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5]])
    box = word_explorer({"toy": lookup}, points, ["king", "queen", "prince"], default="king", examples=["Queen"],
                        topn=2)
    word = controls_of(box)["word"]
    assert word.options == ("king", "queen")  # drawn up front, so the menu works on a static page
    first = on_the_page(box)
    assert "queen" in first[0] and first[1][:4] == b"\x89PNG"
    word.value = "queen"
    second = on_the_page(box)
    assert "nearest neighbours of “queen”" in second[0] and second[1] != first[1]
    controls_of(box)["or type"].value = "zebra"  # typed, with a kernel: added to the menu and shown
    assert word.value == "zebra" and "not in vocabulary" in text_of(box)


def test_word_explorer_rejects_mismatched_points():
    from utils.viz import word_explorer

    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        word_explorer({"toy": lambda w: []}, np.zeros((2, 2)), ["a", "b", "c"], default="a")
    with pytest.raises(ValueError, match="at least one method"):
        word_explorer({}, np.zeros((3, 2)), ["a", "b", "c"], default="a")


# ---------------------------------------------------------------------------------------- accuracy_by_length

def test_accuracy_by_length_plots_one_line_per_model_at_the_right_accuracies():
    lengths = np.array([5] * 10 + [10] * 10 + [15] * 3)
    good = np.ones(23)
    bad = np.array([1] * 10 + [1] * 5 + [0] * 5 + [0] * 3)
    ax = viz.accuracy_by_length({"good": (lengths, good), "bad": (torch.tensor(lengths), torch.tensor(bad) == 1)})
    (x_good, y_good), (x_bad, y_bad) = [line.get_data() for line in ax.get_lines()]
    np.testing.assert_allclose(x_good, [5, 10])  # the length-15 group has only 3 < min_count examples
    np.testing.assert_allclose(y_bad, [1.0, 0.5])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["good", "bad"]
    ax = viz.accuracy_by_length({"bad": (lengths, bad)}, bins=[0, 8, 16], min_count=3)
    np.testing.assert_allclose(ax.get_lines()[0].get_data()[1], [1.0, 5 / 13])
    np.testing.assert_allclose(ax.get_lines()[0].get_data()[0], [5.0, (10 * 10 + 15 * 3) / 13])
    ax = viz.accuracy_by_length({"bad": (lengths, bad)}, bins=2, min_count=1)
    assert len(ax.get_lines()[0].get_xdata()) == 2


def test_accuracy_by_length_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty dict"):
        viz.accuracy_by_length({})
    with pytest.raises(ValueError, match="same size"):
        viz.accuracy_by_length({"m": (np.arange(5), np.ones(4))})
    with pytest.raises(ValueError, match="booleans or 0/1"):
        viz.accuracy_by_length({"m": (np.arange(5), np.full(5, 0.5))})
    with pytest.raises(ValueError, match="min_count"):
        viz.accuracy_by_length({"m": (np.arange(5), np.ones(5))})
    with pytest.raises(ValueError, match="increasing bin edges"):
        viz.accuracy_by_length({"m": (np.arange(5), np.ones(5))}, bins=[3, 1])


# ---------------------------------------------------------------------------------------- decoding_explorer

def test_decoding_explorer_precomputes_every_setting_and_reports_typed_errors():
    calls = []

    def decode(text, method, width, alpha):
        calls.append((text, method, width, alpha))
        if "?" in text:
            raise ValueError("unknown character '?' at position 0")
        n = 1 if method == "greedy" else width
        return [(f"{text.upper()}{i}", -0.1 * (i + 1), -0.05 * (i + 1) * (1 + alpha)) for i in range(n)]

    box = viz.decoding_explorer(decode, default="abc", examples=["abc", "xyz"], width=3, max_width=4,
                                alphas=(0.0, 1.0))
    c = controls_of(box)
    assert c["beam width"].options == (1, 2, 3, 4) and c["input"].options == ("abc", "xyz")
    assert ("abc", "greedy", 1, 0.0) in calls and ("xyz", "beam", 4, 1.0) in calls
    assert len(calls) == 2 * (1 + 4 * 2)  # every input × (greedy + every width × alpha), each once
    page = text_of(box)
    assert "width 3, alpha 0" in page and "ABC2" in page and "90.5%" in page  # exp(-0.1) as a probability
    c["decoding"].value = "greedy"
    assert "greedy decoding" in text_of(box) and "ABC1" not in text_of(box)
    c["decoding"].value, c["beam width"].value, c["alpha"].value, c["input"].value = "beam", 4, 1.0, "xyz"
    assert "width 4, alpha 1" in text_of(box) and "XYZ3" in text_of(box)
    assert not box.add("?x") and "cannot show" in text_of(box) and "unknown character" in text_of(box)
    assert box.add("new") and c["input"].value == "new" and "NEW3" in text_of(box)
    with pytest.raises(ValueError, match="method"):
        viz.decoding_explorer(decode, default="a", method="sampling")
    with pytest.raises(ValueError, match="width"):
        viz.decoding_explorer(decode, default="a", width=11, max_width=10)


# ---------------------------------------------------------------------------------------- sampling_explorer

def test_sampling_explorer_precomputes_every_knob_shows_the_distribution_and_errors():
    calls, dists = [], []

    def sample(prompt, temperature, top_k, top_p, seed):
        calls.append((prompt, temperature, top_k, top_p, seed))
        if "#" in prompt:
            raise ValueError("unknown character '#'")
        return f" <{temperature},{top_k},{top_p}>"

    def distribution(prompt, temperature, top_k, top_p):
        dists.append((prompt, temperature, top_k, top_p))
        return [("e", 0.625), (" ", 0.25), ("<", 0.125)]

    box = viz.sampling_explorer(sample, distribution, default="ROMEO:", examples=["JULIET:"], temperature=0.8,
                                temperatures=(0.0, 1.0), top_ks=(5,), top_ps=(0.9,), seed=3, vocab_size=65)
    c = controls_of(box)
    assert [v for _, v in c["temperature"].options] == [0.0, 0.8, 1.0] and c["temperature"].value == 0.8
    assert [v for _, v in c["top-k"].options] == [None, 5] and [v for _, v in c["top-p"].options] == [None, 0.9]
    assert len(calls) == 2 * (1 + 2 * 2 * 2) and all(seed == 3 for *_, seed in calls)  # greedy drawn once
    page = text_of(box)
    assert "<b>ROMEO:</b> &lt;0.8,None,None&gt;" in page and "62.5%" in page and "&#x27;&lt;&#x27;" in page
    c["top-k"].value, c["top-p"].value = 5, 0.9
    assert "top-k 5, top-p 0.9" in text_of(box) and "&lt;0.8,5,0.9&gt;" in text_of(box)
    c["temperature"].value, c["prompt"].value = 0.0, "JULIET:"
    assert "(greedy" in text_of(box) and "&lt;0.0,None,None&gt;" in text_of(box) and "JULIET:" in text_of(box)
    assert not box.add("a#b") and "cannot show" in text_of(box) and "unknown character" in text_of(box)
    assert box.add("KING:") and "<b>KING:</b>" in text_of(box)
    with pytest.raises(ValueError, match=r"top_k must be None or an int in \[1, vocab_size=65\], got 70"):
        viz.sampling_explorer(sample, default="a", top_k=70, vocab_size=65)
    with pytest.raises(ValueError, match=r"temperature must be in \[0, 2\]"):
        viz.sampling_explorer(sample, default="a", temperature=3.0)
    with pytest.raises(ValueError, match=r"top_p must be None or in \(0, 1\]"):
        viz.sampling_explorer(sample, default="a", top_p=0.0)
    assert "the 10 most likely" not in text_of(viz.sampling_explorer(sample, default="a"))  # no distribution: no bars


# ---------------------------------------------------------------------------------------- gate_viewer

def test_gate_viewer_draws_every_example_up_front_and_takes_typed_lines_in_a_kernel():
    from utils.viz import gate_viewer

    calls = []

    def compute(text):
        calls.append(text)
        if "#" in text:
            raise KeyError("unknown character '#'")
        t = torch.linspace(0, 1, len(text))[:, None].repeat(1, 3)  # (T, 3)
        return {"forget": t, "cell": 2 * t - 1}

    box = gate_viewer(compute, "to be", examples=["or not"], ranges={"forget": (0, 1), "cell": (-1, 1)})
    text = controls_of(box)["text"]
    assert text.options == ("to be", "or not") and calls.count("or not") == 1
    first = on_the_page(box)
    assert "to be" in first[0] and first[1][:4] == b"\x89PNG"
    text.value = "or not"
    second = on_the_page(box)
    assert "6 characters" in second[0] and second[1] != first[1]
    assert not box.add("a#b") and "unknown character" in text_of(box)
    assert box.add("x" * 150) and calls[-1] == "x" * 100  # cut at max_chars


def test_gate_viewer_rejects_bad_input():
    from utils.viz import gate_viewer

    with pytest.raises(ValueError, match="default"):
        gate_viewer(lambda t: {}, "")
    with pytest.raises(ValueError, match="one row per character"):
        gate_viewer(lambda t: {"f": np.zeros((len(t) + 1, 2))}, "abc")
    with pytest.raises(ValueError, match="no maps"):
        gate_viewer(lambda t: {}, "abc")
    with pytest.raises(ValueError, match="max_chars"):
        gate_viewer(lambda t: {}, "abc", max_chars=0)


# ---------------------------------------------------------------------------------------- patches

def test_patch_sequence_rows_are_the_patches_row_by_row():
    rgb = np.random.default_rng(0).uniform(0, 1, (8, 12, 3))
    seq = viz.patch_sequence(rgb, 4)  # a 2×3 grid
    assert seq.shape == (6, 16, 3)
    for n in range(6):
        r, c = divmod(n, 3)
        np.testing.assert_array_equal(seq[n], rgb[4 * r:4 * r + 4, 4 * c:4 * c + 4].reshape(16, 3))
    chw = torch.tensor(rgb).permute(2, 0, 1)  # channels first, as a model reads it
    np.testing.assert_array_equal(viz.patch_sequence(chw, 4), seq)
    from utils.vit import patchify  # the model's vectors are these rows with the channels flattened first
    np.testing.assert_allclose(patchify(chw[None], 4)[0].numpy(), seq.transpose(0, 2, 1).reshape(6, 48))
    assert viz.patch_sequence(np.zeros((6, 6), dtype=np.uint8), 3).shape == (4, 9, 1)


def test_patch_grid_draws_the_grid_the_patch_and_the_sequence():
    image = np.arange(16 * 16, dtype=float).reshape(16, 16)
    fig = viz.patch_grid(image, 4, patch=6)  # a 4×4 grid; patch 6 is row 1, column 2
    ax_img, ax_patch, ax_seq = fig.axes
    assert len(ax_img.lines) == 3 + 3  # inner grid lines
    assert sorted(t.get_text() for t in ax_img.texts) == sorted(str(n) for n in range(16))
    (box,) = [p for p in ax_img.patches if isinstance(p, matplotlib.patches.Rectangle)]
    assert box.get_xy() == (2 * 4 - 0.5, 1 * 4 - 0.5) and box.get_width() == 4
    np.testing.assert_array_equal(ax_patch.images[0].get_array(), image[4:8, 8:12])
    np.testing.assert_array_equal(ax_seq.images[0].get_array(), viz.patch_sequence(image, 4)[..., 0])
    (row,) = [p for p in ax_seq.patches if isinstance(p, matplotlib.patches.Rectangle)]
    assert row.get_xy() == (-0.5, 5.5) and row.get_width() == 16 and row.get_height() == 1
    assert "patch 6" in ax_patch.get_title() and "16 patches" in ax_seq.get_title()
    fig = viz.patch_grid(np.zeros((32, 32, 3)), 2)  # 256 patches: no numbers; default: the centre patch
    assert not fig.axes[0].texts and "patch 136" in fig.axes[1].get_title()  # row 8, column 8


def test_patch_grid_rejects_bad_input():
    with pytest.raises(ValueError, match=r"image is 10×16 pixels, not divisible by the patch size 4"):
        viz.patch_grid(np.zeros((10, 16)), 4)
    with pytest.raises(ValueError, match=r"patch must be an index in \[0, 16\) for a 4×4 grid"):
        viz.patch_grid(np.zeros((16, 16)), 4, patch=16)
    with pytest.raises(ValueError, match=r"one image of shape \(H, W\), \(H, W, 3\) or \(3, H, W\), got shape "
                                         r"\(2, 3, 8, 8\); for a batch, pick one image first"):
        viz.patch_grid(np.zeros((2, 3, 8, 8)), 4)
    with pytest.raises(ValueError, match=r"RGB float image must lie in \[0, 1\]"):
        viz.patch_grid(np.full((8, 8, 3), 255.0), 4)
    with pytest.raises(ValueError, match="patch_size must be a positive int, got 0"):
        viz.patch_sequence(np.zeros((8, 8)), 0)


def patch_explorer_parts(box):
    size, stack = box.children
    pages = {value: page.children for (_, value), page in zip(size.options, stack.children)}  # (slider, caption, png)
    return size, stack, pages


def test_patch_explorer_switches_size_in_the_browser_and_follows_the_chosen_patch():
    import ipywidgets as widgets

    image = np.random.default_rng(1).uniform(0, 1, (16, 16, 3))
    box = viz.patch_explorer(image, [8, 2, 4], patch=3)  # default size: the middle one, 4; patch 3 = row 0, col 3
    size, stack, pages = patch_explorer_parts(box)
    assert size.value == 4 and stack.selected_index == 1 and list(pages) == [2, 4, 8]
    assert [(pages[p][0].value, pages[p][0].max) for p in (2, 4, 8)] == [(15, 63), (3, 15), (1, 3)]
    assert all(picture.value[:4] == b"\x89PNG" for _, _, picture in pages.values())  # every page drawn up front
    assert "Patch 3 is row 0, column 3" in pages[4][1].value and "4×4 grid" in pages[4][1].value
    assert "Patch 1 is row 0, column 1" in pages[8][1].value  # the 8-pixel patch holding the same pixel
    assert isinstance(box.link, widgets.widget_link.Link)  # the page follows the slider in the browser alone
    assert (box.link.source, box.link.target) == ((size, "index"), (stack, "selected_index"))

    before = bytes(pages[2][2].value)
    size.value = 2  # patch 3's centre pixel (2, 14) is in 2-pixel patch 15, as drawn up front
    assert stack.selected_index == 0 and pages[2][0].value == 15 and bytes(pages[2][2].value) == before
    pages[2][0].value = 63  # choose the last patch
    assert "Patch 63 is row 7, column 7" in pages[2][1].value and bytes(pages[2][2].value) != before
    size.value = 8  # its centre pixel (15, 15) is in 8-pixel patch 3
    assert pages[8][0].value == 3 and "Patch 3 is row 1, column 1" in pages[8][1].value
    size.value = 4
    assert pages[4][0].value == 15 and "Patch 15 is row 3, column 3" in pages[4][1].value


def test_patch_explorer_rejects_bad_input():
    with pytest.raises(ValueError, match="image is 12×12 pixels, not divisible by the patch size 8"):
        viz.patch_explorer(np.zeros((12, 12)), [4, 8])
    with pytest.raises(ValueError, match=r"default_patch_size 3 is not one of patch_sizes \[2, 4\]"):
        viz.patch_explorer(np.zeros((8, 8)), [2, 4], default_patch_size=3)
    with pytest.raises(ValueError, match="one or more distinct sizes"):
        viz.patch_explorer(np.zeros((8, 8)), [2, 2])
    with pytest.raises(ValueError, match=r"patch must be an index in \[0, 4\) for the 2×2 grid"):
        viz.patch_explorer(np.zeros((8, 8)), [4], patch=4)


def test_attention_on_images_draws_each_map_over_its_image():
    images = np.zeros((2, 8, 8))
    images[:, 2:6, 3:5] = 1.0  # a bar in each image
    maps = np.arange(2 * 3 * 4 * 4, dtype=float).reshape(2, 3, 4, 4)  # 3 maps over a 4×4 grid per image
    fig = viz.attention_on_images(images, maps, ["a", "b"], ["head 0", "head 1", "rollout"], title="t")
    axes = np.array(fig.axes).reshape(2, 4)
    assert [ax.get_title() for ax in axes[0]] == ["image", "head 0", "head 1", "rollout"]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["a", "b"]
    np.testing.assert_array_equal(axes[1, 0].images[0].get_array(), images[1])
    shown = axes[1, 3].images[0].get_array()  # image 1, map 2: each patch's weight over its 2×2 pixels, max 1
    expected = maps[1, 2] / maps[1, 2].max()
    assert shown.shape == (8, 8)
    np.testing.assert_allclose(shown[::2, ::2], expected)
    np.testing.assert_allclose(shown[1::2, 1::2], expected)
    assert axes[1, 3].collections  # the image's outline drawn over the map
    rgb = viz.attention_on_images(np.random.default_rng(0).uniform(0, 1, (1, 3, 8, 8)), np.ones((1, 2, 2)))
    assert len(rgb.axes) == 2 and len(rgb.axes[1].images) == 2  # a colour image: faded image + map


def test_attention_on_images_rejects_bad_input():
    with pytest.raises(ValueError, match=r"maps must have shape \(n, K, G_h, G_w\) with n=2 images, "
                                         r"got \(3, 1, 4, 4\)"):
        viz.attention_on_images(np.zeros((2, 8, 8)), np.zeros((3, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"a 3×3 map does not tile a 8×8 image"):
        viz.attention_on_images(np.zeros((2, 8, 8)), np.zeros((2, 1, 3, 3)))
    with pytest.raises(ValueError, match=r"col_titles has 1 labels but there are 2 maps"):
        viz.attention_on_images(np.zeros((1, 8, 8)), np.zeros((1, 2, 4, 4)), col_titles=["x"])


# ---------------------------------------------------------------------------------------- attention

def softmax_maps(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(2 * torch.randn(*shape, generator=g), dim=-1)


def heatmap_axes(fig):
    return [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]


def test_attention_grid_draws_one_heatmap_per_head_with_a_shared_colour_bar():
    attn = softmax_maps(6, 3, 5).requires_grad_()
    fig = viz.attention_grid(attn, ["a", "b", "c"], list("vwxyz"), title="cross-attention")
    maps = heatmap_axes(fig)
    assert len(maps) == 6 and len(fig.axes) == 7  # six heads and one colour bar, no empty panels
    for h, ax in enumerate(maps):
        assert np.allclose(ax.images[0].get_array(), attn[h].detach().numpy())
        assert ax.images[0].get_clim() == (0.0, 1.0)
        assert ax.get_title() == f"head {h}"
    assert [t.get_text() for t in maps[0].get_yticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in maps[3].get_xticklabels()] == list("vwxyz")
    assert maps[0].get_ylabel() == "query" and maps[3].get_xlabel() == "key"
    assert maps[0].yaxis.get_major_ticks()[0].label1.get_visible()  # labels on the outer maps only
    assert not maps[1].yaxis.get_major_ticks()[0].label1.get_visible()
    assert not maps[0].xaxis.get_major_ticks()[0].label1.get_visible()
    assert fig._suptitle.get_text() == "cross-attention"
    assert maps[1].get_position().x0 > maps[0].get_position().x0  # 6 heads: 2 rows of 3
    assert maps[3].get_position().y0 < maps[0].get_position().y0
    assert len({round(a.get_position().x0, 3) for a in maps}) == 3


def test_attention_grid_takes_one_map_titles_an_axes_and_thins_long_labels():
    fig = viz.attention_grid(np.eye(4), titles=["alignment"], vmax=None)
    (ax,) = heatmap_axes(fig)
    assert ax.get_title() == "alignment" and ax.images[0].get_array().shape == (4, 4)
    _, ax = plt.subplots()
    assert viz.attention_grid(np.eye(3), ax=ax) is ax.figure and len(ax.images) == 1

    words = [f"word{i}" for i in range(40)]
    fig = viz.attention_grid(softmax_maps(4, 40, 40), words, words)
    ax = heatmap_axes(fig)[0]
    shown = [t.get_text() for t in ax.get_yticklabels()]
    assert 2 <= len(shown) < 40 and shown[0] == "word0"  # thinned to what fits in the panel
    assert 2 <= len(heatmap_axes(fig)[2].get_xticklabels()) < 40
    height = fig.get_size_inches()[1] * 72 / len(shown)  # points per label along the panel's height
    assert height > 8  # more than the 8-point font: no overlap
    fig = viz.attention_grid(softmax_maps(30, 30), words[:30], words[:30])  # one map: every label fits
    assert len(heatmap_axes(fig)[0].get_xticklabels()) == 30 and fig.get_figwidth() <= viz.figures.PAGE_WIDTH
    assert heatmap_axes(fig)[0].get_xticklabels()[0].get_rotation() == 90
    fig = viz.attention_grid(softmax_maps(4, 19, 19), list("to be, or not to be"), list("to be, or not to be"))
    assert len(heatmap_axes(fig)[2].get_xticklabels()) == 19  # 4 heads of 19 characters: 2 per row, every label
    assert fig.get_figwidth() <= viz.figures.PAGE_WIDTH and len({round(a.get_position().x0, 3) for a in heatmap_axes(fig)}) == 2
    fig = viz.attention_grid(softmax_maps(40, 40), words, words)  # too wide for the page: a label every k
    assert 2 <= len(heatmap_axes(fig)[0].get_xticklabels()) < 40 and fig.get_figwidth() <= viz.figures.PAGE_WIDTH
    fig = viz.attention_grid(np.ones((3, 4)) / 4, list("ab␣"), ["x", "y", "␣", "<eos>"])  # characters across, <eos> turned
    assert [t.get_rotation() for t in heatmap_axes(fig)[0].get_xticklabels()] == [0, 0, 0, 90]


def test_attention_grid_rejects_bad_input():
    with pytest.raises(ValueError, match=r"shape \(H, T, S\) or \(T, S\), got \(2, 3, 4, 5\); pick one layer"):
        viz.attention_grid(torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"got \(5,\)"):
        viz.attention_grid(np.zeros(5))
    with pytest.raises(ValueError, match=r"query_labels has 2 labels but there are 3 query rows"):
        viz.attention_grid(np.zeros((2, 3, 4)), query_labels=["a", "b"])
    with pytest.raises(ValueError, match=r"key_labels has 3 labels but there are 4 key columns"):
        viz.attention_grid(np.zeros((2, 3, 4)), key_labels="abc")
    with pytest.raises(ValueError, match="titles has 1 entries but attn has 2 heads"):
        viz.attention_grid(np.zeros((2, 3, 4)), titles=["x"])
    with pytest.raises(ValueError, match="ax= takes one map but attn has 2 heads"):
        viz.attention_grid(np.zeros((2, 3, 4)), ax=plt.subplots()[1])
    with pytest.raises(ValueError, match="empty"):
        viz.attention_grid(np.zeros((2, 0, 4)))
    with pytest.raises(ValueError, match="ncols"):
        viz.attention_grid(np.zeros((2, 3, 4)), ncols=0)


def transformer_view(L: int, H: int, T: int, S: int, seed: int = 0):
    src, tgt = [f"s{i}" for i in range(S)], [f"t{i}" for i in range(T)]
    return {"encoder self-attention": (softmax_maps(L, H, S, S, seed=seed), src, src),
            "cross-attention": (softmax_maps(L, H, T, S, seed=seed + 1), tgt, src)}


def test_attention_explorer_from_a_mapping_switches_example_kind_layer_and_head_in_the_browser():
    maps = {"long": transformer_view(2, 4, 5, 6), "short": transformer_view(1, 2, 3, 4, seed=5)}
    box = viz.attention_explorer(maps, title="toy")
    c = controls_of(box)
    example, kind, layer, head = c["example"], c["attention"], c["layer"], c["head"]
    assert "or type" not in c  # a mapping has no free text
    assert example.value == "long" and example.options == ("long", "short")
    assert kind.options == ("encoder self-attention", "cross-attention") and kind.layout.display is None
    assert layer.max == 1 and layer.layout.display is None
    assert head.options == ("all heads", "mean over heads", "head 0", "head 1", "head 2", "head 3")
    caption, picture = on_the_page(box)
    assert picture[:4] == b"\x89PNG" and "(2, 4, 6, 6)" in caption and "layer 0 of 2" in caption
    seen = {picture}
    for control, value, expect in [(kind, "cross-attention", "(2, 4, 5, 6)"), (layer, 1, "layer 1 of 2"),
                                   (head, "head 3", "head 3"), (head, "mean over heads", "mean over 4 heads")]:
        control.value = value
        caption, picture = on_the_page(box)
        assert expect in caption and picture not in seen, (value, caption)
        seen.add(picture)
    head.value = "head 3"
    example.value = "short"  # 1 layer, 2 heads: its last layer and head are shown
    caption, picture = on_the_page(box)
    assert "<b>short</b>" in caption and "(1, 2, 3, 4)" in caption and "head 1" in caption and picture not in seen

    box = viz.attention_explorer(maps, default="short", max_examples=1)
    assert controls_of(box)["example"].options == ("short",) and "(1, 2, 4, 4)" in text_of(box)
    assert controls_of(box)["head"].options == ("all heads", "mean over heads", "head 0", "head 1")


def test_attention_explorer_with_a_compute_function_takes_typed_inputs_and_shows_errors():
    calls = []

    def compute(text):
        calls.append(text)
        if "#" in text:
            raise KeyError(f"unknown character '#' in {text!r}")
        chars = list(text)
        return {"additive": (softmax_maps(len(chars), len(chars), seed=len(chars)), chars, chars)}

    box = viz.attention_explorer(compute, examples=["abc", "hello", "x", "y", "z"], max_examples=2)
    c = controls_of(box)
    assert calls == ["abc", "hello"] and c["example"].options == ("abc", "hello")  # the first max_examples
    assert all(c[name].layout.display == "none" for name in ("attention", "layer", "head"))
    caption, first = on_the_page(box)
    assert "(1, 1, 3, 3)" in caption
    c["example"].value = "hello"
    assert "(1, 1, 5, 5)" in on_the_page(box)[0] and on_the_page(box)[1] != first
    c["or type"].value = "a new line"  # typed by the reader, with a kernel
    assert calls[-1] == "a new line" and c["example"].value == "a new line" and "(1, 1, 10, 10)" in text_of(box)
    shown = on_the_page(box)[-1]
    c["or type"].value = "a#b"
    assert "cannot show" in text_of(box) and "unknown character &#x27;#&#x27;" in text_of(box)
    assert on_the_page(box)[-1] == shown  # the last good picture stays

    box = viz.attention_explorer(compute, default="xy", examples=["abc"])
    assert controls_of(box)["example"].options == ("xy", "abc")
    with pytest.raises(ValueError, match="needs default="):
        viz.attention_explorer(compute)
    with pytest.raises(ValueError, match="max_examples"):
        viz.attention_explorer(compute, default="xy", max_examples=0)


def test_attention_explorer_accepts_three_shapes_and_a_list_of_layers():
    labels = list("abc")
    views = {"2-D": {"dot": (np.eye(3), labels, labels)},
             "3-D": {"dot": (softmax_maps(2, 3, 3), labels, labels)},
             "layers": {"dot": ([softmax_maps(2, 3, 3), softmax_maps(2, 3, 3, seed=1)], labels, labels)}}
    box = viz.attention_explorer(views)
    c = controls_of(box)
    assert "(1, 1, 3, 3)" in text_of(box)
    c["example"].value = "3-D"
    assert "(1, 2, 3, 3)" in text_of(box) and c["head"].layout.display is None
    c["example"].value = "layers"
    assert "(2, 2, 3, 3)" in text_of(box) and c["layer"].layout.display is None


def test_attention_explorer_rejects_bad_views():
    labels = list("abc")
    with pytest.raises(ValueError, match=r"maps\['x'\]\['self'\] attn must have shape \(L, H, T, S\), \(H, T, S\) or "
                                         r"\(T, S\) and not be empty, got \(1, 1, 1, 3, 3\); for a batch"):
        viz.attention_explorer({"x": {"self": (np.zeros((1, 1, 1, 3, 3)), labels, labels)}})
    with pytest.raises(ValueError, match=r"maps\['x'\]\['self'\] query_labels has 2 labels but there are 3 query rows"):
        viz.attention_explorer({"x": {"self": (np.zeros((3, 4)), ["a", "b"], None)}})
    with pytest.raises(ValueError, match=r"key_labels has 3 labels but there are 4 key columns"):
        viz.attention_explorer({"x": {"self": (np.zeros((3, 4)), None, labels)}})
    with pytest.raises(ValueError, match=r"must be a triple \(attn, query_labels, key_labels\)"):
        viz.attention_explorer({"x": {"self": np.zeros((3, 3))}})
    with pytest.raises(ValueError, match="non-empty dict"):
        viz.attention_explorer({"x": {}})
    with pytest.raises(ValueError, match="maps is empty"):
        viz.attention_explorer({})
    with pytest.raises(ValueError, match=r"different shapes"):
        viz.attention_explorer({"x": {"self": ([np.zeros((2, 3, 3)), np.zeros((1, 3, 3))], None, None)}})
    with pytest.raises(ValueError, match=r"default 'y' is not in maps; maps has \['x'\]"):
        viz.attention_explorer({"x": {"self": (np.eye(3), None, None)}}, default="y")
    with pytest.raises(ValueError, match=r"examples \['y'\] are not in maps"):
        viz.attention_explorer({"x": {"self": (np.eye(3), None, None)}}, examples=["y"])
    with pytest.raises(TypeError, match="maps must be a dict"):
        viz.attention_explorer(np.eye(3))
    with pytest.raises(ValueError, match=r"compute\('abc'\)\['self'\] query_labels"):  # the first view is checked
        viz.attention_explorer(lambda t: {"self": (np.eye(len(t)), ["x"], None)}, default="abc")


# ---------------------------------------------------------------------------------------- image-text similarity



def toy_images(n: int, seed: int = 0) -> torch.Tensor:
    """n distinct 6×6 RGB uint8 images, channels first."""
    return torch.randint(0, 256, (n, 3, 6, 6), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_similarity_matrix_draws_a_thumbnail_per_row_captions_and_the_best_caption():
    sim = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.2, 0.8]])
    images = toy_images(2)
    ax = viz.similarity_matrix(sim, images, ["a red circle", "a blue square", "a very long caption " * 3],
                               mark_best=True, max_chars=20, title="toy")
    matrix, *thumbs = ax.images
    np.testing.assert_allclose(matrix.get_array(), sim.numpy(), rtol=1e-6)
    assert len(thumbs) == 2
    np.testing.assert_allclose(thumbs[1].get_array(), images[1].permute(1, 2, 0).numpy() / 255)
    assert thumbs[1].get_extent() == [-1.45, -0.55, 1.45, 0.55]  # left of row 1, inside its cell
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[:2] == ["a red circle", "a blue square"] and labels[2] == "a very long caption…"
    corners = sorted(p.get_xy() for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle))
    assert corners == [(-0.5, -0.5), (1.5, 0.5)]  # row 0 picks caption 0, row 1 caption 2
    assert ax.get_xlim() == (-1.5, 2.5) and ax.get_ylim() == (1.5, -0.5) and ax.get_title() == "toy"


def test_similarity_matrix_reads_channels_last_grey_and_float_images():
    hwc = np.random.default_rng(0).uniform(-3, 5, (2, 5, 5, 3))  # floats outside [0, 1]: stretched per image
    ax = viz.similarity_matrix(np.eye(2), hwc, ["a", "b"])
    thumb = ax.images[1].get_array()
    assert thumb.shape == (5, 5, 3) and thumb.min() == 0.0 and thumb.max() == 1.0
    ax = viz.similarity_matrix(np.eye(2), np.full((2, 4, 4), 0.5), ["a", "b"])  # grey, already in [0, 1]
    np.testing.assert_allclose(ax.images[2].get_array(), np.full((4, 4, 3), 0.5))


def test_similarity_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match=r"shape \(2, 3\) but there are 2 images and 2 captions"):
        viz.similarity_matrix(np.zeros((2, 3)), toy_images(2), ["a", "b"])
    with pytest.raises(ValueError, match=r"similarity must be a non-empty \(N_images, N_captions\) matrix"):
        viz.similarity_matrix(np.zeros(3), toy_images(3), ["a"])
    with pytest.raises(ValueError, match=r"images must be a batch of images"):
        viz.similarity_matrix(np.zeros((2, 2)), np.zeros((2, 5, 5, 4)), ["a", "b"])


def ranked_images(box) -> list[int]:
    """The images a static page shows for the chosen caption, best first, read from "#i: similarity"."""
    return [int(m) for m in re.findall(r"<div style='text-align:center'>#(\d+):", text_of(box))]


def test_similarity_explorer_ranks_images_for_a_caption_and_captions_for_an_image():
    E = 4
    image_features = torch.eye(E)[[0, 1, 2, 3, 0]] * torch.tensor([[1.0], [2.0], [3.0], [1.0], [0.5]])  # any length
    captions = ["zero", "one", "two", "three"]
    text_features = torch.eye(E) + 0.1 * torch.ones(E, E)  # caption k closest to images with feature k
    calls = []

    def encode_text(text):
        calls.append(text)
        if "?" in text:
            raise ValueError("no question marks")
        return text_features[captions.index(text)] if text in captions else torch.tensor([0.0, 0.0, 1.0, 1.0])

    box = viz.similarity_explorer(toy_images(5), captions, image_features, text_features, encode_text=encode_text,
                                  default_caption="one", default_image=4, top=3, grid=3)
    c = controls_of(box)
    shown = on_the_page(box)
    assert shown[0][:4] == b"\x89PNG" and calls == []  # the given captions use their given features
    assert c["caption"].options == ("one", "zero", "two", "three")
    assert len(ranked_images(box)) == 3 and ranked_images(box)[0] == 1  # image 1 is the one most like "one"
    ranking = [v for v in shown if isinstance(v, str) and "image #" in v][0]
    assert "image #4" in ranking and ranking.index("zero") < ranking.index("one")  # image 4 is image 0's direction
    c["caption"].value = "three"
    assert ranked_images(box)[0] == 3
    c["image"].value = 2
    assert "image #2" in text_of(box) and "image #4" not in text_of(box)
    c["or type"].value = "something new"  # typed, with a kernel: embedded by encode_text
    assert calls[-1] == "something new" and "“something new”" in text_of(box)
    assert set(ranked_images(box)[:2]) == {2, 3}
    c["or type"].value = "why?"
    assert "cannot show" in text_of(box) and "no question marks" in text_of(box)


def test_similarity_explorer_without_an_encoder_offers_only_its_captions():
    box = viz.similarity_explorer(toy_images(3), ["a", "b"], torch.randn(3, 2), torch.randn(2, 2), top=10)
    c = controls_of(box)
    assert "or type" not in c and c["caption"].options == ("a", "b")
    assert len(ranked_images(box)) == 3  # top is capped at N_images
    assert [v for v in on_the_page(box) if isinstance(v, str) and "image #0" in v][0].count("<tr>") == 2  # and N_captions
    with pytest.raises(ValueError, match="not one of the captions"):
        viz.similarity_explorer(toy_images(3), ["a", "b"], torch.randn(3, 2), torch.randn(2, 2), default_caption="c")


def test_similarity_explorer_rejects_mismatched_features():
    with pytest.raises(ValueError, match=r"one feature row per image and per caption"):
        viz.similarity_explorer(toy_images(3), ["a", "b"], torch.randn(2, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"same width E"):
        viz.similarity_explorer(toy_images(3), ["a", "b"], torch.randn(3, 4), torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"default_image must be an index in \[0, 3\)"):
        viz.similarity_explorer(toy_images(3), ["a", "b"], torch.randn(3, 4), torch.randn(2, 4), default_image=3)
    with pytest.raises(ValueError, match=r"top must be a positive int"):
        viz.similarity_explorer(toy_images(3), ["a", "b"], torch.randn(3, 4), torch.randn(2, 4), top=0)


# ---------------------------------------------------------------------------------------- accessibility

def _images_in(box):
    """Every ipywidgets.Image in an explorer, on every page of its stacks (shown or not)."""
    import ipywidgets as widgets

    found = []

    def walk(w):  # depth first, in the order the pages are shown
        if isinstance(w, widgets.Image):
            found.append(w)
        for child in getattr(w, "children", ()):
            walk(child)

    walk(box)
    return list(dict.fromkeys(found))


def _check_alt(images, *must):
    """Every picture has a tooltip (the website's alt text) that is a sentence, not a file name, and the pictures
    of different views say different things; `must` are words every one of them says."""
    assert images
    alts = [img.tooltip for img in images]
    for alt in alts:
        assert alt and len(alt) > 30 and not re.search(r"\.(png|jpe?g|svg)\b|_images/|/", alt), alt
        for word in must:
            assert word in alt, (word, alt)
    return alts


def test_every_explorer_picture_says_what_it_shows():
    box = viz.word_explorer({"toy": lambda w: {"king": [("queen", 0.9)], "queen": [("king", 0.9)]}[w]},
                            np.array([[0.0, 0.0], [1.0, 1.0]]), ["king", "queen"], default="king",
                            examples=["queen", "zebra"], title="toy map")
    alts = _check_alt(_images_in(box), "toy map", "2 words")
    assert "“king” is highlighted; so are its nearest neighbours by toy that are on it: queen." in alts[0]
    assert any("“zebra” is not on the map" in a for a in alts) and len(set(alts)) == 3

    box = viz.gate_viewer(lambda t: {"forget": torch.zeros(len(t), 3), "cell": torch.ones(len(t), 3)}, "to be",
                          examples=["or not"])
    alts = _check_alt(_images_in(box), "2 heatmaps (forget, cell)", "3 units as rows")
    assert {"“to be”" in a and "6 characters" not in a and "5 characters" in a for a in alts} == {True, False}

    maps = {"long": transformer_view(2, 4, 5, 6), "short": transformer_view(1, 2, 3, 4, seed=5)}
    alts = _check_alt(_images_in(viz.attention_explorer(maps, title="toy")), "toy (", "queries as rows")
    assert any("(cross-attention, layer 1) for “long”: one heatmap, head 3, with the 5 queries as rows and the 6 keys"
               in a for a in alts), alts
    assert any("one heatmap per head, 4 heads" in a for a in alts) and any("mean over 2 heads" in a for a in alts)
    assert len(set(alts)) == len(alts)  # one picture per view, each described as itself

    box = viz.patch_explorer(np.random.default_rng(1).uniform(0, 1, (16, 16, 3)), [8, 4], patch=3)  # at 8 px
    size, stack, pages = patch_explorer_parts(box)
    alts = _check_alt([pages[4][2], pages[8][2]], "patches")
    assert "4×4 grid of 4×4-pixel patches, patch 15 (row 3, column 3) outlined" in alts[0] and "(16 rows)" in alts[0]
    assert "2×2 grid of 8×8-pixel patches, patch 3 (row 1, column 1)" in alts[1] and "(4 rows)" in alts[1]
    pages[4][0].value = 1  # a redrawn picture is described anew
    assert "patch 1 (row 0, column 1)" in pages[4][2].tooltip

    box = viz.similarity_explorer(toy_images(5), ["zero", "one", "two", "three"], torch.eye(4)[[0, 1, 2, 3, 0]],
                                  torch.eye(4), grid=3)
    alts = _check_alt(_images_in(box), "image")
    assert any("first 3 images as rows" in a and "first 3 captions as columns" in a for a in alts)
    assert {a for a in alts if a.startswith("image #")} == {
        f"image #{i} of the 5; the caption it scores highest: “{c}”" for i, c in enumerate(["zero", "one", "two", "three", "zero"])}

    rng = np.random.default_rng(0)
    views = [[dict(question="what is on the left ?", answer=["red", "circle"], attention=rng.uniform(0, 1, (2, 4, 4)))],
             [dict(question="how many ?", answer=[], attention=rng.uniform(0, 1, (1, 4, 4)))]]
    alts = _check_alt(_images_in(viz.answer_explorer(rng.uniform(0, 1, (2, 8, 8, 3)), views, ["left", "right"])),
                      "4×4 patch grid")
    assert alts[0].startswith("left, asked “what is on the left ?”, answered “red circle”") and "each of the 2" in alts[0]
    assert "answered “(nothing)”" in alts[1] and "each of the 1" in alts[1]

    w = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    box = viz.compression_explorer(w, {(8, "row"): dict(weights=w + 0.01, val_loss=2.1, bytes=0.25, sample="s")},
                                   {0.5: dict(weights=w * (w.abs() > 0.5), val_loss=2.5, bytes=1.0, sample="p")},
                                   {"val_loss": 2.0, "sample": "ref"}, default_bits=8, matrix_name="mlp.c_fc")
    alts = _check_alt(_images_in(box), "mlp.c_fc", "error w − ŵ")
    assert any(a.startswith("int8, scale per row:") and "max |error| 0.0100" in a for a in alts)
    assert any(a.startswith("50% of weights pruned:") for a in alts)


def test_an_explorer_picture_without_an_alt_text_is_refused():
    from utils.viz.explorers import _picture

    png = viz.figure_to_png(plt.figure())
    for alt in (None, "", "   "):
        with pytest.raises(ValueError, match="alt text"):
            _picture(png, alt=alt)
    assert _picture(png, alt="a blank figure").tooltip == "a blank figure"


# Machado, Oliveira and Fernandes (2009), "A physiologically-based model for simulation of color vision
# deficiency", severity 1.0: what a reader with protanopia, deuteranopia or tritanopia sees, in linear RGB.
CVD = {"protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
       "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]],
       "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]]}


def _lab(rgb):
    """CIELAB (D65) of sRGB values in [0, 1]."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = lin @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _closest_pair_as_seen(colours, deficiency):
    """The smallest colour difference (CIE76 ΔE) between two of `colours` as a reader with `deficiency` sees them."""
    seen = []
    for c in colours:
        rgb = np.array(mcolors.to_rgb(c))
        lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
        out = np.clip(np.array(CVD[deficiency]) @ lin, 0, 1)
        seen.append(_lab(np.where(out <= 0.0031308, 12.92 * out, 1.055 * out ** (1 / 2.4) - 0.055)))
    return min(np.linalg.norm(a - b) for i, a in enumerate(seen) for b in seen[i + 1:])


def test_the_book_colours_stay_apart_for_colour_blind_readers():
    cycle = viz.STYLE["axes.prop_cycle"].by_key()["color"]
    assert len(cycle) >= 6
    tab10 = plt.get_cmap("tab10").colors[:4]  # matplotlib's default: its green meets its red and its orange
    assert _closest_pair_as_seen(tab10, "deuteranopia") < 10 and _closest_pair_as_seen(tab10, "protanopia") < 10
    for deficiency in CVD:
        assert _closest_pair_as_seen(cycle, deficiency) > 15, deficiency
        assert _closest_pair_as_seen([viz.BASE, viz.HIGHLIGHT], deficiency) > 50, deficiency
    with viz.style():
        assert plt.rcParams["axes.prop_cycle"].by_key()["color"] == cycle


def test_runs_on_one_plot_differ_by_marker_as_well_as_colour():
    runs = {"a": make_history(30), "b": make_history(30), "c": [3.0, 2.0, 1.0]}
    ax = viz.loss_curves(runs)
    train = [line for line in ax.lines if "(val_loss)" not in line.get_label()]
    assert len({line.get_marker() for line in train}) == 3 and len({line.get_color() for line in train}) == 3
    assert ax.lines[0].get_marker() == ax.lines[1].get_marker()  # a run's train and eval lines share its marker
    assert ax.lines[0].get_markevery() == 2  # about a dozen markers on a line, not one per step
    solo = viz.loss_curves({"a": make_history(30)})
    assert solo.lines[0].get_marker() in (None, "None", "")  # one run: nothing to tell apart
    lengths = np.array([5] * 10 + [10] * 10)
    ax = viz.accuracy_by_length({"x": (lengths, np.ones(20)), "y": (lengths, np.zeros(20))})
    assert ax.lines[0].get_marker() != ax.lines[1].get_marker()


def test_explorer_pictures_carry_a_description_so_their_tooltip_draws():
    """ipywidgets' front end (8.1: JupyterLab, Colab, the website) reads `description.length` when a widget
    has a tooltip; an Image has no description, and its view then fails to draw (an error icon instead of the
    picture). The explorers' pictures sync an empty one, and so must every stored picture with a tooltip."""
    import json

    from scripts.setup_cell import chapter_paths
    from utils.viz.explorers import image_widget

    picture = image_widget(value=b"", format="png", tooltip="a picture")
    state = picture.get_state()
    assert state["_model_name"] == "ImageModel" and state["description"] == "" and state["tooltip"] == "a picture"
    broken = []
    for path in chapter_paths():
        widgets = json.loads(path.read_text())["metadata"].get("widgets", {})
        for model_id, model in widgets.get("application/vnd.jupyter.widget-state+json", {}).get("state", {}).items():
            s = model["state"]
            if s.get("_model_name") == "ImageModel" and s.get("tooltip") and "description" not in s:
                broken.append(f"{path.name}: {model_id}")
    assert not broken, f"stored Image widgets with a tooltip but no description (they fail to draw): {broken[:5]}"
