// The attention view of llm_magic: a canvas heatmap of one head, selectors, a grid
// of every head, and the tokens as text. Weights arrive as float16 bytes, one head
// at a time, when the selection changes. Every token is set with textContent.

// The colours are the ramp of llm_magic/common/heatmap.py (_shared.js: PALETTE); the colour
// bar under the map says what they span. The map and the thumbnails shrink to the width of
// the output area (down to MIN_SIDE; below that the plot scrolls inside the view).
const MAX_SIDE = 480; // pixels of the heatmap on screen, at most
const MIN_SIDE = 160; // ... and at least
const ROW_LABELS = 120; // pixels the row labels beside the map take at most
const LABELLED = 10; // rows and columns get token labels when a cell is this many pixels
const GAP = 2; // pixels between thumbnails

function cellPixels(size, side) {
  return Math.max(1, Math.min(24, Math.floor(side / size)));
}

// What the colour bar says of a map whose largest weight is `top` (attention_map.py's
// to_html says the same).
function weightScale(top, mean) {
  const what = mean ? "the mean's largest" : "this head's largest";
  return {
    caption: `attention weight (each query row sums to 1): white = 0, darkest = ` +
      `${top.toFixed(3)}, ${what}`,
    ticks: [[0, "0"], [0.5, (top / 2).toFixed(2)], [1, top.toFixed(2)]],
  };
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
  // An encoder–decoder's view switches among its kinds (none for one map).
  const kindSelect = node("select", "llm-attn-kind");
  const kindLabel = node("label", "llm-attn-kindlabel", "Attention ");
  kindLabel.append(kindSelect);
  const KIND_NAMES = {
    encoder: "encoder self-attention (source \u00d7 source)",
    decoder: "decoder self-attention (output \u00d7 output)",
    cross: "cross-attention (output \u00d7 source)",
  };
  bar.append(title, kindLabel, layerLabel, headLabel);

  const main = node("div", "llm-attn-main");
  const plotBox = node("div", "llm-attn-plotbox");
  const plot = node("div", "llm-attn-plot");
  const canvas = node("canvas", "llm-attn-heatmap");
  const rowLabels = node("div", "llm-attn-rows");
  const colLabels = node("div", "llm-attn-cols");
  const axes = node("div", "llm-attn-axes", "rows: query token, columns: key token");
  plot.append(node("div"), colLabels, rowLabels, canvas, node("div"), axes);
  const scale = node("div", "llm-attn-scale");
  plotBox.append(plot, scale);
  const gridBox = node("div", "llm-attn-grid");
  const gridTitle = node("div", "llm-attn-grid-title",
    "Every head: rows = layers (L), columns = heads (H), each scaled to its own largest " +
    "weight; click one to open it");
  const thumbGrid = node("div", "llm-attn-thumbgrid");
  const thumbCols = node("div", "llm-attn-thumbcols");
  const thumbRows = node("div", "llm-attn-thumbrows");
  const thumbs = node("canvas", "llm-attn-thumbs");
  thumbGrid.append(node("div"), thumbCols, thumbRows, thumbs);
  gridBox.append(gridTitle, thumbGrid);
  main.append(plotBox, gridBox);

  const hover = node("div", "llm-attn-hover", "Hover over the map to read a weight; click a token below.");
  const stripName = node("div", "llm-attn-stripname");
  const strip = node("div", "llm-attn-tokens");
  const keyName = node("div", "llm-attn-stripname");
  const keyStrip = node("div", "llm-attn-tokens llm-attn-keytokens");
  // The strips' names and the columns' strip are on the page only for an encoder–decoder.
  box.append(bar, main, hover, strip);
  root.append(box);

  let weights = new Float32Array(0);
  let size = 0; // rows (queries)
  let cols = 0; // columns (keys): the source's tokens for cross-attention, else `size`
  let spans = [];
  let keySpans = []; // the columns' tokens where they are not the rows' (shaded on a click)
  let width = 0; // pixels of the view's width (0 until it is on the page)
  let labelRoom = ROW_LABELS; // pixels of the row labels at 11 px
  let side = MAX_SIDE; // pixels the map may take: what the width leaves beside the labels
  let hovered = null; // { row, col } under the pointer
  const offscreen = document.createElement("canvas");

  function sideNow() {
    if (!(width > 0)) return MAX_SIDE;
    return Math.max(MIN_SIDE, Math.min(MAX_SIDE, Math.floor(width - labelRoom - 12)));
  }

  // How wide the longest token is as a row label (11 px monospace, at most ROW_LABELS).
  function measureLabels(tokens) {
    const ctx = offscreen.getContext("2d");
    if (!ctx || !tokens.length) return ROW_LABELS;
    ctx.font = "11px ui-monospace, monospace";
    let most = 0;
    for (const token of tokens) most = Math.max(most, ctx.measureText(token).width);
    return Math.min(ROW_LABELS, Math.ceil(most) + 6);
  }

  function keyTokens() {
    const keys = model.get("key_tokens") || [];
    return keys.length ? keys : model.get("tokens") || [];
  }

  function axisNames() {
    const r = model.get("row_axis");
    const c = model.get("col_axis");
    return r ? [`${r} token (query)`, `${c} token (key)`] : ["query token", "key token"];
  }

  function fillKinds() {
    const kinds = model.get("kinds") || [];
    kindLabel.style.display = kinds.length ? "" : "none";
    kindSelect.replaceChildren();
    for (const k of kinds) kindSelect.append(new Option(KIND_NAMES[k] || k, k));
    kindSelect.value = model.get("kind");
  }

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
    const keys = model.get("key_tokens") || [];
    const prompt = model.get("prompt_tokens");
    const [rowName, colName] = [model.get("row_axis"), model.get("col_axis")];
    stripName.textContent = rowName
      ? `${rowName} tokens${keys.length ? ` (click one to shade the ${colName} tokens it read)` : ""}:`
      : "";
    keyName.textContent = keys.length ? `${colName} tokens:` : "";
    keyStrip.replaceChildren();
    keySpans = keys.map((token, j) => {
      const span = node("span", "llm-attn-token", token);
      span.dataset.index = String(j);
      span.title = `${colName} token ${j}`;
      keyStrip.append(span);
      return span;
    });
    if (rowName) strip.before(stripName);
    else stripName.remove();
    if (keys.length) strip.after(keyName, keyStrip);
    else {
      keyName.remove();
      keyStrip.remove();
    }
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
    const kind = model.get("kind_title") || (model.get("causal") ? "causal" : "encoder");
    const counted = keys.length
      ? `${tokens.length} ${rowName} \u00d7 ${keys.length} ${colName} tokens`
      : `${tokens.length} tokens`;
    title.textContent = `${t} (${kind}), ${counted} `;
    labelRoom = measureLabels(tokens);
    side = sideNow();
    fillAxes(tokens);
  }

  function fillAxes(tokens) {
    const keys = keyTokens();
    const n = Math.max(tokens.length, keys.length);
    const cell = cellPixels(n, side);
    const [rowName, colName] = axisNames();
    rowLabels.replaceChildren();
    colLabels.replaceChildren();
    const labelled = n > 0 && cell >= LABELLED;
    plot.classList.toggle("llm-attn-labelled", labelled);
    axes.textContent = labelled
      ? `rows: ${rowName}, columns: ${colName}`
      : `rows: ${rowName.replace("token", "tokens")} 0 to ${tokens.length - 1}, ` +
        `columns: ${colName.replace("token", "tokens")} 0 to ${keys.length - 1}`;
    if (!labelled) return;
    const font = `${Math.min(11, cell - 2)}px`;
    tokens.forEach((token, i) => {
      const row = node("div", "llm-attn-label", token);
      row.style.height = `${cell}px`;
      row.style.lineHeight = `${cell}px`;
      row.style.fontSize = font;
      row.title = `query ${i}`;
      rowLabels.append(row);
    });
    keys.forEach((token, i) => {
      const col = node("div", "llm-attn-label", token);
      col.style.width = `${cell}px`;
      col.style.lineHeight = `${cell}px`;
      col.style.fontSize = font;
      col.title = `key ${i}`;
      colLabels.append(col);
    });
  }

  function drawHeatmap() {
    size = model.get("size");
    cols = model.get("key_size") || size;
    weights = halves(model.get("data"));
    if (!size || weights.length !== size * cols) return;
    let top = 0;
    for (let i = 0; i < weights.length; i++) if (weights[i] > top) top = weights[i];
    const scaleBy = top > 0 ? 254 / top : 0;
    offscreen.width = cols;
    offscreen.height = size;
    const octx = offscreen.getContext("2d");
    const image = octx.createImageData(cols, size);
    const px = image.data;
    for (let i = 0; i < weights.length; i++) {
      px.set(paletteColour(Math.max(0, Math.min(254, Math.round(weights[i] * scaleBy)))), 4 * i);
      px[4 * i + 3] = 255;
    }
    octx.putImageData(image, 0, 0);
    // One canvas pixel per token where tokens outnumber the pixels; whole pixels per cell else.
    const most = Math.max(size, cols);
    const cell = cellPixels(most, side);
    const fits = most * cell <= side;
    const across = fits ? cols * cell : Math.max(1, Math.round((side * cols) / most));
    const down = fits ? size * cell : Math.max(1, Math.round((side * size) / most));
    const ratio = Math.max(1, Math.round(window.devicePixelRatio || 1));
    canvas.width = fits ? across * ratio : cols;
    canvas.height = fits ? down * ratio : size;
    canvas.style.width = `${across}px`;
    canvas.style.height = `${down}px`;
    paintHeatmap();
    canvas.dataset.drawn = model.get("data_key");
    canvas.dataset.max = top.toFixed(4);
    const { caption, ticks } = weightScale(top, model.get("mean"));
    scale.replaceChildren(colourBar(caption, ticks));
    shadeTokens();
  }

  function paintHeatmap() {
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(offscreen, 0, 0, canvas.width, canvas.height);
    if (!size) return;
    const unit = canvas.width / cols;
    const down = canvas.height / size;
    const css = canvas.width / Math.max(1, parseFloat(canvas.style.width) || canvas.width);
    const sel = model.get("selected");
    if (sel >= 0) {
      ctx.strokeStyle = "#e6550d";
      ctx.lineWidth = Math.max(1, Math.min(2 * css, down / 2));
      ctx.strokeRect(0, sel * down, canvas.width, down);
    }
    if (hovered) {
      // A dark ring inside a white one: seen on the palest and on the darkest shade.
      const x = hovered.col * unit;
      const y = hovered.row * down;
      const w = Math.max(unit, 4 * css);
      ctx.lineWidth = 3 * css;
      ctx.strokeStyle = "#fff";
      ctx.strokeRect(x - css, y - css, w + 2 * css, w + 2 * css);
      ctx.lineWidth = 1.5 * css;
      ctx.strokeStyle = "#111";
      ctx.strokeRect(x, y, w, w);
    }
    canvas.dataset.hover = hovered ? `${hovered.row}:${hovered.col}` : "";
  }

  function shadeTokens() {
    const sel = model.get("selected");
    let top = 0;
    if (sel >= 0 && sel < size) {
      for (let j = 0; j < cols; j++) top = Math.max(top, weights[sel * cols + j]);
    }
    // Square maps shade the one strip; cross-attention shades the source's strip.
    const shaded = keySpans.length ? keySpans : spans;
    if (keySpans.length) spans.forEach((span, i) => span.classList.toggle("llm-attn-selected", i === sel));
    shaded.forEach((span, j) => {
      if (!keySpans.length) span.classList.toggle("llm-attn-selected", j === sel);
      if (sel >= 0 && sel < size && top > 0 && j < cols) {
        const w = weights[sel * cols + j];
        const shade = paletteColour(Math.max(0, Math.min(254, Math.round((w / top) * 254))));
        span.style.backgroundColor = rgb(shade);
        span.style.color = inkOn(shade);
        span.dataset.weight = w.toFixed(4);
      } else {
        span.style.backgroundColor = "";
        span.style.color = "";
        delete span.dataset.weight;
      }
    });
    paintHeatmap();
  }

  function markLabels(at) {
    for (const [labels, i] of [[rowLabels, at && at.row], [colLabels, at && at.col]]) {
      for (const label of labels.querySelectorAll(".llm-attn-hovered")) label.classList.remove("llm-attn-hovered");
      if (at && labels.children[i]) labels.children[i].classList.add("llm-attn-hovered");
    }
  }

  function cellAt(event) {
    const at = cellUnder(canvas, event, cols, size);
    return at && { row: at.y, col: at.x };
  }

  canvas.addEventListener("mousemove", (event) => {
    const at = cellAt(event);
    if (!at) return;
    if (!hovered || hovered.row !== at.row || hovered.col !== at.col) {
      hovered = at;
      markLabels(at);
      paintHeatmap();
    }
    const tokens = model.get("tokens");
    const keys = keyTokens();
    const rowName = model.get("row_axis") || "query";
    const colName = model.get("col_axis") || "key";
    const w = weights[at.row * cols + at.col];
    hover.textContent =
      `${rowName} ${at.row} "${tokens[at.row]}" \u2192 ${colName} ${at.col} "${keys[at.col]}": ` +
      `${w.toFixed(4)}`;
    hover.dataset.value = w.toFixed(4);
  });
  canvas.addEventListener("mouseleave", () => {
    hover.textContent = "Hover over the map to read a weight; click a token below.";
    delete hover.dataset.value;
    hovered = null;
    markLabels(null);
    paintHeatmap();
  });
  canvas.addEventListener("click", (event) => {
    const at = cellAt(event);
    if (!at) return;
    model.set("selected", at.row);
    model.save_changes();
  });

  // Every head: an atlas of the thumbnails (thumb_size pixels each), drawn tile by tile at
  // `tile` pixels with GAP between them, rows and columns labelled in the DOM.
  const atlas = document.createElement("canvas");
  let tile = 40;

  function drawThumbs() {
    const nl = model.get("n_layers");
    const nh = model.get("n_heads");
    const s = model.get("thumb_size");
    const levels = bytesOf(model.get("thumbs"));
    if (!s || levels.length !== nl * nh * s * s) return;
    atlas.width = nh * s;
    atlas.height = nl * s;
    const octx = atlas.getContext("2d");
    const image = octx.createImageData(nh * s, nl * s);
    const px = image.data;
    for (let l = 0; l < nl; l++) {
      for (let hd = 0; hd < nh; hd++) {
        const base = (l * nh + hd) * s * s;
        for (let y = 0; y < s; y++) {
          for (let x = 0; x < s; x++) {
            const o = 4 * ((l * s + y) * nh * s + hd * s + x);
            px.set(paletteColour(levels[base + y * s + x]), o);
            px[o + 3] = 255;
          }
        }
      }
    }
    octx.putImageData(image, 0, 0);
    layoutThumbs();
  }

  function layoutThumbs() {
    const nl = model.get("n_layers");
    const nh = model.get("n_heads");
    const room = Math.min(width > 0 ? width - 32 : MAX_SIDE, MAX_SIDE);
    tile = Math.max(12, Math.min(40, Math.floor(room / nh) - GAP));
    const unit = tile + GAP;
    const short = tile < 22; // numbers only where "L12" or "H12" would not fit
    thumbCols.replaceChildren();
    for (let hd = 0; hd < nh; hd++) {
      const label = node("div", "llm-attn-thumblabel", short ? String(hd) : `H${hd}`);
      label.style.width = `${hd === nh - 1 ? tile : unit}px`;
      label.title = `head ${hd}`;
      thumbCols.append(label);
    }
    thumbRows.replaceChildren();
    for (let l = 0; l < nl; l++) {
      const label = node("div", "llm-attn-thumblabel", short ? String(l) : `L${l}`);
      label.style.height = `${l === nl - 1 ? tile : unit}px`;
      label.style.lineHeight = `${tile}px`;
      label.title = `layer ${l}`;
      thumbRows.append(label);
    }
    const ratio = Math.max(1, Math.round(window.devicePixelRatio || 1));
    thumbs.width = (nh * unit - GAP) * ratio;
    thumbs.height = (nl * unit - GAP) * ratio;
    thumbs.style.width = `${nh * unit - GAP}px`;
    thumbs.style.height = `${nl * unit - GAP}px`;
    paintThumbs();
  }

  function paintThumbs() {
    const nl = model.get("n_layers");
    const nh = model.get("n_heads");
    const s = model.get("thumb_size");
    if (!s || !atlas.width) return;
    const ctx = thumbs.getContext("2d");
    if (!ctx) return;
    const ratio = thumbs.width / Math.max(1, parseFloat(thumbs.style.width) || thumbs.width);
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.fillStyle = "#e0e0e0";
    ctx.fillRect(0, 0, thumbs.width, thumbs.height);
    const unit = tile + GAP;
    for (let l = 0; l < nl; l++) {
      for (let hd = 0; hd < nh; hd++) {
        ctx.drawImage(atlas, hd * s, l * s, s, s, hd * unit, l * unit, tile, tile);
      }
    }
    ctx.strokeStyle = "#e6550d";
    ctx.lineWidth = 2;
    const l = model.get("layer");
    if (model.get("mean")) {
      ctx.strokeRect(1, l * unit + 1, nh * unit - GAP - 2, tile - 2);
    } else {
      ctx.strokeRect(model.get("head") * unit + 1, l * unit + 1, tile - 2, tile - 2);
    }
  }

  thumbs.addEventListener("click", (event) => {
    const rect = thumbs.getBoundingClientRect();
    const unit = (tile + GAP) * (rect.width / (parseFloat(thumbs.style.width) || rect.width));
    const hd = Math.floor((event.clientX - rect.left) / unit);
    const l = Math.floor((event.clientY - rect.top) / unit);
    if (l < 0 || hd < 0 || l >= model.get("n_layers") || hd >= model.get("n_heads")) return;
    model.set("layer", l);
    model.set("head", hd);
    model.set("mean", false);
    model.save_changes();
  });

  kindSelect.addEventListener("change", () => {
    model.set("kind", kindSelect.value);
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

  // The output area's width sets the map's size: a narrower page gets a smaller map (its
  // labels follow), not a view that runs off the page.
  function resize() {
    if (box.clientWidth === width) return;
    width = box.clientWidth;
    const next = sideNow();
    if (next !== side) {
      side = next;
      fillAxes(model.get("tokens") || []);
      drawHeatmap();
    }
    layoutThumbs();
  }
  const observer = typeof ResizeObserver === "function"
    ? new ResizeObserver(() => window.requestAnimationFrame(resize)) : null;
  if (observer) observer.observe(box);

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
    ["change:kind", () => { fillKinds(); fillSelects(); onTokens(); }],
    ["change:key_tokens", onTokens], ["change:n_layers", fillSelects],
    ["change:n_heads", fillSelects],
  ];
  const unlisten = listen(model, listeners);

  width = box.clientWidth;
  fillKinds();
  fillSelects();
  fillTokens();
  drawHeatmap();
  drawThumbs();

  return () => {
    unlisten();
    if (observer) observer.disconnect();
  };
}

export default { render };
