// The attention view of llm_magic: a canvas heatmap of one head, selectors, a grid
// of every head, and the tokens as text. Weights arrive as float16 bytes, one head
// at a time, when the selection changes. Every token is set with textContent.

// The colours are the ramp of llm_magic/common/heatmap.py (_shared.js: PALETTE).
const MAX_SIDE = 480; // pixels of the heatmap on screen
const THUMB_SIDE = 40; // pixels of a thumbnail on screen (at least)
const LABELLED = 10; // rows and columns get token labels when a cell is this many pixels

function cellPixels(size) {
  return Math.max(1, Math.min(24, Math.floor(MAX_SIDE / size)));
}

function render({ model, el: root }) {
  const box = node("div", "llm-attn");
  const bar = node("div", "llm-attn-bar");
  const title = node("span", "llm-attn-title");
  const layerSelect = node("select", "llm-attn-layer");
  const headSelect = node("select", "llm-attn-head");
  const layerLabel = node("label", "", "Layer ");
  layerLabel.append(layerSelect);
  const headLabel = node("label", "", " Head ");
  headLabel.append(headSelect);
  bar.append(title, layerLabel, headLabel);

  const main = node("div", "llm-attn-main");
  const plot = node("div", "llm-attn-plot");
  const canvas = node("canvas", "llm-attn-heatmap");
  const rowLabels = node("div", "llm-attn-rows");
  const colLabels = node("div", "llm-attn-cols");
  const axes = node("div", "llm-attn-axes", "rows: query token, columns: key token");
  plot.append(node("div"), colLabels, rowLabels, canvas, node("div"), axes);
  const gridBox = node("div", "llm-attn-grid");
  const gridTitle = node("div", "llm-attn-grid-title", "Every head (rows: layers, columns: heads)");
  const thumbs = node("canvas", "llm-attn-thumbs");
  gridBox.append(gridTitle, thumbs);
  main.append(plot, gridBox);

  const hover = node("div", "llm-attn-hover", "Hover over the map to read a weight; click a token below.");
  const strip = node("div", "llm-attn-tokens");
  box.append(bar, main, hover, strip);
  root.append(box);

  let weights = new Float32Array(0);
  let size = 0;
  let spans = [];
  const offscreen = document.createElement("canvas");

  function fillSelects() {
    const nl = model.get("n_layers");
    const nh = model.get("n_heads");
    layerSelect.replaceChildren();
    for (let i = 0; i < nl; i++) layerSelect.append(new Option(String(i), String(i)));
    headSelect.replaceChildren();
    for (let i = 0; i < nh; i++) headSelect.append(new Option(String(i), String(i)));
    headSelect.append(new Option("mean of heads", "mean"));
    syncSelects();
  }

  function syncSelects() {
    layerSelect.value = String(model.get("layer"));
    headSelect.value = model.get("mean") ? "mean" : String(model.get("head"));
  }

  function fillTokens() {
    const tokens = model.get("tokens") || [];
    const prompt = model.get("prompt_tokens");
    strip.replaceChildren();
    spans = tokens.map((token, i) => {
      const span = node("span", "llm-attn-token", token);
      span.dataset.index = String(i);
      span.title = `token ${i}`;
      if (prompt >= 0 && i >= prompt) span.classList.add("llm-attn-generated");
      span.addEventListener("click", () => {
        model.set("selected", model.get("selected") === i ? -1 : i);
        model.save_changes();
      });
      strip.append(span);
      return span;
    });
    const t = model.get("model_name");
    const kind = model.get("causal") ? "causal" : "encoder";
    title.textContent = `${t} (${kind}), ${tokens.length} tokens `;
    fillAxes(tokens);
  }

  function fillAxes(tokens) {
    const n = tokens.length;
    const cell = cellPixels(n);
    rowLabels.replaceChildren();
    colLabels.replaceChildren();
    const labelled = n > 0 && cell >= LABELLED;
    plot.classList.toggle("llm-attn-labelled", labelled);
    if (!labelled) return;
    const font = `${Math.min(11, cell - 2)}px`;
    for (const token of tokens) {
      const row = node("div", "llm-attn-label", token);
      row.style.height = `${cell}px`;
      row.style.lineHeight = `${cell}px`;
      row.style.fontSize = font;
      rowLabels.append(row);
      const col = node("div", "llm-attn-label", token);
      col.style.width = `${cell}px`;
      col.style.lineHeight = `${cell}px`;
      col.style.fontSize = font;
      colLabels.append(col);
    }
  }

  function drawHeatmap() {
    size = model.get("size");
    weights = halves(model.get("data"));
    if (!size || weights.length !== size * size) return;
    let top = 0;
    for (let i = 0; i < weights.length; i++) if (weights[i] > top) top = weights[i];
    const scale = top > 0 ? 254 / top : 0;
    offscreen.width = size;
    offscreen.height = size;
    const octx = offscreen.getContext("2d");
    const image = octx.createImageData(size, size);
    const px = image.data;
    for (let i = 0; i < weights.length; i++) {
      px.set(paletteColour(Math.max(0, Math.min(254, Math.round(weights[i] * scale)))), 4 * i);
      px[4 * i + 3] = 255;
    }
    octx.putImageData(image, 0, 0);
    const cell = cellPixels(size);
    const side = Math.min(size * cell, Math.max(MAX_SIDE, size));
    canvas.width = side;
    canvas.height = side;
    canvas.style.width = `${Math.min(side, MAX_SIDE)}px`;
    canvas.style.height = `${Math.min(side, MAX_SIDE)}px`;
    paintHeatmap();
    canvas.dataset.drawn = model.get("data_key");
    canvas.dataset.max = top.toFixed(4);
    shadeTokens();
  }

  function paintHeatmap() {
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(offscreen, 0, 0, canvas.width, canvas.height);
    const sel = model.get("selected");
    if (sel >= 0 && size) {
      const h = canvas.height / size;
      ctx.strokeStyle = "#e6550d";
      ctx.lineWidth = Math.max(1, Math.min(2, h / 2));
      ctx.strokeRect(0, sel * h, canvas.width, h);
    }
  }

  function shadeTokens() {
    const sel = model.get("selected");
    let top = 0;
    if (sel >= 0 && sel < size) {
      for (let j = 0; j < size; j++) top = Math.max(top, weights[sel * size + j]);
    }
    spans.forEach((span, j) => {
      span.classList.toggle("llm-attn-selected", j === sel);
      if (sel >= 0 && sel < size && top > 0) {
        const w = weights[sel * size + j];
        span.style.backgroundColor = `rgba(33, 113, 181, ${(0.85 * w) / top})`;
        span.dataset.weight = w.toFixed(4);
      } else {
        span.style.backgroundColor = "";
        delete span.dataset.weight;
      }
    });
    paintHeatmap();
  }

  function cellAt(event) {
    const at = cellUnder(canvas, event, size, size);
    return at && { row: at.y, col: at.x };
  }

  canvas.addEventListener("mousemove", (event) => {
    const at = cellAt(event);
    if (!at) return;
    const tokens = model.get("tokens");
    const w = weights[at.row * size + at.col];
    hover.textContent =
      `query ${at.row} "${tokens[at.row]}" \u2192 key ${at.col} "${tokens[at.col]}": ${w.toFixed(4)}`;
    hover.dataset.value = w.toFixed(4);
  });
  canvas.addEventListener("mouseleave", () => {
    hover.textContent = "Hover over the map to read a weight; click a token below.";
    delete hover.dataset.value;
  });
  canvas.addEventListener("click", (event) => {
    const at = cellAt(event);
    if (!at) return;
    model.set("selected", at.row);
    model.save_changes();
  });

  const thumbOff = document.createElement("canvas");
  let thumbScale = 1;
  const GAP = 2;

  function drawThumbs() {
    const nl = model.get("n_layers");
    const nh = model.get("n_heads");
    const s = model.get("thumb_size");
    const levels = bytesOf(model.get("thumbs"));
    if (!s || levels.length !== nl * nh * s * s) return;
    thumbScale = Math.max(1, Math.ceil(THUMB_SIDE / s));
    const w = nh * (s + GAP) - GAP;
    const h = nl * (s + GAP) - GAP;
    thumbOff.width = w;
    thumbOff.height = h;
    const octx = thumbOff.getContext("2d");
    const image = octx.createImageData(w, h);
    const px = image.data;
    for (let i = 0; i < px.length; i += 4) {
      px[i] = px[i + 1] = px[i + 2] = 224;
      px[i + 3] = 255;
    }
    for (let l = 0; l < nl; l++) {
      for (let hd = 0; hd < nh; hd++) {
        const base = (l * nh + hd) * s * s;
        for (let y = 0; y < s; y++) {
          for (let x = 0; x < s; x++) {
            const o = 4 * ((l * (s + GAP) + y) * w + hd * (s + GAP) + x);
            px.set(paletteColour(levels[base + y * s + x]), o);
          }
        }
      }
    }
    octx.putImageData(image, 0, 0);
    thumbs.width = w * thumbScale;
    thumbs.height = h * thumbScale;
    paintThumbs();
  }

  function paintThumbs() {
    const ctx = thumbs.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(thumbOff, 0, 0, thumbs.width, thumbs.height);
    const s = model.get("thumb_size");
    const unit = (s + GAP) * thumbScale;
    ctx.strokeStyle = "#e6550d";
    ctx.lineWidth = 2;
    const l = model.get("layer");
    if (model.get("mean")) {
      ctx.strokeRect(1, l * unit + 1, thumbs.width - 2, s * thumbScale - 2);
    } else {
      ctx.strokeRect(model.get("head") * unit + 1, l * unit + 1, s * thumbScale - 2, s * thumbScale - 2);
    }
  }

  thumbs.addEventListener("click", (event) => {
    const rect = thumbs.getBoundingClientRect();
    const s = model.get("thumb_size");
    const unit = (s + GAP) * thumbScale * (rect.width / thumbs.width);
    const hd = Math.floor((event.clientX - rect.left) / unit);
    const l = Math.floor((event.clientY - rect.top) / unit);
    if (l < 0 || hd < 0 || l >= model.get("n_layers") || hd >= model.get("n_heads")) return;
    model.set("layer", l);
    model.set("head", hd);
    model.set("mean", false);
    model.save_changes();
  });

  layerSelect.addEventListener("change", () => {
    model.set("layer", Number(layerSelect.value));
    model.save_changes();
  });
  headSelect.addEventListener("change", () => {
    if (headSelect.value === "mean") {
      model.set("mean", true);
    } else {
      model.set("mean", false);
      model.set("head", Number(headSelect.value));
    }
    model.save_changes();
  });

  const onChoice = () => {
    syncSelects();
    paintThumbs();
  };
  const onTokens = () => {
    fillTokens();
    shadeTokens();
  };
  const listeners = [
    ["change:data", drawHeatmap], ["change:selected", shadeTokens],
    ["change:layer", onChoice], ["change:head", onChoice], ["change:mean", onChoice],
    ["change:thumbs", drawThumbs], ["change:tokens", onTokens],
  ];
  const unlisten = listen(model, listeners);

  fillSelects();
  fillTokens();
  drawHeatmap();
  drawThumbs();

  return unlisten;
}

export default { render };
