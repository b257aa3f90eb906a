"""The notation page is the law: every shape letter the code's comments use is on it, and the letters it
reserves are not used for something else where the readings found them misused.

Shape letters are read from the comments of the chapters' code cells and of `utils/` (a parenthesised,
comma-separated tuple whose every entry holds a capital letter, such as `# (B, T, C)` or `(N_i, N_t)`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from scripts.setup_cell import ROOT, chapter_paths

PAGE = ROOT / "book" / "notation.md"
# A shape letter: one capital, optionally a digit, a lower-case letter or a subscript (T0, Dv, B_i, C_in).
LETTER = re.compile(r"(?<![\w.])([A-Z](?:_[a-z]+|[a-z]|\d)?)(?![\w])")


def listed_letters(page: str) -> set[str]:
    """Every letter the page defines: the first column of its tables and the code-font letters in them."""
    rows = re.findall(r"^\| `([A-Z][\w]*)`(?:, `([A-Z][\w]*)`)?", page, re.M)
    named = re.findall(r"`([A-Z](?:_[a-z]+|[a-z]|\d)?)`", page)
    return {x for row in rows for x in row if x} | set(named)


def shape_tuples(source: str):
    """(line, tuple text, letters) for every shape tuple in the comments of `source`."""
    for line in source.splitlines():
        if "#" not in line:
            continue
        comment = line[line.index("#"):]
        for m in re.finditer(r"\(([^()]*)\)", comment):
            entries = [e.strip() for e in m[1].split(",")]
            letters = [LETTER.findall(e) for e in entries]
            if len(entries) >= 2 and all(letters) and all(len(re.findall(r"[A-Za-z]{4,}", e)) == 0 for e in entries):
                yield line.strip(), m[0], [x for xs in letters for x in xs]


def _cells(kind: str) -> list[tuple[str, str]]:
    """(where, source) of every chapter cell of `kind` ("code" or "markdown")."""
    out = []
    for path in chapter_paths():
        nb = json.loads(path.read_text())
        out += [(f"{path.stem} cell {k}", "".join(c["source"])) for k, c in enumerate(nb["cells"])
                if c["cell_type"] == kind]
    return out


def _sources() -> list[tuple[str, str]]:
    return _cells("code") + [(str(p.relative_to(ROOT)), p.read_text()) for p in sorted((ROOT / "utils").rglob("*.py"))]


def unlisted(sources, letters: set[str]) -> list[str]:
    return [f"{where}: {letter} in {tup}" for where, src in sources for _, tup, found in shape_tuples(src)
            for letter in found if letter not in letters]


def misused(sources) -> list[str]:
    """The misuses the readings found, as patterns: an image's sides written H, W (H is the number of heads,
    W of windows), and the head width written d in a formula (the page writes D)."""
    bad = []
    for where, src in sources:
        for _, tup, found in shape_tuples(src):
            if found[-2:] == ["H", "W"]:
                bad.append(f"{where}: {tup} (an image's sides are height, width: H is heads)")
        for line in src.splitlines():
            if re.search(r"\bB, C(?:_in)?, H, W\b", line):
                bad.append(f"{where}: {line.strip()[:80]} (an image's sides are height, width)")
    return bad


def _markdown() -> list[tuple[str, str]]:
    return _cells("markdown")


def sqrt_d(markdown) -> list[str]:
    return [f"{where}: {m[0]}" for where, text in markdown
            for m in re.finditer(r"√d\b|\\sqrt\{d(?:_k)?\}|\\sqrt\s*d\b", text)]


def test_every_shape_letter_in_use_is_on_the_notation_page():
    letters = listed_letters(PAGE.read_text())
    assert {"B", "T", "C", "H", "D", "N", "B_i", "C_in", "T0"} <= letters, sorted(letters)
    missing = unlisted(_sources(), letters)
    assert not missing, f"shape letters the notation page does not list: {missing}"


def test_reserved_letters_are_not_used_for_something_else():
    assert not misused(_sources()), misused(_sources())
    found = sqrt_d(_markdown())
    assert not found, f"the head width is D on the notation page and in the code, not d: {found}"


@pytest.mark.parametrize("planted, check", [
    ("x = images  # (B, C, H, W)", "misused"),
    ("B, C, H, W = images.shape", "misused"),
    ("y = f(x)  # (B, Z, C)", "unlisted"),
    ("softmax(QK^T/√d)", "sqrt"),
    ("$\\sqrt{d}$", "sqrt"),
])
def test_the_check_catches_what_the_readings_found(planted, check):
    letters = listed_letters(PAGE.read_text())
    source = [("planted", planted)]
    if check == "misused":
        assert misused(source)
    elif check == "unlisted":
        assert unlisted(source, letters) == ["planted: Z in (B, Z, C)"]
    else:
        assert sqrt_d(source)
    fine = [("fine", "x = images  # (B, C_in, height, width)\n$\\sqrt{D}$ and √D")]
    assert not misused(fine) and not sqrt_d(fine) and not unlisted(fine, letters)
