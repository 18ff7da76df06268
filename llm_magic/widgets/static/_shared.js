// What the views of llm_magic share. anywidget takes one ES module per view and the views
// import nothing, so llm_magic/widgets/_common.py (esm) puts this file in front of each
// view's own module: these are plain top-level names, and a view must not define them
// again (tests/test_static.py checks). Every text goes in with textContent.

// -- the DOM

// An element with a class and a text (set as text, never parsed as markup).
function node(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

// Sets a text only when it changed: a selection in it survives an update that changed nothing.
function setText(e, text) {
  if (e.textContent !== text) e.textContent = text;
}

// Listens to [event, handler] pairs; returns what stops them all (render's clean-up).
function listen(model, listeners) {
  for (const [name, fn] of listeners) model.on(name, fn);
  return () => {
    for (const [name, fn] of listeners) model.off(name, fn);
  };
}

// -- numbers as they arrive: little-endian bytes (DataView, ArrayBuffer or a typed array)

function asView(value) {
  if (!value) return new DataView(new ArrayBuffer(0));
  if (value instanceof DataView) return value;
  if (value instanceof ArrayBuffer) return new DataView(value);
  if (ArrayBuffer.isView(value)) return new DataView(value.buffer, value.byteOffset, value.byteLength);
  return new DataView(new ArrayBuffer(0));
}

function bytesOf(value) {
  const view = asView(value);
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

let HALF = null; // every float16 bit pattern as a float, made on first use
function halfTable() {
  if (HALF) return HALF;
  HALF = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const m = h & 0x3ff;
    let v;
    if (e === 0) v = m * 2 ** -24;
    else if (e === 31) v = m ? NaN : Infinity;
    else v = (1 + m / 1024) * 2 ** (e - 15);
    HALF[h] = sign * v;
  }
  return HALF;
}

function halves(value) {
  const view = asView(value);
  const table = halfTable();
  const out = new Float32Array(view.byteLength >> 1);
  for (let i = 0; i < out.length; i++) out[i] = table[view.getUint16(2 * i, true)];
  return out;
}

function int32s(value) {
  const view = asView(value);
  const out = new Int32Array(view.byteLength >> 2);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt32(4 * i, true);
  return out;
}

function float32s(value) {
  const view = asView(value);
  const out = new Float32Array(view.byteLength >> 2);
  for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(4 * i, true);
  return out;
}

// -- text and numbers as the views show them

// A token's text as every view shows it (llm_magic/common/visible.py, the same rule):
// whitespace and control characters made visible, bidirectional controls (U+202A to U+202E,
// U+2066 to U+2069, U+200E, U+200F, U+061C) written out as \u202e so none reorders the
// text after it. `breaks` keeps the line break after the arrow, for running text.
const SHOWN = { "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d" };
function visible(text, breaks = false) {
  let out = "";
  for (const ch of text) {
    const code = ch.codePointAt(0);
    if (SHOWN[ch]) out += SHOWN[ch] + (breaks && ch === "\n" ? "\n" : "");
    else if (code < 32 || code === 127) out += `\\x${code.toString(16).padStart(2, "0")}`;
    else if ((code >= 0x202a && code <= 0x202e) || (code >= 0x2066 && code <= 0x2069)
      || code === 0x200e || code === 0x200f || code === 0x61c) {
      out += `\\u${code.toString(16).padStart(4, "0")}`;
    } else out += ch;
  }
  return out;
}

// A probability as a percentage: "12.3 %", two significant digits below 0.1 %.
function percent(p) {
  if (!(p > 0)) return "0.0 %";
  const v = p * 100;
  return v >= 0.1 ? `${v.toFixed(1)} %` : `${v.toPrecision(2)} %`;
}

// -- colours

const WHITE = [255, 255, 255];

// The colour a fraction f of the way from one [r, g, b] to another.
function mix(from, to, f) {
  return from.map((a, c) => Math.round(a + (to[c] - a) * f));
}

function rgb(c) {
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

// The colour ramp of llm_magic/common/heatmap.py (0 -> white, 1 -> dark blue) in 255 levels:
// level l (0 to 254) is paletteColour(l), [r, g, b].
const RAMP = [WHITE, [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];
const PALETTE = (() => {
  const out = new Uint8ClampedArray(255 * 3);
  for (let i = 0; i < 255; i++) {
    const x = (i / 254) * (RAMP.length - 1);
    const k = Math.min(Math.floor(x), RAMP.length - 2);
    out.set(mix(RAMP[k], RAMP[k + 1], x - k), i * 3);
  }
  return out;
})();

function paletteColour(l) {
  return PALETTE.subarray(3 * l, 3 * l + 3);
}

// -- canvases

// The 2-D context of a canvas of w × h CSS pixels drawn at `ratio` device pixels each:
// scaled and cleared (null where the page gives none).
function canvasContext(canvas, w, h, ratio) {
  const width = Math.round(w * ratio);
  const height = Math.round(h * ratio);
  if (canvas.width !== width) canvas.width = width;
  if (canvas.height !== height) canvas.height = height;
  const ctx = canvas.getContext("2d");
  if (!ctx) return null;
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return ctx;
}

// The cell { x, y } of a grid of cols × rows cells that fills the canvas, under the pointer.
function cellUnder(canvas, event, cols, rows) {
  const rect = canvas.getBoundingClientRect();
  if (!cols || !rows || rect.width === 0 || rect.height === 0) return null;
  const x = Math.floor(((event.clientX - rect.left) / rect.width) * cols);
  const y = Math.floor(((event.clientY - rect.top) / rect.height) * rows);
  if (x < 0 || y < 0 || x >= cols || y >= rows) return null;
  return { x, y };
}

// WCAG 2 relative luminance of an [r, g, b] colour (0..255 each).
function luminance(c) {
  const lin = (v) => {
    const s = v / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2]);
}

// The text colour (black or white) with the higher contrast on background `c`: one of the
// two always reaches 4.58:1, so every shade keeps WCAG AA's 4.5:1 (common/heatmap.py: ink).
function inkOn(c) {
  const l = luminance(c);
  return 1.05 / (l + 0.05) >= (l + 0.05) / 0.05 ? "#fff" : "#000";
}

// A colour bar of the ramp (PALETTE, white to dark blue) for a view's legend: `ticks` are
// [fraction along the bar, text] pairs shown under it, `caption` says what the shade is, in
// which unit and over which range. common/heatmap.py colour_bar_html draws the same bar in
// the static snapshots.
function colourBar(caption, ticks) {
  const box = node("div", "llm-colourbar");
  box.style.cssText = "display:flex;flex-wrap:wrap;align-items:flex-start;gap:2px 10px;" +
    "font-size:11px;margin:4px 0";
  const bar = node("div", "llm-colourbar-scale");
  bar.style.cssText = "flex:none;width:160px";
  const ramp = node("canvas", "llm-colourbar-ramp");
  ramp.width = 255;
  ramp.height = 1;
  ramp.style.cssText = "display:block;width:160px;height:10px;border:1px solid #bbb;" +
    "box-sizing:border-box;image-rendering:pixelated";
  const ctx = ramp.getContext("2d");
  if (ctx) {
    for (let l = 0; l < 255; l++) {
      ctx.fillStyle = rgb(paletteColour(l));
      ctx.fillRect(l, 0, 1, 1);
    }
  }
  const marks = node("div", "llm-colourbar-ticks");
  marks.style.cssText = "position:relative;height:1.3em;width:160px";
  for (const [at, text] of ticks) {
    const tick = node("span", "llm-colourbar-tick", text);
    const f = Math.max(0, Math.min(1, at));
    tick.style.cssText = "position:absolute;top:0;white-space:nowrap;" +
      (f <= 0 ? "left:0" : f >= 1 ? "right:0" : `left:${(100 * f).toFixed(1)}%;transform:translateX(-50%)`);
    marks.append(tick);
  }
  bar.append(ramp, marks);
  const text = node("span", "llm-colourbar-caption", caption);
  text.style.cssText = "flex:1 1 220px;min-width:0;opacity:0.8";
  box.append(bar, text);
  return box;
}
