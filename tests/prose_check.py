"""The check itself, importable by the test and by authors: `python -m tests.prose_check chapters/X.ipynb`."""
from __future__ import annotations

import json
import re
import sys
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Decimals, percentages, integers with thousands separators: checked whatever they say.
NUMBER = re.compile(r"(?<![\w.$\\{,])(\d{1,3}(?:,\d{3})+(?![\d.])|\d+\.\d+%?|\d+%)")
# Any number followed by a unit or a sign of a measurement: checked whatever its size ("23 ms", "4x", "500 steps").
# A × followed by a number is a size (224×224, 3 × 3), not a ratio, and is left alone.
UNIT = re.compile(r"(?<![\w.$\\{,/^])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)[  ]?"
                  r"(ms|µs|s|seconds?|minutes?|×(?![  ]?\d)|x(?![\w  ]?\d)|steps|words/s|tokens/s|MB|GB|kB|KB|"
                  r"nats|GFLOP/s)(?![\w/])")
HEADING = re.compile(r"^#{1,6} ", re.M)
SOURCE = re.compile(r"((?:benchmarks|scripts)/[\w/]+\.py)")


def sections(cells: list[dict]) -> list[list[int]]:
    """Cell indices grouped by heading: a markdown cell holding a heading starts a new section."""
    out: list[list[int]] = []
    for k, cell in enumerate(cells):
        if not out or (cell["cell_type"] == "markdown" and HEADING.search("".join(cell["source"]))):
            out.append([])
        out[-1].append(k)
    return out


def printed(cells: list[dict], indices: list[int]) -> str:
    return "".join("".join(o.get("text", "")) + json.dumps(o.get("data", {}).get("text/plain", ""))
                   for k in indices if cells[k]["cell_type"] == "code" for o in cells[k].get("outputs", []))


def appears(number: str, text: str) -> bool:
    """`number` is in `text` as a number of its own (not inside 0.23 or 1234), with or without separators."""
    forms = {number, number.replace(",", ""), number.replace(",", "_")}
    return any(re.search(rf"(?<![\d.,_]){re.escape(f)}(?![\d_]|[.,]\d)", text) for f in forms)


def rounds_to(number: str, text: str) -> bool:
    """`text` holds `number`, or a number that rounds to it at its precision ("108,404" for "108,000",
    "0.553" for "0.55"): for figures quoted, rounded, from a benchmark's recorded results."""
    plain = number.rstrip("%").replace(",", "")
    if appears(plain, text):
        return True
    want = Decimal(plain)
    if "." in plain:
        step = Decimal(1).scaleb(-len(plain.split(".")[1]))
    else:
        step = Decimal(10) ** (len(plain) - len(plain.rstrip("0"))) if plain.strip("0") else Decimal(1)
    for m in re.finditer(r"(?<![\d.,])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)", text):
        have = Decimal(m[1].replace(",", ""))
        if step <= 1 or have >= 1000:  # a rounded large number is matched by large numbers only
            if abs(have - want) <= step / 2 and have != 0:
                return True
    return False


def stale_allowances(allowed: dict[str, str], root: Path = ROOT) -> list[str]:
    """Allow-list entries that name a benchmark or a script whose file does not hold the number."""
    bad = []
    for number, what in allowed.items():
        for source in SOURCE.findall(what):
            path = root / source
            if not path.is_file():
                bad.append(f"{number}: {source} does not exist")
            elif not rounds_to(number, path.read_text()):
                bad.append(f"{number}: not in {source}")
    return bad


def unbacked_numbers(nb: dict, allowed: dict[str, str]) -> list[str]:
    """Numbers in the markdown that neither an output of the same section prints, nor the allow-list
    explains, nor (for settings) the chapter's code holds. Exercises are left out (their solutions quote
    runs of their own); the first cell's runtime figures are checked by tests/test_book.py."""
    cells = nb["cells"]
    code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    missing, in_exercises = [], False
    for section in sections(cells):
        shown = printed(cells, section)
        for k in section:
            cell = cells[k]
            if cell["cell_type"] != "markdown":
                continue
            text = "".join(cell["source"])
            if re.search(r"^## Exercises", text, re.M):
                in_exercises = True
            if re.search(r"^## Summary", text, re.M):
                in_exercises = False
            if in_exercises or "exercise" in (cell.get("metadata", {}).get("tags") or []):
                continue
            found = [(m.start(), m[0], "") for m in NUMBER.finditer(text)]
            starts = {s for s, _, _ in found}
            found += [(m.start(), m[1], m[2]) for m in UNIT.finditer(text) if m.start() not in starts]
            for _, number, unit in sorted(found):
                if k == 0 and unit in ("s", "minutes", "minute", "seconds"):
                    continue  # "About 4 minutes (the last run took 276 s)": tests/test_book.py
                if number in allowed or f"{number} {unit}" in allowed or f"{number}{unit}" in allowed:
                    continue
                if appears(number, shown) or appears(number.rstrip("%"), shown):
                    continue
                setting = "," in number or unit == "steps"  # "1,800 steps" is the code's 1800
                if setting and appears(number.replace(",", ""), code):
                    continue
                missing.append(f"cell {k}: {number}{' ' + unit if unit else ''}")
    return missing


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_prose_numbers import NOT_OUTPUTS  # noqa: PLC0415
    status = 0
    for arg in argv:
        path = Path(arg)
        bad = unbacked_numbers(json.loads(path.read_text()), NOT_OUTPUTS.get(path.stem, {}))
        print(f"{path.stem}: {len(bad)}", *bad, sep="\n  ")
        status |= bool(bad)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
