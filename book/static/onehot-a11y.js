/* onehot-to-clip: accessible names for what the page's extensions and the ipywidgets HTML manager draw
 * (WCAG 2.1 AA; tests/test_site.py runs axe-core on every page after this has run).
 *
 * - Widget sliders: the HTML manager draws a noUiSlider whose handle (role="slider") is not tied to the
 *   slider's visible description, so a screen reader announces a nameless slider. The handle is labelled
 *   by that description (aria-labelledby).
 * - Widget images (ipywidgets.Image) are <img> without alt. An explorer gives each picture a description
 *   as the widget's tooltip (rendered as a title attribute); it becomes the alt text. A picture saved
 *   before the explorers gave one is named after the caption the explorer prints above it.
 * - Folded code cells: the toggle's <summary> carries aria-label="Toggle hidden content", which hides its
 *   visible text ("Show code cell source"); the visible text becomes its name.
 * - The bibliography: docutils puts role="doc-biblioentry" (deprecated in ARIA 1.3) on the items of a
 *   role="list"; they become role="listitem".
 * The widgets are drawn after the load event, so new content is watched for and named as it appears.
 */
(function () {
  "use strict";
  var labels = 0;

  function text(el) {
    return el ? (el.innerText || el.textContent || "").replace(/\s+/g, " ").trim() : "";
  }

  function nameSliders(root) {
    root.querySelectorAll('[role="slider"]:not([aria-label]):not([aria-labelledby])').forEach(function (handle) {
      var box = handle.closest(".widget-slider, .widget-inline-hbox");
      var label = box && box.querySelector(".widget-label");
      if (!label || !text(label)) return;
      if (!label.id) label.id = "onehot-widget-label-" + (++labels);
      handle.setAttribute("aria-labelledby", label.id);
    });
  }

  function firstLine(el) {
    var lines = (el.innerText || el.textContent || "").split(/[\n\r]+/);
    for (var i = 0; i < lines.length; i++) {
      var line = lines[i].replace(/\s+/g, " ").trim();
      if (line) return line.length > 200 ? line.slice(0, 197) + "…" : line;
    }
    return "";
  }

  // The first line of the text widget just before the picture in its box (an explorer's caption of the view),
  // or, in a box of just the picture and its label (a thumbnail), of the label after it.
  function caption(img) {
    var el, line;
    for (el = img.previousElementSibling; el; el = el.previousElementSibling) {
      if ((line = firstLine(el))) return line;
    }
    if (img.parentElement && img.parentElement.children.length === 2 && img.nextElementSibling) {
      return firstLine(img.nextElementSibling);
    }
    return "";
  }

  function sectionTitle(el) {
    var section = el.closest("section");
    var heading = section && section.querySelector("h1, h2, h3, h4");
    return text(heading).replace(/#$/, "").trim();
  }

  function nameImages(root) {
    root.querySelectorAll("img.widget-image").forEach(function (img) {
      var title = img.getAttribute("title");
      if (title) {
        if (img.getAttribute("alt") !== title) img.setAttribute("alt", title);
        return;
      }
      if (img.hasAttribute("alt")) return;
      var words = caption(img);
      var section = sectionTitle(img);
      img.setAttribute("alt", words ? "Explorer picture for: " + words
                                    : "Explorer picture" + (section ? " in the section “" + section + "”" : ""));
    });
  }

  function nameToggles(root) {
    root.querySelectorAll('summary[aria-label="Toggle hidden content"]').forEach(function (summary) {
      if (text(summary)) summary.removeAttribute("aria-label");
    });
  }

  function fixBibliography(root) {
    root.querySelectorAll('[role="list"] > [role="doc-biblioentry"]').forEach(function (entry) {
      entry.setAttribute("role", "listitem");
    });
  }

  function run(root) {
    nameSliders(root);
    nameImages(root);
    nameToggles(root);
    fixBibliography(root);
  }

  var pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    window.requestAnimationFrame(function () {
      pending = false;
      run(document);
    });
  }

  function start() {
    run(document);
    new MutationObserver(schedule).observe(document.body, {childList: true, subtree: true,
                                                           attributes: true, attributeFilter: ["title", "alt"]});
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
