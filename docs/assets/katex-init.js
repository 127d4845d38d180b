// Render formulas with the bundled KaTeX (no CDN): pymdownx.arithmatex output on pages,
// and $...$ / $$...$$ in the markdown cells of rendered notebooks.
function renderMath() {
  if (typeof renderMathInElement !== "function") return;
  document.querySelectorAll(".arithmatex").forEach(function (el) {
    renderMathInElement(el, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
      throwOnError: false,
    });
  });
  document.querySelectorAll(".jp-RenderedMarkdown, .jp-MarkdownOutput").forEach(function (el) {
    renderMathInElement(el, {
      delimiters: [
        { left: "$$", right: "$$", display: true },
        { left: "$", right: "$", display: false },
      ],
      throwOnError: false,
    });
  });
}
if (typeof document$ !== "undefined") { document$.subscribe(renderMath); } else { document.addEventListener("DOMContentLoaded", renderMath); }
