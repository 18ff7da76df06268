// The side-by-side view of llm_magic: one column per generation. Text streams into
// the columns; once the cross-scores arrive each column shows its pieces shaded by
// Δlog-probability (float32 bytes), with a marker where the greedy choices first
// diverge. Every text is set with textContent.

const NEG = [214, 39, 40]; // the reference found the piece less likely
const POS = [31, 119, 180]; // the reference found it likelier
const STATES = { waiting: "waiting for the model…", generating: "generating…",
  scoring: "cross-scoring…", done: "", error: "" };

function colour(delta, scale) {
  const x = Number.isFinite(delta) ? Math.min(1, Math.abs(delta) / scale) : 0;
  return rgb(mix(WHITE, delta < 0 ? NEG : POS, x * 0.8));
}

function render({ model, el }) {
  const root = node("div", "llm-cmp");
  const prompt = node("div", "llm-cmp-prompt");
  const state = node("div", "llm-cmp-state");
  const cols = node("div", "llm-cmp-cols");
  const hover = node("div", "llm-cmp-hover");
  const legend = node("div", "llm-cmp-legend");
  const note = node("div", "llm-cmp-note");
  note.dataset.field = "note";
  root.append(prompt, state, cols, hover, legend, note);
  el.append(root);
  let columns = [];

  function build() {
    const labels = model.get("labels") || [];
    cols.style.gridTemplateColumns = `repeat(${Math.max(1, labels.length)}, minmax(0, 1fr))`;
    cols.replaceChildren();
    columns = labels.map((label, i) => {
      const col = node("div", "llm-cmp-col");
      col.dataset.column = String(i);
      const head = node("div", "llm-cmp-label", label);
      const ref = node("div", "llm-cmp-ref");
      const text = node("div", "llm-cmp-text");
      const stats = node("div", "llm-cmp-stats");
      col.append(head, ref, text, stats);
      cols.append(col);
      return { col, ref, text, stats, shaded: false };
    });
  }

  function streamed() {
    const texts = model.get("texts") || [];
    const stats = model.get("stats") || [];
    const active = model.get("active");
    columns.forEach((c, i) => {
      c.col.dataset.active = String(i === active);
      if (!c.shaded && c.text.textContent !== (texts[i] || "")) c.text.textContent = texts[i] || "";
      c.stats.textContent = stats[i] || "";
    });
    const s = model.get("state") || "";
    root.dataset.state = s;
    state.textContent = STATES[s] ?? s;
    prompt.textContent = model.get("prompt") || "";
    note.textContent = model.get("note") || "";
  }

  function shaded() {
    const pieces = model.get("pieces") || [];
    const tips = model.get("tips") || [];
    const counts = model.get("counts") || [];
    const diverge = model.get("diverge") || [];
    const refs = model.get("references") || [];
    const scale = model.get("scale") || 1;
    const deltas = float32s(model.get("deltas"));
    let offset = 0;
    columns.forEach((c, i) => {
      const mine = pieces[i] || [];
      const n = counts[i] || 0;
      if (!mine.length) { offset += n; return; }
      c.shaded = true;
      c.ref.textContent = refs[i] === "greedy" ? "Δ log p against the greedy choice"
        : `Δ log p: ${refs[i]} − ${model.get("labels")[i]}`;
      const spans = [];
      mine.forEach((text, j) => {
        if (j === diverge[i]) {
          const mark = node("span", "llm-cmp-diverge", "▶");
          mark.title = "the greedy choices diverge here";
          mark.dataset.diverge = String(j);
          spans.push(mark);
        }
        const d = deltas[offset + j];
        const span = node("span", "llm-cmp-piece", text);
        span.style.background = colour(d, scale);
        span.title = (tips[i] || [])[j] || "";
        span.tabIndex = 0;
        const show = () => { hover.textContent = span.title; };
        span.addEventListener("mouseenter", show);
        span.addEventListener("focus", show);
        spans.push(span);
      });
      c.text.replaceChildren(...spans);
      offset += n;
    });
    legend.textContent = columns.some((c) => c.shaded)
      ? "Shading: blue = the reference found the piece likelier, red = less likely; ▶ = first divergence of the greedy choices."
      : "";
  }

  build();
  streamed();
  shaded();
  const listeners = [["change:labels", () => { build(); streamed(); shaded(); }]];
  for (const name of ["texts", "stats", "active", "state", "note", "prompt"]) {
    listeners.push([`change:${name}`, streamed]);
  }
  for (const name of ["pieces", "deltas", "diverge", "counts"]) {
    listeners.push([`change:${name}`, shaded]);
  }
  return listen(model, listeners);
}

export default { render };
