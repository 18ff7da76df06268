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

// A token's text as every view shows it (llm_magic/common/visible.py): whitespace and
// control characters made visible.
const SHOWN = { "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d" };
function visible(text) {
  let out = "";
  for (const ch of text) {
    const code = ch.codePointAt(0);
    if (SHOWN[ch]) out += SHOWN[ch];
    else if (code < 32 || code === 127) out += `\\x${code.toString(16).padStart(2, "0")}`;
    else out += ch;
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
