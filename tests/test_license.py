"""The licence, the citation and the version: present, complete, and saying the same thing everywhere."""
from __future__ import annotations

import re

import yaml

from scripts.setup_cell import ROOT

LICENSE_PAGE = ROOT / "book" / "license.md"


def _version_in_changelog() -> str:
    match = re.search(r"^## (\d{4}\.\d{1,2}\.\d+) \((\d{4}-\d\d-\d\d)\)", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert match, "CHANGELOG.md: no '## YYYY.M.N (YYYY-MM-DD)' heading"
    return match[1]


def test_code_is_mit_and_text_is_cc_by_sa():
    mit = (ROOT / "LICENSE").read_text()
    assert mit.startswith("MIT License") and "Copyright (c) 2026 The From One-Hot to CLIP authors" in mit
    text = (ROOT / "LICENSE-text").read_text()
    assert text.startswith("Creative Commons Attribution-ShareAlike 4.0 International")
    for part in ("Section 1 – Definitions", "Section 3 – License Conditions", "Section 8 – Interpretation"):
        assert part in text, f"LICENSE-text lacks {part!r}: not the full legal code"
    readme = (ROOT / "README.md").read_text()
    assert "MIT" in readme and "CC BY-SA 4.0" in readme, "README.md does not state the licences"


def test_one_version_everywhere():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    for key in ("cff-version", "message", "title", "authors", "version", "date-released", "license"):
        assert key in cff, f"CITATION.cff lacks {key}"
    version = str(cff["version"])
    assert _version_in_changelog() == version, "CHANGELOG.md's newest version is not CITATION.cff's"
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert f"Version {version}." in config["html"]["extra_footer"], "the site's footer shows another version"
    assert cff["repository-code"] == config["repository"]["url"], "CITATION.cff and _config.yml name other repositories"
    page = LICENSE_PAGE.read_text()
    found = set(re.findall(r"\b(\d{4}\.\d{1,2}\.\d+)\b", page))
    assert found == {version}, f"book/license.md names versions {sorted(found)}, CITATION.cff {version}"


def test_the_licence_page_is_in_the_book_and_the_footer():
    assert "book/license" in (ROOT / "_toc.yml").read_text()
    footer = yaml.safe_load((ROOT / "_config.yml").read_text())["html"]["extra_footer"]
    assert "CC BY-SA 4.0" in footer and "MIT" in footer and "book/license.html" in footer


def test_every_downloaded_model_and_data_set_is_listed_with_its_licence():
    """A model the chapters load by name, a Hub namespace utils fetches from, or a data source added without
    a row on the licence page fails here."""
    page = LICENSE_PAGE.read_text()
    sources = "\n".join(p.read_text() for p in [*(ROOT / "chapters").glob("*.ipynb"), *(ROOT / "utils").glob("*.py")])
    names = set(re.findall(r'from_pretrained\(\\?"([\w./-]+)\\?"', sources))
    names |= {m.split("/")[0] + "/" for m in re.findall(r'"(timm/[\w.-]+)"', sources)}
    names |= set(re.findall(r"load_sample_images?\b", sources))
    names |= set(re.findall(r"karpathy/(char-rnn)", sources))
    assert {"gpt2", "google/vit-base-patch16-224", "timm/"} <= names, f"the scan found only {sorted(names)}"
    missing = sorted(n for n in names if n.rstrip("s") not in page and n not in page)
    assert not missing, f"book/license.md does not list {missing} with its licence"
