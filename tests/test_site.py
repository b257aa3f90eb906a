"""The built website, opened in headless Chromium: offline, with figures, math, widgets and launch links.

Serves the built HTML (env SITE_DIR, default <repo>/_build/html) on 127.0.0.1 and opens every chapter
page in `_toc.yml` plus the book's root page (book/intro). On each page:
  (a) every request goes to 127.0.0.1 (no CDN, no web font service) and no local asset fails (>= 400);
  (b) figures: a chapter shows at least one image from its notebook outputs; every <img> decoded;
  (c) math: where the page has math, MathJax (served from _static/mathjax) typeset all of it;
  (d) widgets: where the page has saved widget state, every widget view was rendered, offline;
  (e) launch links: a chapter links to itself in Colab and Binder (derived from _config.yml).
A full-page screenshot of each page goes to _build/screenshots/<page>.png.
Accessibility, on every page of the build: axe-core (npm, served from _static/axe/ but named in no page)
finds no critical or serious WCAG 2.0/2.1 A/AA violation apart from the theme's listed in THEME_FINDINGS, and no
image (widget pictures included) has a missing or file-name alt text.

Build first (see README):
    npm ci --ignore-scripts && python -m scripts.site_assets && jupyter-book build . -W --keep-going
Without a build (or without playwright) the test is skipped, except when the environment variable CI
is set: then it fails.
Chromium is the system one (/usr/bin/chromium, env CHROMIUM to override); `playwright install` is not used.
"""
from __future__ import annotations

import functools
import html.parser
import os
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SITE_DIR = Path(os.environ.get("SITE_DIR") or ROOT / "_build" / "html").resolve()
# The book sources (_toc.yml, _config.yml) belong to the build: <book>/_build/html, else this repository.
BOOK_DIR = Path(os.environ.get("BOOK_DIR") or (
    SITE_DIR.parent.parent if (SITE_DIR.parent.parent / "_toc.yml").is_file() else ROOT))
SCREENSHOTS = SITE_DIR.parent / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_HOST = "127.0.0.1"
LOAD_TIMEOUT_MS = 30_000
RENDER_TIMEOUT_MS = 20_000

# Known, harmless: Sphinx 7.x adds inline scripts registered after builder init twice (fixed upstream in
# sphinx-doc/sphinx#13402, Sphinx 8.2; jupyter-book 1.x needs sphinx~=7.0), so sphinx-thebe's
# `const THEBE_JS_URL = ...` line runs twice and the second copy throws. The first copy already defined it.
KNOWN_PAGE_ERRORS = {"Identifier 'THEBE_JS_URL' has already been declared"}

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


# ----------------------------------------------------------------------------- the book's pages

def _toc_files(entry: dict) -> list[str]:
    files = [entry["file"]] if "file" in entry else []
    for key in ("parts", "chapters", "sections"):
        for child in entry.get(key, []):
            files += _toc_files(child)
    return files


def _pages() -> list[str]:
    toc = yaml.safe_load((BOOK_DIR / "_toc.yml").read_text())
    files = [toc["root"]] + _toc_files(toc)
    files = [str(Path(f).with_suffix("")) if Path(f).suffix in {".md", ".ipynb"} else f for f in files]
    return list(dict.fromkeys([files[0]] + [f for f in files if f.startswith("chapters/")]))  # root: book/intro


PAGES = _pages()


def _launch_prefixes(page: str) -> tuple[str, str, str]:
    """Colab and Binder URL prefixes for a chapter page and its notebook's path in the repository,
    from _config.yml, as sphinx-book-theme builds them. Where the chapter has a reader notebook
    (notebooks/en/, written by scripts/reader_notebooks.py), the buttons open that copy instead."""
    config = yaml.safe_load((BOOK_DIR / "_config.yml").read_text())
    repo, launch = config["repository"], config.get("launch_buttons", {})
    owner_repo = urlsplit(repo["url"]).path.strip("/").removesuffix(".git")
    branch = repo.get("branch", "main")
    book = (repo.get("path_to_book") or "").strip("/")
    reader = f"notebooks/en/{Path(page).name}.ipynb"
    target = reader if (BOOK_DIR / reader).is_file() else f"{page}.ipynb"
    notebook = f"{book}/{target}" if book else target
    colab = launch.get("colab_url", "https://colab.research.google.com").rstrip("/")
    binder = launch.get("binderhub_url", "https://mybinder.org").rstrip("/")
    return (f"{colab}/github/{owner_repo}/blob/{branch}/{notebook}",
            f"{binder}/v2/gh/{owner_repo}/{branch}?urlpath=", notebook)


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def site() -> Path:
    if not SITE_DIR.is_dir():
        reason = (f"no built website at {SITE_DIR}: run `npm ci --ignore-scripts && python -m scripts.site_assets"
                  " && jupyter-book build . -W --keep-going` first (or set SITE_DIR)")
        if os.environ.get("CI"):
            pytest.fail(reason + " [CI is set, so a missing build is a failure]")
        pytest.skip(reason)
    return SITE_DIR


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@pytest.fixture(scope="module")
def base_url(site: Path):
    server = ThreadingHTTPServer((LOCAL_HOST, 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{LOCAL_HOST}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(base_url):
    try:
        from playwright import sync_api
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed (pip install -r requirements.txt) [CI is set]")
        pytest.skip("playwright is not installed (pip install -r requirements.txt)")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM} (install the `chromium` package or set CHROMIUM)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# ----------------------------------------------------------------------------- in-page probes

IMAGES_JS = """async () => {
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(img => {
    img.loading = 'eager';
    if (img.complete) return null;
    return new Promise(done => { img.addEventListener('load', done); img.addEventListener('error', done);
                                 setTimeout(done, 10000); });
  }));
  return imgs.map(img => ({src: img.currentSrc || img.src, width: img.naturalWidth,
                           output: !!img.closest('.cell_output, .output')}));
}"""

MATH_JS = """async (timeout) => {
  // MathJax is a deferred script, so after the load event it has run (or failed to load).
  const t0 = Date.now();
  while (!(window.MathJax && window.MathJax.startup && window.MathJax.startup.promise)) {
    if (Date.now() - t0 > 3000) return {error: 'MathJax never started (is _static/mathjax/tex-chtml.js served?)'};
    await new Promise(r => setTimeout(r, 100));
  }
  const result = await Promise.race([
    window.MathJax.startup.promise.then(() => 'ok', e => 'MathJax startup failed: ' + e),
    new Promise(r => setTimeout(() => r('MathJax did not finish typesetting within ' + timeout + ' ms'), timeout))]);
  if (result !== 'ok') return {error: result};
  const raw = [];
  const skip = 'pre, code, script, style, textarea, mjx-container, .highlight';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || el.closest(skip) || el.getClientRects().length === 0) continue;
    const m = n.textContent.match(/\\$\\$|\\\\\\(|\\\\\\)|\\\\\\[|\\\\\\]/);
    if (m) raw.push(n.textContent.trim().slice(0, 80));
  }
  const math = Array.from(document.querySelectorAll('.math'));
  return {containers: document.querySelectorAll('mjx-container').length,
          untypeset: math.filter(el => !el.querySelector('mjx-container')).length,
          math: math.length,
          errors: Array.from(document.querySelectorAll('mjx-merror')).map(e => e.textContent.slice(0, 80)),
          raw: raw};
}"""

WIDGETS_VIEWS_JS = """() => {
 const saved = new Set();
 document.querySelectorAll('script[type="%s"]').forEach(
   t => Object.keys(JSON.parse(t.textContent).state || {}).forEach(id => saved.add(id)));
 return Array.from(document.querySelectorAll('script[type="%s"]')).map(tag => {
  const area = tag.previousElementSibling;
  const view = area && area.classList.contains('widget-subarea') ? area.querySelector('.lm-Widget') : null;
  const box = view ? view.getBoundingClientRect() : null;
  // an output folded away (hide-output, a closed dropdown) is not expected to show its widget
  const shown = !!tag.parentElement && tag.parentElement.getClientRects().length > 0;
  const model = JSON.parse(tag.textContent).model_id;
  return {model: model, saved: saved.has(model), rendered: !!view, visible: !shown || (!!box && box.width > 0 && box.height > 0),
          inOutput: !!tag.closest('.cell_output, .output'),
          classes: view ? view.className : ''};
 });
}""" % (WIDGET_STATE, WIDGET_VIEW)


# ----------------------------------------------------------------------------- tests

def _css_urls(css: str) -> list[str]:
    return re.findall(r"""(?:url\(\s*['"]?|@import\s+['"])([^'")\s]+)""", css)


class _ResourceRefs(html.parser.HTMLParser):
    """Every URL a page would load by itself: scripts, stylesheets, preloads, icons, images, media."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self._in_style = False

    def handle_endtag(self, tag):
        self._in_style = self._in_style and tag != "style"

    def handle_data(self, data):
        if self._in_style:
            self.urls += _css_urls(data)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._in_style = tag == "style"
        self.urls += _css_urls(attrs.get("style") or "")
        if tag in {"script", "img", "iframe", "audio", "video", "source", "embed"} and attrs.get("src"):
            self.urls.append(attrs["src"])
        if tag == "link" and attrs.get("href") and set((attrs.get("rel") or "").split()) & {
                "stylesheet", "preload", "modulepreload", "icon", "shortcut", "prefetch", "manifest"}:
            self.urls.append(attrs["href"])


def test_every_page_loads_only_local_assets_that_exist(site: Path):
    """Static check over every HTML page (any depth) and stylesheet of the build: nothing loads from the
    web, and every script, stylesheet, image and font a page names is in the build."""
    external, missing = [], []
    pages = [p for p in sorted(site.rglob("*.html")) if p.relative_to(site).parts[0] not in {"_static", "_sources"}]
    assert pages, f"no HTML pages in {site}"
    for page in pages:  # _static/*.html are the theme's Jinja macros, not pages
        parser = _ResourceRefs()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        for url in parser.urls:
            if re.match(r"(https?:)?//", url):
                external.append(f"{page.relative_to(site)}: {url}")
            elif not re.match(r"(data|blob|about|javascript):|#", url):
                path = unquote(urlsplit(url).path)
                target = site / path.lstrip("/") if path.startswith("/") else page.parent / path
                if not target.resolve().is_file():
                    missing.append(f"{page.relative_to(site)}: {url}")
    for css in sorted((site / "_static").rglob("*.css")):
        text = css.read_text(encoding="utf-8", errors="replace")
        external += [f"{css.relative_to(site)}: {u}" for u in _css_urls(text) if re.match(r"(https?:)?//", u)]
    assert not external, "pages load resources from the web:\n" + "\n".join(external)
    assert not missing, "pages name assets that are not in the build:\n" + "\n".join(missing)


@pytest.mark.parametrize("page", PAGES)
def test_page(page: str, site: Path, base_url: str, browser):
    html_file = site / f"{page}.html"
    assert html_file.is_file(), f"{page} is in _toc.yml but {html_file} was not built"
    source = html_file.read_text(encoding="utf-8")

    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    page_ = context.new_page()
    external, failed, errors = [], [], []

    def on_request(request):
        url = urlsplit(request.url)
        if url.scheme in {"data", "blob", "about"}:
            return
        if url.scheme not in {"http", "https"} or url.hostname != LOCAL_HOST:
            external.append(request.url)

    def on_response(response):
        if response.status >= 400:
            failed.append(f"{response.status} {response.url}")

    page_.on("request", on_request)
    page_.on("requestfailed", lambda r: failed.append(f"{r.failure} {r.url}"))
    page_.on("response", on_response)
    page_.on("pageerror", lambda e: None if str(e) in KNOWN_PAGE_ERRORS else errors.append(str(e)))
    # Anything not on 127.0.0.1 is recorded above and then refused, so the test never needs the network.
    page_.route(re.compile(r"^(?!(https?://127\.0\.0\.1[:/]|data:|blob:|about:)).*"), lambda route: route.abort())

    try:
        response = page_.goto(f"{base_url}/{page}.html", wait_until="load", timeout=LOAD_TIMEOUT_MS)
        assert response is not None and response.ok, f"{page}.html: HTTP {response and response.status}"

        # (c) math
        has_math = 'class="math' in source
        math = page_.evaluate(MATH_JS, RENDER_TIMEOUT_MS) if has_math else None

        # (d) widgets
        has_widgets = f'type="{WIDGET_STATE}"' in source
        n_views = source.count(f'type="{WIDGET_VIEW}"')
        # The widget manager renders on the load event; if its script did not run, there is nothing to wait for.
        if has_widgets and n_views and page_.evaluate("() => window._jupyter_widget_embedder === true"):
            try:
                page_.wait_for_function(
                    """n => document.querySelectorAll('.widget-subarea > .lm-Widget').length >= n""",
                    arg=n_views, timeout=RENDER_TIMEOUT_MS)
            except Exception:  # the assertion below says which views are missing
                pass
        views = page_.evaluate(WIDGETS_VIEWS_JS)

        # (b) images (widget images included), then let lazily loaded fonts and scripts settle
        images = page_.evaluate(IMAGES_JS)
        page_.wait_for_load_state("networkidle", timeout=RENDER_TIMEOUT_MS)

        shot = SCREENSHOTS / f"{page}.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page_.screenshot(path=str(shot), full_page=True)

        colab = binder = None
        if page.startswith("chapters/"):
            hrefs = page_.eval_on_selector_all("a[href]", "as => as.map(a => a.href)")
            colab_prefix, binder_prefix, notebook = _launch_prefixes(page)
            colab = [h for h in hrefs if h.startswith(colab_prefix)]
            binder = [h for h in hrefs if h.startswith(binder_prefix) and unquote(h).endswith("/" + notebook)]
    finally:
        context.close()

    # (a) offline
    assert not external, f"{page} requested resources outside {LOCAL_HOST}:\n" + "\n".join(external)
    assert not failed, f"{page} has failed requests:\n" + "\n".join(failed)
    assert not errors, f"{page} raised JavaScript errors:\n" + "\n".join(errors)

    # (b) figures
    broken = [i["src"][:120] for i in images if i["width"] == 0]
    assert not broken, f"{page} has images that did not load/decode: {broken}"
    if page.startswith("chapters/"):
        assert any(i["output"] for i in images), f"{page} shows no image from its notebook outputs"

    # (c) math
    if has_math:
        assert "error" not in math, f"{page}: {math.get('error')}"
        assert math["containers"] > 0, f"{page} has math but MathJax rendered none of it"
        assert math["untypeset"] == 0, f"{page}: {math['untypeset']} of {math['math']} math elements not typeset"
        assert not math["raw"], f"{page} shows raw TeX delimiters: {math['raw'][:5]}"
        assert not math["errors"], f"{page} has TeX errors: {math['errors'][:5]}"

    # (d) widgets
    assert has_widgets or not n_views, (
        f"{page} displays {n_views} widget(s) but its notebook has no saved widget state, so the page shows "
        "nothing there: re-execute it with nbclient's store_widget_state=True")
    if has_widgets:
        assert len(views) == n_views, f"{page}: found {len(views)} of {n_views} widget view tags in the DOM"
        unsaved = [v["model"] for v in views if not v["saved"]]
        assert not unsaved, (
            f"{page} displays widgets whose state was not saved, so they show as nothing: {unsaved} "
            "(closed before the notebook was saved? e.g. a tqdm bar with leave=False)")
        missing = [v["model"] for v in views if not v["rendered"]]
        assert not missing, f"{page}: {len(missing)} of {n_views} widget views not rendered: {missing}"
        hidden = [v["model"] for v in views if not v["visible"]]
        assert not hidden, f"{page}: widget views rendered with no size (CSS missing?): {hidden}"
        assert all(v["inOutput"] for v in views), f"{page}: widget views outside the output areas"
        assert all("jupyter-widgets" in v["classes"] for v in views), f"{page}: unexpected widget DOM {views}"

    # (e) launch links
    if page.startswith("chapters/"):
        assert colab, f"{page} has no Colab link starting with {_launch_prefixes(page)[0]}"
        assert binder, f"{page} has no Binder link to the notebook starting with {_launch_prefixes(page)[1]}"


# ----------------------------------------------------------------------------- explorers, dark mode, page weight

# The heaviest a chapter page may be: its HTML (which carries the explorers' precomputed views as saved widget
# state) plus the images it shows from _images/. The shared theme, MathJax and widget scripts are cached once
# for the whole book and not counted. 6 MB is about 3 s on a 20 Mbit/s line; the chapters weigh 0.4-4 MB.
PAGE_BUDGET_BYTES = 6_000_000

# A Stack's view is a plain box (no widget-vbox/hbox class) that holds only its selected page.
STACK = ".widget-box:not(.widget-vbox):not(.widget-hbox):not(.widget-gridbox)"

EXPLORER_JS = """async () => {
  // Every explorer: a widget output (.widget-subarea) that holds a Stack of precomputed pages. Its controls are
  // the menus, toggle buttons and sliders outside the stacks (the ones inside a page need a kernel to redraw).
  const visible = el => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
  const roots = Array.from(document.querySelectorAll('.widget-subarea > .lm-Widget'))
    .filter(r => r.querySelector('%s'));
  return roots.map((root, i) => {
    root.dataset.explorer = i;
    const controls = [];
    root.querySelectorAll('select, .widget-toggle-buttons, .widget-slider').forEach(el => {
      if (el.closest('%s') || !visible(el)) return;
      if (el.closest('.widget-inline-hbox, .widget-toggle-buttons, .widget-slider')?.classList.contains('mod-disabled')) return;
      el.dataset.control = controls.length;
      const kind = el.tagName === 'SELECT' ? 'select' : el.classList.contains('widget-toggle-buttons') ? 'toggle' : 'slider';
      const label = (el.closest('.widget-inline-hbox, .widget-toggle-buttons') || el).querySelector('.widget-label');
      controls.push({kind: kind, label: label ? label.textContent.trim() : ''});
    });
    return {index: i, controls: controls, title: root.innerText.slice(0, 60)};
  });
}""" % (STACK, STACK)

VIEW_JS = """async (i) => {
  // What the explorer shows in its pages: the visible text and a hash of every visible picture's bytes
  // (an Image widget's src is a blob: URL made per view, so the bytes, not the URL, identify the picture).
  const root = document.querySelector(`[data-explorer="${i}"]`);
  const visible = el => el.getClientRects().length > 0;
  const parts = [];
  for (const stack of root.querySelectorAll('%s')) {
    if (stack.parentElement.closest('%s') || !visible(stack)) continue;
    parts.push(stack.innerText);
    for (const img of stack.querySelectorAll('img')) {
      if (!visible(img)) continue;
      const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
      let h = 2166136261;
      for (let k = 0; k < bytes.length; k++) { h ^= bytes[k]; h = Math.imul(h, 16777619) >>> 0; }
      parts.push(`img:${bytes.length}:${h}`);
    }
  }
  return parts.join('\\n');
}""" % (STACK, STACK)


UNNAMED_PICTURES_JS = """(i) => Array.from(document.querySelectorAll(`[data-explorer="${i}"] img`))
  .filter(img => img.getClientRects().length > 0 && !(img.getAttribute('alt') || '').trim()).length"""


CONTROL_MODELS = ("DropdownModel", "ComboboxModel", "ToggleButtonsModel", "IntSliderModel", "FloatSliderModel",
                  "SelectionSliderModel", "TextModel")


def _explorer_pages() -> list[str]:
    """Chapter pages whose saved widget state holds a control (a menu, a slider, a text box): explorers."""
    if not SITE_DIR.is_dir():
        return [p for p in PAGES if p.startswith("chapters/")]
    return [p for p in PAGES if p.startswith("chapters/") and (SITE_DIR / f"{p}.html").is_file()
            and any(f'"{m}"' in (SITE_DIR / f"{p}.html").read_text(encoding="utf-8") for m in CONTROL_MODELS)]


def _open(browser, base_url: str, page: str, dark: bool = False):
    """A page loaded with its widgets rendered; requests off 127.0.0.1 are recorded in `context.external`."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block",
                                  color_scheme="dark" if dark else "light")
    context.external = []
    if dark:  # pydata-sphinx-theme reads the reader's choice from localStorage before it paints
        context.add_init_script("localStorage.setItem('mode', 'dark'); localStorage.setItem('theme', 'dark');")
    page_ = context.new_page()

    def on_request(request):
        url = urlsplit(request.url)
        if url.scheme not in {"data", "blob", "about"} and url.hostname != LOCAL_HOST:
            context.external.append(request.url)

    page_.on("request", on_request)
    page_.route(re.compile(r"^(?!(https?://127\.0\.0\.1[:/]|data:|blob:|about:)).*"), lambda route: route.abort())
    page_.goto(f"{base_url}/{page}.html", wait_until="load", timeout=LOAD_TIMEOUT_MS)
    source = (SITE_DIR / f"{page}.html").read_text(encoding="utf-8")
    n_views = source.count(f'type="{WIDGET_VIEW}"')
    if n_views:
        page_.wait_for_function("n => document.querySelectorAll('.widget-subarea > .lm-Widget').length >= n",
                                arg=n_views, timeout=RENDER_TIMEOUT_MS)
    return context, page_


def _change(page_, explorer: int, control: int, kind: str, undo: str | None = None) -> str:
    """Change a control as a reader would (the next menu entry or toggle button, a slider step) and return how,
    so that `_change(..., undo=how)` changes it back."""
    sel = f'[data-explorer="{explorer}"] [data-control="{control}"]'
    step = -1 if undo == "+1" else 1
    if kind == "select":
        options = page_.eval_on_selector(sel, "s => Array.from(s.options).map(o => o.value)")
        current = page_.eval_on_selector(sel, "s => s.selectedIndex")
        page_.select_option(sel, options[(current + step) % len(options)])
        return "+1"
    if kind == "toggle":
        buttons = page_.locator(f"{sel} button")
        current = page_.eval_on_selector(sel, "t => Array.from(t.querySelectorAll('button')).findIndex("
                                              "b => b.classList.contains('mod-active'))")
        buttons.nth((current + step) % buttons.count()).click()
        return "+1"
    handle = page_.locator(f"{sel} .noUi-handle").first
    handle.focus()
    if undo is None:
        at_end = page_.eval_on_selector(f"{sel} .noUi-handle", "h => h.getAttribute('aria-valuenow') === "
                                                               "h.getAttribute('aria-valuemax')")
        key = "ArrowLeft" if at_end else "ArrowRight"
    else:
        key = "ArrowLeft" if undo == "ArrowRight" else "ArrowRight"
    handle.press(key)
    return key


@pytest.mark.parametrize("page", _explorer_pages())
def test_explorers_work_without_a_kernel(page: str, site: Path, base_url: str, browser):
    """Every explorer on the page, in the browser alone: each of its controls (menus, toggle buttons, sliders
    outside its pages) changes what the explorer shows, and changing it back shows the first view again."""
    assert '"StackModel"' in (site / f"{page}.html").read_text(encoding="utf-8"), (
        f"{page} has explorer controls but no precomputed views (no Stack), so on the website they change nothing: "
        "re-execute the chapter with the current utils.viz")
    context, page_ = _open(browser, base_url, page)
    checked = []
    try:
        explorers = page_.evaluate(EXPLORER_JS)
        assert explorers, f"{page} has widget stacks but no explorer was found in the DOM"
        for ex in explorers:
            assert ex["controls"], f"{page}: explorer {ex['index']} ({ex['title']!r}) shows no control to change"
            first = page_.evaluate(VIEW_JS, ex["index"])
            assert first.strip(), f"{page}: explorer {ex['index']} shows nothing in its pages"
            for c, control in enumerate(ex["controls"]):
                how = _change(page_, ex["index"], c, control["kind"])
                page_.wait_for_timeout(300)
                changed = page_.evaluate(VIEW_JS, ex["index"])
                assert changed != first, (f"{page}: changing {control['kind']} {control['label']!r} of explorer "
                                          f"{ex['index']} ({ex['title']!r}) did not change the view")
                unnamed = page_.evaluate(UNNAMED_PICTURES_JS, ex["index"])
                assert not unnamed, (f"{page}: after changing {control['label']!r} of explorer {ex['index']}, "
                                     f"{unnamed} of its pictures have no alt text (book/static/onehot-a11y.js)")
                _change(page_, ex["index"], c, control["kind"], undo=how)
                page_.wait_for_timeout(300)
                assert page_.evaluate(VIEW_JS, ex["index"]) == first, (
                    f"{page}: changing {control['label']!r} back did not bring the first view back")
                checked.append(control["label"])
        shot = SCREENSHOTS / f"{page}.explorers.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page_.screenshot(path=str(shot), full_page=True)
    finally:
        external = context.external
        context.close()
    assert not external, f"{page} requested resources outside {LOCAL_HOST}:\n" + "\n".join(external)
    assert checked


def _luminance(rgb) -> float:
    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (channel(float(v)) for v in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(a, b) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


DARK_JS = """() => {
  const rgb = s => (s.match(/[\\d.]+/g) || []).slice(0, 4).map(Number);
  const background = el => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const visible = el => el.getClientRects().length > 0;
  const figures = Array.from(document.querySelectorAll('.cell_output img')).filter(visible).map(img => {
    const r = img.getBoundingClientRect();
    return {src: (img.currentSrc || img.src).slice(0, 80), x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height};
  });
  const texts = Array.from(document.querySelectorAll('.widget-subarea .widget-label, .widget-subarea .widget-html-content, '
                                                    + '.widget-subarea .widget-readout, .widget-subarea select'))
    .filter(el => visible(el) && el.textContent.trim())
    .map(el => ({text: el.textContent.trim().slice(0, 40), color: rgb(getComputedStyle(el).color), background: background(el)}));
  return {theme: document.documentElement.dataset.theme, page: background(document.querySelector('.bd-content') || document.body),
          figures: figures, texts: texts};
}"""


@pytest.mark.parametrize("page", [p for p in PAGES if p.startswith("chapters/")])
def test_dark_mode_keeps_figures_and_explorers_readable(page: str, site: Path, base_url: str, browser):
    """In pydata-sphinx-theme's dark mode (html[data-theme=dark]) every output figure is shown on a light card
    (its frame, in a screenshot of the figure itself, is light while the page is dark) and the explorers' labels
    contrast with what they are written on (WCAG ratio >= 4.5). Each figure is captured on its own, where it is
    when captured: positions measured once for a full-page screenshot go stale when MathJax or a widget changes
    the layout afterwards (a loaded machine showed every figure of chapter 11 as page background).
    A full-page screenshot, for people to look at, goes to _build/screenshots/<page>.dark.png."""
    import io

    from PIL import Image

    context, page_ = _open(browser, base_url, page, dark=True)
    dark_figures = []
    try:
        page_.evaluate(IMAGES_JS)
        found = page_.evaluate(DARK_JS)
        for img in page_.query_selector_all(".cell_output img"):
            box = img.bounding_box()
            if box is None or box["width"] < 40 or box["height"] < 40:
                continue
            image = Image.open(io.BytesIO(img.screenshot(animations="disabled"))).convert("L")
            x0, y0, x1, y1 = 2, 2, image.width - 2, image.height - 2
            frame = [image.getpixel((x, y)) for x in range(x0, x1, 4) for y in (y0, y1 - 1)] + \
                    [image.getpixel((x, y)) for y in range(y0, y1, 4) for x in (x0, x1 - 1)]
            if sum(frame) / len(frame) < 180:
                src = img.evaluate("i => (i.currentSrc || i.src).slice(0, 80)")
                dark_figures.append(f"{src} (frame {sum(frame) / len(frame):.0f}/255)")
        shot = SCREENSHOTS / f"{page}.dark.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page_.screenshot(path=str(shot), full_page=True)
    finally:
        context.close()
    assert found["theme"] == "dark", f"{page}: the theme did not switch to dark mode (data-theme={found['theme']!r})"
    assert _luminance(found["page"]) < 0.1, f"{page}: the page background {found['page']} is not dark"
    assert not dark_figures, f"{page}: figures not on a light card in dark mode: {dark_figures}"
    poor = [f"{t['text']!r}: {t['color']} on {t['background']} ({_contrast(t['color'], t['background']):.1f})"
            for t in found["texts"] if _contrast(t["color"], t["background"]) < 4.5]
    assert not poor, f"{page}: explorer text hard to read in dark mode: {poor[:5]}"


def _page_weight(site: Path, page: str) -> int:
    html_file = site / f"{page}.html"
    parser = _ResourceRefs()
    parser.feed(html_file.read_text(encoding="utf-8"))
    images = {(html_file.parent / unquote(urlsplit(u).path)).resolve() for u in parser.urls
              if "_images/" in u and not re.match(r"(https?:)?//|data:", u)}
    return html_file.stat().st_size + sum(p.stat().st_size for p in images if p.is_file())


@pytest.mark.parametrize("page", [p for p in PAGES if p.startswith("chapters/")])
def test_chapter_page_weight_is_within_budget(page: str, site: Path):
    """A chapter page (its HTML with the explorers' saved views, plus its images) stays within PAGE_BUDGET_BYTES."""
    weight = _page_weight(site, page)
    print(f"{page}: {weight / 1e6:.2f} MB")
    assert weight <= PAGE_BUDGET_BYTES, (
        f"{page} weighs {weight / 1e6:.1f} MB (HTML + images), over the {PAGE_BUDGET_BYTES / 1e6:.0f} MB budget: "
        "offer fewer precomputed views in its explorers (examples, slider values) or smaller pictures")


@pytest.mark.parametrize("page", [p for p in PAGES if p.startswith("chapters/")])
def test_code_and_printed_output_are_not_cut_off_at_the_right_edge(page: str, site: Path, base_url: str, browser):
    """At a laptop's width every code line and printed line of a chapter is visible: long lines wrap
    (book/static/onehot.css, served as _static/onehot.css) instead of running past the text column into a hidden or scrolled-away area."""
    context, page_ = _open(browser, base_url, page)
    try:
        cut = page_.evaluate("""() => Array.from(document.querySelectorAll('.cell_input pre, .cell_output pre'))
          .filter(p => p.getClientRects().length > 0 && p.scrollWidth > p.clientWidth + 2)
          .map(p => p.textContent.split('\\n').reduce((a, b) => a.length >= b.length ? a : b).slice(0, 100))""")
    finally:
        context.close()
    assert not cut, f"{page}: lines cut off at the right edge: {cut[:3]}"


# ----------------------------------------------------------------------------- accessibility (WCAG 2.1 AA)

def _built_pages() -> list[str]:
    """Every HTML page of the build (the toc's pages, the index and search pages, any other), without .html;
    not _static/ or _sources/, nor a page that only redirects (the root index.html)."""
    if not SITE_DIR.is_dir():
        return PAGES
    pages = []
    for path in sorted(SITE_DIR.rglob("*.html")):
        rel = path.relative_to(SITE_DIR)
        if rel.parts[0] in {"_static", "_sources"}:
            continue
        head = path.read_text(encoding="utf-8", errors="replace")[:2000].lower()
        if 'http-equiv="refresh"' in head and "<body" not in head.split("refresh", 1)[1][:400]:
            continue  # a redirect, not a page
        pages.append(str(rel.with_suffix("")))
    return pages


ALL_PAGES = _built_pages()

# axe-core from npm (package.json), copied into the build by scripts/site_assets.py and added to a page by this
# test only: no page names it. The rules: WCAG 2.0 and 2.1, levels A and AA.
AXE_URL = "/_static/axe/axe.min.js"
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]

# Findings in the theme's own markup (pydata-sphinx-theme 0.17, under sphinx-book-theme 1.3) that only the theme
# can fix: the buttons are written by its templates and redrawn by its scripts, so a page cannot change them.
# Each is (axe rule, CSS selector of the element): why.
THEME_FINDINGS = {
    ("label-content-name-mismatch", ".search-button__button"):
        "the search button's aria-label is 'Search' while its visible text also shows the shortcut "
        "'Ctrl+K' (theme template search-button-field.html); a speech user who says what they see still "
        "reaches it by 'Search'",
    ("label-content-name-mismatch", ".theme-switch-button"):
        "the colour-mode button's aria-label is 'Color mode' while its three icons carry the titles "
        "'Light', 'Dark', 'System Settings', which axe reads as its visible text (theme template "
        "theme-switcher.html; the theme's script swaps the icons)",
}

AXE_JS = """async ([runOnly, allowed]) => {
  // Let the book's script (onehot-a11y.js) name what the widget manager drew in the last frames.
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const result = await axe.run(document, {runOnly: runOnly, resultTypes: ['violations']});
  const found = [], theme = [];
  for (const v of result.violations) {
    for (const node of v.nodes) {
      const el = node.target.length === 1 ? document.querySelector(node.target[0]) : null;
      const finding = {rule: v.id, impact: node.impact || v.impact, target: node.target.join(' '),
                       html: node.html.slice(0, 160), why: (node.failureSummary || '').replace(/\\s+/g, ' ').slice(0, 240)};
      if (el && allowed.some(([rule, selector]) => rule === v.id && el.matches(selector))) theme.push(finding);
      else found.push(finding);
    }
  }
  return {found: found, theme: theme};
}"""

ALTS_JS = """() => Array.from(document.images).filter(img => !img.closest('[aria-hidden="true"]')
                                                    && img.getAttribute('role') !== 'presentation')
  .map(img => ({alt: img.getAttribute('alt'), src: (img.getAttribute('src') || '').slice(0, 80),
                content: !!img.closest('.cell_output, .output, figure, .widget-subarea, article'),
                widget: img.classList.contains('widget-image')}))"""

FILE_LIKE_ALT = re.compile(r"(\.(png|jpe?g|gif|svg|webp|bmp)\b)|_images/|^\S*/\S*$|^[0-9a-f]{16,}", re.IGNORECASE)


def _bad_alt(alt: str | None, content: bool) -> str | None:
    """What is wrong with an image's alt text, or None: missing, empty on a content image, or a file name/path."""
    if alt is None:
        return "no alt attribute"
    if not alt.strip():
        return "an empty alt text on a content image" if content else None
    if FILE_LIKE_ALT.search(alt.strip()):
        return f"an alt text that is a file name or path ({alt[:60]!r})"
    return None


def test_the_alt_text_check_would_catch_what_the_site_used_to_show():
    """The check below is not vacuous: the alt texts Sphinx wrote before (the image's path) and the ones it
    writes for an image without any fail it; a sentence and a decorative image's empty alt pass."""
    for alt in ("../_images/a4ecd5f0c2b1d3e4f5a6b7c8d9e0f1a2.png", "_images/x.png", "figure.PNG",
                "chapters/figures/map.svg", "a4ecd5f0c2b1d3e4f5a6b7c8"):
        assert _bad_alt(alt, content=True), alt
    assert _bad_alt(None, content=False) and _bad_alt("  ", content=True)
    assert _bad_alt("", content=False) is None
    assert _bad_alt("Line plot of loss against step: both runs fall to 1.5 by step 2,000.", content=True) is None


def test_every_figure_of_the_chapters_has_an_alt_text_where_it_is_drawn():
    """Before any build: every chapter code cell that draws a figure (an image output) says what it shows in its
    metadata, mystnb.image.alt, which myst-nb puts on the <img> (without it Sphinx writes the file's path)."""
    import nbformat

    missing, bad, figures = [], [], 0
    for path in sorted((BOOK_DIR / "chapters").glob("*.ipynb")):
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type != "code" or not any(
                    m.startswith("image/") for o in cell.get("outputs", []) for m in o.get("data", {})):
                continue
            figures += 1
            alt = ((cell.metadata.get("mystnb") or {}).get("image") or {}).get("alt")
            where = f"{path.name} cell {i} ({cell.get('id')})"
            if not alt:
                missing.append(where)
            elif (why := _bad_alt(alt, content=True)) or len(alt) < 40:
                bad.append(f"{where}: {why or 'too short to say what the figure shows'}")
    assert figures, "no figures found in the chapters"
    assert not missing, ("figures without an alt text (set the cell's metadata mystnb.image.alt to what the "
                         "figure shows: axes, what is compared, the trend):\n" + "\n".join(missing))
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("page", ALL_PAGES)
def test_page_meets_wcag_21_aa_by_axe_and_names_every_image(page: str, site: Path, base_url: str, browser):
    """Every page of the built site, with its widgets rendered, run through axe-core (WCAG 2.0/2.1 A and AA):
    no critical or serious violation apart from THEME_FINDINGS; and every image, widget pictures included, has
    an alt text that is not a file name (empty only for a decorative image outside the content)."""
    assert (site / AXE_URL.lstrip("/")).is_file(), (
        f"{AXE_URL} is not in the build: run `npm ci` and `python -m scripts.site_assets` before building")
    context, page_ = _open(browser, base_url, page)
    try:
        page_.add_script_tag(url=base_url + AXE_URL)
        result = page_.evaluate(AXE_JS, [{"type": "tag", "values": AXE_TAGS}, [list(k) for k in THEME_FINDINGS]])
        images = page_.evaluate(ALTS_JS)
    finally:
        external = context.external
        context.close()
    assert not external, f"{page} requested resources outside {LOCAL_HOST}:\n" + "\n".join(external)
    serious = [f for f in result["found"] if f["impact"] in ("critical", "serious")]
    minor = [f for f in result["found"] if f not in serious]
    print(f"{page}: {len(serious)} critical/serious, {len(minor)} moderate/minor, {len(result['theme'])} theme findings")
    assert not serious, f"{page}: axe-core found {len(serious)} critical or serious violations:\n" + "\n".join(
        f"  [{f['impact']}] {f['rule']} at {f['target']}: {f['why']}\n      {f['html']}" for f in serious)
    bad = [f"{img['src']}: {why}" for img in images if (why := _bad_alt(img["alt"], img["content"]))]
    assert not bad, f"{page}: images without a proper alt text:\n" + "\n".join(bad)


@pytest.mark.parametrize("page", ALL_PAGES)
def test_page_keeps_wcag_contrast_in_dark_mode(page: str, site: Path, base_url: str, browser):
    """The one WCAG rule that depends on the colour mode, axe-core's colour contrast (AA: 4.5:1, 3:1 for large
    text), on every page in the theme's dark mode, widgets rendered (their card is book/static/onehot.css's)."""
    context, page_ = _open(browser, base_url, page, dark=True)
    try:
        page_.add_script_tag(url=base_url + AXE_URL)
        result = page_.evaluate(AXE_JS, [{"type": "rule", "values": ["color-contrast"]}, []])
        theme = page_.evaluate("() => document.documentElement.dataset.theme")
    finally:
        context.close()
    assert theme == "dark", f"{page}: the theme did not switch to dark mode"
    found = result["found"]
    assert not found, f"{page}: {len(found)} texts below WCAG AA contrast in dark mode:\n" + "\n".join(
        f"  {f['target']}: {f['why']}\n      {f['html']}" for f in found[:10])
