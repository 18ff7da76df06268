// The side-by-side view of llm_magic: one column per generation. Text streams into
// the columns; once the cross-scores arrive each column shows its pieces shaded by
// Δ log p in nats (float32 bytes) on one fixed scale, stated in the legend, with a
// marker where the greedy choices first diverge. Hovering (or focusing) a piece shows
// its numbers in a small label beside it. Every text is set with textContent.

const NEG = [214, 39, 40]; // the reference found the piece less likely
const POS = [31, 119, 180]; // the reference found it likelier
const LEGEND = [-2, -1, -0.5, 0, 0.5, 1, 2]; // nats, as widgets/compare.py's LEGEND
const STATES = { waiting: "waiting for the model…", generating: "generating…",
  scoring: "cross-scoring…", done: "", error: "" };

// A piece's background, [r, g, b]: the ramp of widgets/compare.py's shade().
function shadeOf(delta, scale) {
  const x = Number.isFinite(delta) ? Math.min(1, Math.abs(delta) / scale) : 0;
  return mix(WHITE, delta < 0 ? NEG : POS, x * 0.8);
}

function legendLabel(value, scale) {
  const text = value === 0 ? "0" : `${value > 0 ? "+" : "−"}${Math.abs(value)}`;
  if (Math.abs(value) >= scale) return (value < 0 ? "≤ " : "≥ ") + text;
  return text;
}

function buildLegend(legend, scale) {
  const title = node("span", "llm-cmp-legend-title", "Δ log p (nats)");
  const swatches = node("span", "llm-cmp-swatches");
  for (const v of LEGEND) {
    const value = v * (scale / 2);
    const sw = node("span", "llm-cmp-swatch", legendLabel(value, scale));
    const c = shadeOf(value, scale);
    sw.style.background = rgb(c);
    sw.style.color = inkOn(c);
    swatches.append(sw);
  }
  const words = node("div", "llm-cmp-legend-words",
    `Fixed scale: shades saturate at ±${scale} nats (a factor of ` +
    `${Math.exp(scale).toFixed(1)} in probability). Blue: the reference found the piece ` +
    "likelier; red: less likely. ▶ marks where the greedy choices first differ. " +
    "Hover a piece for its numbers.");
  legend.replaceChildren(title, swatches, words);
}

function render({ model, el }) {
  const root = node("div", "llm-cmp");
  const prompt = node("div", "llm-cmp-prompt");
  const state = node("div", "llm-cmp-state");
  const legend = node("div", "llm-cmp-legend");
  const cols = node("div", "llm-cmp-cols");
  const note = node("div", "llm-cmp-note");
  const hover = node("div", "llm-cmp-hover");
  hover.hidden = true;
  hover.setAttribute("role", "status");
  note.dataset.field = "note";
  root.append(prompt, state, legend, cols, note, hover);
  el.append(root);
  let columns = [];
  let marked = null;

  // The readout floats beside the piece under the pointer: below it, or above it when the
  // view has no room below; never under the pointer (it ignores the pointer).
  function place(span) {
    hover.hidden = false;
    hover.style.left = "0px"; // measured where the whole width of the view is free
    hover.style.top = "0px";
    const box = root.getBoundingClientRect();
    const at = span.getBoundingClientRect();
    const w = hover.offsetWidth;
    const h = hover.offsetHeight;
    const left = Math.max(0, Math.min(at.left - box.left, box.width - w));
    let top = at.bottom - box.top + 4;
    if (top + h > root.clientHeight && at.top - box.top - h - 4 >= 0) top = at.top - box.top - h - 4;
    hover.style.left = `${left}px`;
    hover.style.top = `${top}px`;
  }

  function show(span) {
    if (marked) marked.classList.remove("llm-cmp-on");
    marked = span;
    span.classList.add("llm-cmp-on");
    hover.textContent = span.dataset.tip || "";
    place(span);
  }

  function hide(span) {
    if (span && marked !== span) return;
    if (marked) marked.classList.remove("llm-cmp-on");
    marked = null;
    hover.hidden = true;
  }

  function build() {
    const labels = model.get("labels") || [];
    cols.style.gridTemplateColumns = `repeat(${Math.max(1, labels.length)}, minmax(200px, 1fr))`;
    cols.replaceChildren();
    columns = labels.map((label, i) => {
      const col = node("div", "llm-cmp-col");
      col.dataset.column = String(i);
      const head = node("div", "llm-cmp-label", label);
      const ref = node("div", "llm-cmp-ref");
      const first = node("div", "llm-cmp-first");
      const own = node("div", "llm-cmp-colnote");
      const text = node("div", "llm-cmp-text");
      text.addEventListener("scroll", () => hide(null));
      const stats = node("div", "llm-cmp-stats");
      col.append(head, ref, first, own, text, stats);
      cols.append(col);
      return { col, ref, first, own, text, stats, shaded: false };
    });
  }

  function streamed() {
    const texts = model.get("texts") || [];
    const stats = model.get("stats") || [];
    const active = model.get("active");
    columns.forEach((c, i) => {
      c.col.dataset.active = String(i === active);
      if (!c.shaded) setText(c.text, texts[i] || "");
      setText(c.stats, stats[i] || "");
    });
    const s = model.get("state") || "";
    root.dataset.state = s;
    setText(state, STATES[s] ?? s);
    setText(prompt, model.get("prompt") || "");
    setText(note, model.get("note") || "");
  }

  function shaded() {
    const pieces = model.get("pieces") || [];
    const tips = model.get("tips") || [];
    const counts = model.get("counts") || [];
    const diverge = model.get("diverge") || [];
    const captions = model.get("captions") || [];
    const firsts = model.get("firsts") || [];
    const notes = model.get("column_notes") || [];
    const scale = model.get("scale") || 2;
    const deltas = float32s(model.get("deltas"));
    hide(null);
    let offset = 0;
    columns.forEach((c, i) => {
      setText(c.ref, captions[i] || "");
      setText(c.first, firsts[i] || "");
      setText(c.own, notes[i] || "");
      const mine = pieces[i] || [];
      const n = counts[i] || 0;
      if (!mine.length) { offset += n; return; }
      c.shaded = true;
      const spans = [];
      mine.forEach((text, j) => {
        if (j === diverge[i]) {
          const mark = node("span", "llm-cmp-diverge", "▶");
          mark.title = firsts[i] || "the greedy choices first differ here";
          mark.dataset.diverge = String(j);
          spans.push(mark);
        }
        const back = shadeOf(deltas[offset + j], scale);
        const span = node("span", "llm-cmp-piece", text);
        span.style.background = rgb(back);
        span.style.color = inkOn(back);
        span.dataset.tip = (tips[i] || [])[j] || "";
        span.tabIndex = 0;
        span.addEventListener("mouseenter", () => show(span));
        span.addEventListener("focus", () => show(span));
        span.addEventListener("mouseleave", () => hide(span));
        span.addEventListener("blur", () => hide(span));
        spans.push(span);
      });
      c.text.replaceChildren(...spans);
      offset += n;
    });
    const any = columns.some((c) => c.shaded);
    legend.hidden = !any;
    if (any) buildLegend(legend, scale);
  }

  build();
  streamed();
  shaded();
  const listeners = [["change:labels", () => { build(); streamed(); shaded(); }]];
  for (const name of ["texts", "stats", "active", "state", "note", "prompt"]) {
    listeners.push([`change:${name}`, streamed]);
  }
  for (const name of ["pieces", "deltas", "diverge", "counts", "captions", "firsts",
    "column_notes", "scale"]) {
    listeners.push([`change:${name}`, shaded]);
  }
  return listen(model, listeners);
}

export default { render };
