// Render the formulas that pymdownx.arithmatex (generic mode) wraps in .arithmatex elements,
// with the KaTeX vendored in docs/assets/katex (no network). Runs on every page load and on
// every instant-navigation page switch of mkdocs-material (document$).
(function () {
  function render(root) {
    root.querySelectorAll(".arithmatex").forEach(function (el) {
      renderMathInElement(el, {
        delimiters: [
          { left: "\\(", right: "\\)", display: false },
          { left: "\\[", right: "\\]", display: true },
        ],
        throwOnError: false,
      });
    });
  }
  if (typeof document$ !== "undefined") {
    document$.subscribe(function () { render(document.body); });
  } else {
    document.addEventListener("DOMContentLoaded", function () { render(document.body); });
  }
})();
