"""Copy the website's offline JavaScript from node_modules/ into site_assets/.

The website never loads anything from a CDN. Its JavaScript comes from npm (versions
pinned in package.json / package-lock.json) and is copied here into the git-ignored folder
site_assets/, which Sphinx serves as _static/ (`html_static_path` in _config.yml):

- site_assets/mathjax/: MathJax 3's es5 `tex-chtml.js` (`mathjax_path` in _config.yml) and every file
  it loads lazily, relative to its own URL: the CommonHTML woff fonts, the TeX extensions that
  `autoload`/`\\require` fetch (e.g. `\\boldsymbol`, `\\color`, `\\cancel`), and what the right-click
  menu loads (the SVG renderer, the accessibility explorer with its speech rules).
- site_assets/widgets/embed-offline.js: the ipywidgets HTML manager's self-contained bundle
  (`dist/embed.js`, which includes the base, controls and output widgets, so neither require.js nor
  a CDN is needed; `nb_ipywidgets_js` in _config.yml) and the Font Awesome fonts it references,
  which webpack resolves next to the script. A few lines in front of it let the widgets typeset
  with MathJax 3 (they call MathJax 2's API).
- site_assets/axe/axe.min.js: axe-core, the accessibility checker that tests/test_site.py runs on every page.
  It is served with the site but named in no page (it is not in `html_js_files`): only the browser test
  adds it to a page, so a reader never downloads it.

Run from the repository root, after `npm ci --ignore-scripts` (or `npm install`):  python -m scripts.site_assets
Idempotent: site_assets/mathjax, widgets and axe are rebuilt from scratch on every run.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE_MODULES = ROOT / "node_modules"
OUT = ROOT / "site_assets"

MATHJAX = "mathjax"
WIDGETS = "@jupyter-widgets/html-manager"
AXE = "axe-core"

# Paths inside node_modules/mathjax/es5 (files or whole folders) that tex-chtml.js loads.
MATHJAX_ES5 = [
    "tex-chtml.js",                  # the combined component: TeX input, CHTML output, menu, assistive MathML
    "output/chtml/fonts/woff-v2",    # CHTML web fonts, fetched by @font-face as glyphs are used
    "input/tex/extensions",          # TeX packages loaded on demand by autoload / \require
    "output/svg.js",                 # menu > Math Settings > Math Renderer > SVG (a saved menu choice too)
    "output/svg/fonts",
    "input/mml.js",                  # dependency of a11y/semantic-enrich
    "a11y",                          # menu > Accessibility: explorer, complexity, semantic enrichment
    "sre/mathmaps",                  # speech rule engine locales, used by the explorer
]
# @jupyter-widgets typesets labels and HTML with MathJax 2's API (MathJax.Hub.Queue), which MathJax 3
# lacks: every widget view with a description then throws "Cannot read properties of undefined (reading
# 'Queue')". This bridge, put in front of the bundle, maps it onto MathJax 3 (one typeset at a time).
MATHJAX2_BRIDGE = """\
/* onehot-to-clip: MathJax 2 -> 3 bridge for @jupyter-widgets (see scripts/site_assets.py). */
(function () {
  var queue = Promise.resolve();
  window.addEventListener("load", function () {  // registered before the widget embedder's own handler
    var mj = window.MathJax;
    if (!mj || mj.Hub) return;
    mj.Hub = {Queue: function () {
      var elements = [];
      for (var i = 0; i < arguments.length; i++) {
        var job = arguments[i];
        if (Array.isArray(job) && job[0] === "Typeset" && job[2]) elements.push(job[2]);
      }
      queue = queue.then(function () { return mj.startup && mj.startup.promise; }).then(function () {
        return mj.typesetPromise ? mj.typesetPromise(elements) : null;
      }).catch(function (err) { console.error("MathJax typeset of a widget failed:", err); });
      return queue;
    }};
  });
})();
"""
# The widget bundle references its fonts by content-hashed names (webpack asset modules).
HASHED_ASSET = re.compile(r'"([0-9a-f]{20}\.(?:woff2|woff|ttf|eot|svg))"')


class SiteAssetsError(RuntimeError):
    pass


def _package_dir(name: str) -> Path:
    pkg = NODE_MODULES / name
    if not (pkg / "package.json").is_file():
        raise SiteAssetsError(
            f"{pkg.relative_to(ROOT)} is missing: run `npm ci` (or `npm install`) in {ROOT} first; "
            "it installs the versions pinned in package.json / package-lock.json.")
    wanted = json.loads((ROOT / "package.json").read_text())["dependencies"].get(name)
    found = json.loads((pkg / "package.json").read_text())["version"]
    if wanted and found != wanted:
        raise SiteAssetsError(
            f"node_modules has {name} {found} but package.json pins {wanted}: run `npm ci` in {ROOT}.")
    return pkg


def _copy(src: Path, dst: Path) -> None:
    if not src.exists():
        raise SiteAssetsError(f"{src} is missing: the npm package looks incomplete; run `npm ci` again.")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


def build_mathjax(dest: Path) -> None:
    es5 = _package_dir(MATHJAX) / "es5"
    for rel in MATHJAX_ES5:
        _copy(es5 / rel, dest / rel)


def build_widgets(dest: Path) -> None:
    dist = _package_dir(WIDGETS) / "dist"
    bundle = (dist / "embed.js").read_text(encoding="utf-8")
    # The non-AMD bundle must carry the standard widget models itself (no require.js, no CDN fetch).
    for needle in ("@jupyter-widgets/controls", "DropdownModel", "VBoxModel", "ImageModel", "HTMLModel",
                   "OutputModel", "application/vnd.jupyter.widget-state+json"):
        if needle not in bundle:
            raise SiteAssetsError(f"{dist / 'embed.js'} does not contain {needle!r}: unexpected bundle.")
    # Drop the source-map comment: the 6 MB map is not shipped, so a browser must not ask for it.
    bundle = re.sub(r"\n//# sourceMappingURL=\S+\s*$", "\n", bundle)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "embed-offline.js").write_text(MATHJAX2_BRIDGE + bundle, encoding="utf-8")
    shutil.copy2(dist / "embed.js.LICENSE.txt", dest / "embed.js.LICENSE.txt")  # named in the bundle
    for name in sorted(set(HASHED_ASSET.findall(bundle))):
        _copy(dist / name, dest / name)


def build_axe(dest: Path) -> None:
    pkg = _package_dir(AXE)
    _copy(pkg / "axe.min.js", dest / "axe.min.js")
    _copy(pkg / "LICENSE", dest / "LICENSE")  # MPL-2.0: the licence travels with the file


def main() -> int:
    try:
        for name in (MATHJAX, WIDGETS, AXE):  # check node_modules before touching site_assets/
            _package_dir(name)
        OUT.mkdir(exist_ok=True)
        for name, build in (("mathjax", build_mathjax), ("widgets", build_widgets), ("axe", build_axe)):
            tmp = OUT / f".{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            build(tmp)
            shutil.rmtree(OUT / name, ignore_errors=True)
            tmp.rename(OUT / name)
    except SiteAssetsError as err:
        print(f"site_assets: error: {err}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"site_assets: wrote {OUT.relative_to(ROOT)}/mathjax, {OUT.relative_to(ROOT)}/widgets and "
          f"{OUT.relative_to(ROOT)}/axe "
          f"({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
