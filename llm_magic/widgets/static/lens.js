// The logit lens view of llm_magic: a canvas grid of layers (last on top) by positions,
// each cell shaded by the chosen metric and labelled with its top token; the next tokens
// along the top (starred where the final prediction is right), the input tokens along the
// bottom. Hover or focus a cell to read its top-k. The lens arrives once, as binary
// buffers; every token is set with textContent (or drawn as canvas text), never as markup.

// The cells are shaded with the ramp of llm_magic/common/heatmap.py (_shared.js: PALETTE), on
// the metric's scale that the kernel chose (the `scales` trait, LensMap.scale): the colour bar
// under the legend says what the shade shows, in which unit, over which range.
const METRICS = [
  ["probability", "probability of the final prediction"],
  ["rank", "rank of the final prediction (log)"],
  ["entropy", "entropy (nats)"],
  ["kl", "KL to the final layer (nats)"],
];
const CELL_H = 22; // pixels of a row
const WIDE = 60; // pixels of a column at least, while the grid fits in MAX_WIDTH
const WIDEST = 140; // ... and at most: wide enough for a long token on two lines
const MAX_WIDTH = 16000; // pixels of the whole grid at most (the page scrolls it)
const TEXT_MIN = 24; // columns this wide get their top token drawn in the cell
const LABEL_MIN = 10; // columns this wide get DOM labels along the top and bottom
const FONT = "ui-monospace, monospace";

function render({ model, el: root }) {
  const box = node("div", "llm-lens");
  const bar = node("div", "llm-lens-bar");
  const title = node("span", "llm-lens-title");
  const metricSelect = node("select", "llm-lens-metric");
  for (const [value, label] of METRICS) metricSelect.append(new Option(label, value));
  const metricLabel = node("label", "", "Shade by ");
  metricLabel.append(metricSelect);
  const strideSelect = node("select", "llm-lens-stride");
  const strideLabel = node("label", "", " Layer stride ");
  strideLabel.append(strideSelect);
  bar.append(title, metricLabel, strideLabel);
  const legend = node("div", "llm-lens-legend");
  const scaleBox = node("div", "llm-lens-scale");

  const scroll = node("div", "llm-lens-scroll");
  const plot = node("div", "llm-lens-plot");
  const nextLabels = node("div", "llm-lens-next llm-lens-axis");
  const rowLabels = node("div", "llm-lens-rows");
  const canvas = node("canvas", "llm-lens-grid");
  canvas.tabIndex = 0;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", "logit lens grid: arrow keys move between cells");
  // The arrow keys move between cells: the notebook's own shortcuts stay out of the grid.
  canvas.dataset.lmSuppressShortcuts = "true";
  const inputLabels = node("div", "llm-lens-inputs llm-lens-axis");
  plot.append(node("div", "llm-lens-corner", "next \u2192"), nextLabels, rowLabels, canvas,
    node("div", "llm-lens-corner", "input \u2192"), inputLabels);
  scroll.append(plot);
  const hover = node("div", "llm-lens-hover");
  box.append(bar, legend, scaleBox, scroll, hover);
  root.append(box);

  // Decoded once per change of the lens buffers.
  let lens = null;
  let shown = []; // row indices on screen, top (last layer) first
  let cellW = WIDE;
  let current = null; // { row, pos } under the pointer or the keyboard focus

  function decode() {
    const rows = model.get("layers").length;
    const size = model.get("size");
    const k = model.get("top_k");
    const ids = int32s(model.get("top_ids"));
    const texts = new Map();
    const known = int32s(model.get("vocab_ids"));
    const words = model.get("vocab_texts") || [];
    known.forEach((id, i) => texts.set(id, words[i]));
    lens = {
      rows, size, k, ids, texts,
      probs: halves(model.get("top_probs")),
      prob: halves(model.get("final_prob")),
      rank: int32s(model.get("final_rank")),
      entropy: halves(model.get("entropy")),
      kl: halves(model.get("kl")),
      correct: bytesOf(model.get("correct")),
    };
    fillStrides();
  }

  function text(id) {
    const word = lens.texts.get(id);
    return word === undefined ? `<${id}>` : word;
  }

  // A token in a cell `width` pixels wide, whole: at 11 px on one line, else at 9 px on one
  // line, else at 9 px on two (cut with an ellipsis only past two lines of the widest cell).
  function fitWord(ctx, word, width) {
    ctx.font = `11px ${FONT}`;
    if (ctx.measureText(word).width <= width) return { size: 11, lines: [word] };
    ctx.font = `9px ${FONT}`;
    if (ctx.measureText(word).width <= width) return { size: 9, lines: [word] };
    const chars = [...word];
    let cut = 1;
    while (cut < chars.length && ctx.measureText(chars.slice(0, cut + 1).join("")).width <= width) cut++;
    let rest = chars.slice(cut);
    if (ctx.measureText(rest.join("")).width > width) {
      while (rest.length > 1 && ctx.measureText(`${rest.join("")}\u2026`).width > width) rest = rest.slice(0, -1);
      rest = [...rest, "\u2026"];
    }
    return { size: 9, lines: [chars.slice(0, cut).join(""), rest.join("")] };
  }

  // The column width that shows every top token and axis token whole on one line at 10 px
  // (within WIDEST; a longer token goes on two lines, or more along the axes).
  function columnWidth(tokens) {
    const size = lens.size;
    if (size * WIDE > MAX_WIDTH) return Math.max(2, Math.floor(MAX_WIDTH / size));
    const ctx = canvas.getContext("2d");
    if (!ctx) return WIDE;
    const words = new Set(tokens.map((w) => visible(w)));
    for (let i = 0; i < lens.rows * size; i++) words.add(visible(text(lens.ids[i * lens.k])));
    ctx.font = `10px ${FONT}`;
    let need = 0;
    for (const word of words) need = Math.max(need, ctx.measureText(word).width + 8);
    const best = Math.max(WIDE, Math.min(WIDEST, Math.ceil(need)));
    return size * best <= MAX_WIDTH ? best : WIDE;
  }

  function scaleOf(metric) {
    const scales = model.get("scales") || {};
    return scales[metric] || { light: 0, dark: 1, log: false, caption: "", legend: "", ticks: [] };
  }

  // The shade (0 white to 1 darkest) of cell i: the kernel's scale, as LensMap.shade.
  function shadeOf(metric, i) {
    const s = scaleOf(metric);
    let v;
    if (metric === "probability") v = lens.prob[i];
    else if (metric === "rank") v = lens.rank[i];
    else if (metric === "entropy") v = lens.entropy[i];
    else v = lens.kl[i];
    const f = s.log ? (x) => Math.log(Math.max(x, 1e-12)) : (x) => x;
    const lo = f(s.light);
    const hi = f(s.dark);
    if (hi === lo) return 0;
    const x = (f(v) - lo) / (hi - lo);
    return Math.max(0, Math.min(1, Number.isFinite(x) ? x : 0));
  }

  function fillStrides() {
    const rows = lens.rows;
    strideSelect.replaceChildren();
    for (let s = 1; s < Math.max(rows, 2); s++) {
      if (s <= 4 || s === rows - 1 || s % 2 === 0) strideSelect.append(new Option(String(s), String(s)));
    }
    syncSelects();
  }

  function syncSelects() {
    metricSelect.value = model.get("metric");
    const stride = String(model.get("stride"));
    if (![...strideSelect.options].some((o) => o.value === stride)) {
      strideSelect.append(new Option(stride, stride));
    }
    strideSelect.value = stride;
    const s = scaleOf(model.get("metric"));
    legend.textContent = `${s.legend}; \u2605 = the final prediction is the next token; ` +
      "rows: layers, the output on top; columns: positions.";
    scaleBox.replaceChildren(colourBar(s.caption, s.ticks));
  }

  function rowsShown() {
    const stride = Math.max(1, model.get("stride"));
    const out = [];
    for (let r = 0; r < lens.rows; r += stride) out.push(r);
    if (out[out.length - 1] !== lens.rows - 1) out.push(lens.rows - 1);
    return out.reverse();
  }

  function fillLabels() {
    const tokens = model.get("tokens") || [];
    const prompt = model.get("prompt_tokens");
    const size = lens.size;
    cellW = columnWidth(tokens);
    title.textContent = `${model.get("model_name")}: ${lens.rows} rows (embeddings + ` +
      `${lens.rows - 1} blocks) \u00d7 ${size} positions, top ${lens.k} `;
    nextLabels.replaceChildren();
    inputLabels.replaceChildren();
    const labelled = cellW >= LABEL_MIN;
    box.classList.toggle("llm-lens-labelled", labelled);
    box.classList.toggle("llm-lens-narrow", cellW < WIDE);
    if (!labelled) return;
    for (let t = 0; t < size; t++) {
      const next = node("div", "llm-lens-label");
      next.style.width = `${cellW}px`;
      next.dataset.pos = String(t);
      if (t + 1 < tokens.length) next.append(node("span", "llm-lens-token", visible(tokens[t + 1])));
      if (lens.correct[t]) {
        next.classList.add("llm-lens-correct");
        next.append(node("span", "llm-lens-star", "\u2605"));
      }
      nextLabels.append(next);
      const input = node("div", "llm-lens-label", visible(tokens[t] || ""));
      input.style.width = `${cellW}px`;
      input.dataset.pos = String(t);
      if (prompt >= 0 && t >= prompt) input.classList.add("llm-lens-generated");
      inputLabels.append(input);
    }
  }

  function fillRows() {
    const layers = model.get("layers");
    rowLabels.replaceChildren();
    for (const r of shown) {
      const label = node("div", "llm-lens-label", layers[r]);
      label.style.height = `${CELL_H}px`;
      label.style.lineHeight = `${CELL_H}px`;
      rowLabels.append(label);
    }
  }

  function draw() {
    if (!lens || !lens.size || lens.ids.length !== lens.rows * lens.size * lens.k) return;
    shown = rowsShown();
    fillRows();
    const metric = model.get("metric");
    const w = lens.size * cellW;
    const h = shown.length * CELL_H;
    const ratio = Math.max(1, Math.min(window.devicePixelRatio || 1, 16384 / Math.max(w, 1)));
    canvas.style.width = `${w}px`;
    canvas.style.height = `${h}px`;
    const ctx = canvasContext(canvas, w, h, ratio);
    if (!ctx) return;
    ctx.textBaseline = "middle";
    let cut = 0; // tokens too long for two lines of the widest column
    shown.forEach((r, y) => {
      for (let t = 0; t < lens.size; t++) {
        const i = r * lens.size + t;
        const shade = paletteColour(Math.round(shadeOf(metric, i) * 254));
        ctx.fillStyle = rgb(shade);
        ctx.fillRect(t * cellW, y * CELL_H, cellW, CELL_H);
        if (cellW >= TEXT_MIN) {
          const word = visible(text(lens.ids[i * lens.k]));
          const fit = fitWord(ctx, word, cellW - 6);
          if (fit.lines.join("") !== word) cut++;
          ctx.font = `${fit.size}px ${FONT}`;
          ctx.fillStyle = inkOn(shade);
          const middle = y * CELL_H + CELL_H / 2;
          if (fit.lines.length === 1) ctx.fillText(fit.lines[0], t * cellW + 3, middle);
          else fit.lines.forEach((line, j) => ctx.fillText(line, t * cellW + 3, middle + (j - 0.5) * 10));
        }
      }
    });
    if (cellW >= 4) {
      ctx.strokeStyle = "rgba(0, 0, 0, 0.08)";
      ctx.lineWidth = 1;
      for (let t = 1; t < lens.size; t++) {
        ctx.beginPath();
        ctx.moveTo(t * cellW + 0.5, 0);
        ctx.lineTo(t * cellW + 0.5, h);
        ctx.stroke();
      }
    }
    if (current) outline(ctx, current);
    canvas.dataset.drawn = `${metric}:${model.get("stride")}`;
    canvas.dataset.rows = shown.join(",");
    canvas.dataset.cut = String(cellW >= TEXT_MIN ? cut : -1);
    canvas.dataset.cellWidth = String(cellW);
  }

  function outline(ctx, at) {
    const y = shown.indexOf(at.row);
    if (y < 0) return;
    ctx.strokeStyle = "#e6550d";
    ctx.lineWidth = 2;
    ctx.strokeRect(at.pos * cellW + 1, y * CELL_H + 1, cellW - 2, CELL_H - 2);
  }

  function show(at) {
    current = at;
    draw();
    if (!at) {
      hover.replaceChildren(node("span", "llm-lens-hint",
        "Hover over a cell, or focus the grid and use the arrow keys, to read its top tokens."));
      delete hover.dataset.row;
      delete hover.dataset.pos;
      return;
    }
    const tokens = model.get("tokens");
    const layers = model.get("layers");
    const i = at.row * lens.size + at.pos;
    const next = at.pos + 1 < tokens.length ? `"${visible(tokens[at.pos + 1])}"` : "(end)";
    const head = node("div", "llm-lens-where",
      `${layers[at.row]}, position ${at.pos}: after "${visible(tokens[at.pos])}", next ${next}`);
    const list = node("ol", "llm-lens-top");
    for (let j = 0; j < lens.k; j++) {
      const id = lens.ids[i * lens.k + j];
      const p = lens.probs[i * lens.k + j];
      const item = node("li", "llm-lens-top-item");
      item.dataset.id = String(id);
      item.dataset.prob = p.toFixed(4);
      item.append(node("span", "llm-lens-top-text", visible(text(id))), node("span", "llm-lens-top-prob", ` ${percent(p)}`));
      list.append(item);
    }
    const final = lens.ids[((lens.rows - 1) * lens.size + at.pos) * lens.k];
    const facts = node("div", "llm-lens-facts",
      `final prediction "${visible(text(final))}": ${percent(lens.prob[i])}, rank ${lens.rank[i]}; ` +
      `entropy ${lens.entropy[i].toFixed(3)} nats; KL to the final layer ${lens.kl[i].toFixed(3)} nats`);
    hover.replaceChildren(head, list, facts);
    hover.dataset.row = String(at.row);
    hover.dataset.pos = String(at.pos);
  }

  function cellAt(event) {
    const at = lens && cellUnder(canvas, event, lens.size, shown.length);
    return at ? { row: shown[at.y], pos: at.x } : null;
  }

  canvas.addEventListener("mousemove", (event) => {
    const at = cellAt(event);
    if (at && (!current || at.row !== current.row || at.pos !== current.pos)) show(at);
  });
  canvas.addEventListener("mouseleave", () => {
    if (document.activeElement !== canvas) show(null);
  });
  canvas.addEventListener("focus", () => {
    if (!current && lens) show({ row: shown[0], pos: 0 });
  });
  canvas.addEventListener("blur", () => show(null));
  canvas.addEventListener("keydown", (event) => {
    if (!lens || !current) return;
    let y = shown.indexOf(current.row);
    let pos = current.pos;
    if (event.key === "ArrowLeft") pos -= 1;
    else if (event.key === "ArrowRight") pos += 1;
    else if (event.key === "ArrowUp") y -= 1;
    else if (event.key === "ArrowDown") y += 1;
    else if (event.key === "Home") pos = 0;
    else if (event.key === "End") pos = lens.size - 1;
    else return;
    event.preventDefault();
    y = Math.max(0, Math.min(shown.length - 1, y));
    pos = Math.max(0, Math.min(lens.size - 1, pos));
    show({ row: shown[y], pos });
    const left = pos * cellW;
    if (left < scroll.scrollLeft || left + cellW > scroll.scrollLeft + scroll.clientWidth) {
      scroll.scrollLeft = Math.max(0, left - scroll.clientWidth / 2);
    }
  });

  metricSelect.addEventListener("change", () => {
    model.set("metric", metricSelect.value);
    model.save_changes();
  });
  strideSelect.addEventListener("change", () => {
    model.set("stride", Number(strideSelect.value));
    model.save_changes();
  });

  const onChoice = () => {
    syncSelects();
    if (current && !rowsShown().includes(current.row)) current = null;
    draw();
  };
  const onLens = () => {
    decode();
    fillLabels();
    current = null;
    show(null);
  };
  const names = ["top_ids", "top_probs", "final_prob", "final_rank", "entropy", "kl", "correct",
    "vocab_ids", "vocab_texts", "tokens", "layers", "size"];
  const listeners = [
    ["change:metric", onChoice], ["change:stride", onChoice],
    ...names.map((name) => [`change:${name}`, onLens]),
  ];
  const unlisten = listen(model, listeners);

  onLens();

  return unlisten;
}

export default { render };
