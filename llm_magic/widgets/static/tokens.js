// The token probability view of llm_magic (anywidget ES module): the text, each token
// shaded by probability, entropy or surprisal; a side panel of the alternatives of the
// token under the pointer or the keyboard focus; clicking an alternative asks the
// kernel for a branch; breadcrumbs switch branches. Numbers arrive as binary buffers
// (int32 ids and ranks, float16 log-probabilities and entropies) and a string table.
// Every text is set with textContent.

const METRICS = ["probability", "entropy", "surprisal"];
const LIGHT = [255, 255, 255]; // a certain token (analysis/tokens.py: _LIGHT, _DARK)
const DARK = [230, 85, 13];
const SHOWN = { "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d" };
const STATES = { idle: "", running: "generating the branch\u2026", error: "" };

let HALF = null;
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

function asView(value) {
  if (!value) return new DataView(new ArrayBuffer(0));
  if (value instanceof DataView) return value;
  if (value instanceof ArrayBuffer) return new DataView(value);
  if (ArrayBuffer.isView(value)) return new DataView(value.buffer, value.byteOffset, value.byteLength);
  return new DataView(new ArrayBuffer(0));
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

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Keys pressed on a focused part of the view (arrows, Enter, Tab) are the view's: Lumino
// matches the notebook's shortcuts from the focused element up to the first element that
// carries this attribute, so each focusable element carries it itself.
function own(node) {
  node.dataset.lmSuppressShortcuts = "true";
  return node;
}

function button(className, text) {
  const b = own(el("button", className, text));
  b.type = "button";
  return b;
}

function visible(text) {
  return Array.from(text, (ch) => SHOWN[ch] ?? ch).join("");
}

function percent(p) {
  if (!(p > 0)) return "0.0 %";
  const v = p * 100;
  return v >= 0.1 ? `${v.toFixed(1)} %` : `${v.toPrecision(2)} %`;
}

function colour(x) {
  const f = Math.min(1, Math.max(0, x));
  const c = LIGHT.map((a, i) => Math.round(a + (DARK[i] - a) * f));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

// One branch's records, decoded from the buffers.
function decode(model) {
  const k = Math.max(1, model.get("k"));
  const ids = int32s(model.get("ids"));
  const n = ids.length;
  const top = int32s(model.get("top_ids"));
  const lps = halves(model.get("logprobs"));
  const ranks = int32s(model.get("ranks"));
  const entropy = halves(model.get("entropy"));
  const keys = int32s(model.get("string_ids"));
  const texts = model.get("strings") || [];
  const strings = new Map();
  keys.forEach((key, j) => strings.set(key, texts[j] ?? ""));
  const ok = top.length === n * k && lps.length === n * (k + 1) && ranks.length === n
    && entropy.length === n;
  const data = { k, n: ok ? n : 0, ids, top, lps, ranks, entropy, strings };
  data.text = (i) => strings.get(ids[i]) ?? "";
  data.logprob = (i) => lps[i * (k + 1)];
  data.alternatives = (i) => {
    const out = [];
    for (let j = 0; j < k; j++) {
      const id = top[i * k + j];
      if (id === -1) break;
      out.push({ choice: j, id, text: strings.get(id) ?? "", logprob: lps[i * (k + 1) + j + 1] });
    }
    return out;
  };
  data.inTop = (i) => ranks[i] > 0 && ranks[i] <= data.alternatives(i).length;
  return data;
}

// Each token's shade from 0 to 1, as analysis/tokens.py's shade() computes it.
function shades(data, metric) {
  const out = new Float32Array(data.n);
  if (metric === "probability") {
    for (let i = 0; i < data.n; i++) out[i] = 1 - Math.exp(data.logprob(i));
    return out;
  }
  let top = 0;
  for (let i = 0; i < data.n; i++) {
    const v = metric === "surprisal" ? -data.logprob(i) / Math.LN2 : data.entropy[i];
    out[i] = Number.isFinite(v) ? v : 0;
    top = Math.max(top, out[i]);
  }
  for (let i = 0; i < data.n; i++) out[i] = top > 0 ? out[i] / top : 0;
  return out;
}

function tokenBox(text, className) {
  return el("span", `llm-tokens-box ${className || ""}`.trim(), visible(text));
}

function render({ model, el: host }) {
  const root = own(el("div", "llm-tokens"));
  const head = el("div", "llm-tokens-head");
  const title = el("span", "llm-tokens-title");
  const metrics = el("div", "llm-tokens-metrics");
  metrics.setAttribute("role", "group");
  metrics.setAttribute("aria-label", "shade by");
  metrics.append(el("span", "llm-tokens-dim", "shade by "));
  const metricButtons = METRICS.map((m) => {
    const b = button("llm-tokens-metric", m);
    b.dataset.metric = m;
    b.addEventListener("click", () => {
      model.set("metric", m);
      model.save_changes();
    });
    metrics.append(b);
    return b;
  });
  head.append(title, metrics);

  const crumbs = el("nav", "llm-tokens-crumbs");
  crumbs.setAttribute("aria-label", "branches");
  const main = el("div", "llm-tokens-main");
  const box = el("div", "llm-tokens-text");
  const stream = el("pre", "llm-tokens-stream");
  const streamLead = el("span", "llm-tokens-lead");
  const streamText = el("span", "llm-tokens-streamed");
  stream.append(streamLead, streamText);
  const panel = el("aside", "llm-tokens-panel");
  panel.setAttribute("aria-live", "polite");
  const panelHead = el("div", "llm-tokens-panel-head",
    "Point at a token, or focus it with Tab, to see its alternatives.");
  const table = el("table", "llm-tokens-alts");
  panel.append(panelHead, table);
  main.append(box, stream, panel);
  const legend = el("div", "llm-tokens-legend");
  const status = el("div", "llm-tokens-status");
  const state = el("span", "llm-tokens-state");
  const stop = button("llm-tokens-stop", "Stop");
  stop.addEventListener("click", () => model.send({ action: "stop" }));
  status.append(state, stop);
  const note = el("div", "llm-tokens-note");
  const waits = el("div", "llm-tokens-wait");
  const error = el("div", "llm-tokens-error");
  error.setAttribute("role", "alert");
  root.append(head, crumbs, main, legend, status, note, waits, error);
  host.append(root);

  let data = decode(model);
  let spans = [];
  let focused = -1; // the token the panel shows
  let pinned = -1; // the token last clicked or focused: the panel returns to it

  function drawTokens() {
    data = decode(model);
    box.replaceChildren();
    const lead = model.get("lead") || "";
    if (lead) box.append(el("span", "llm-tokens-lead", lead));
    spans = [];
    for (let i = 0; i < data.n; i++) {
      const text = data.text(i);
      const span = own(tokenBox(text, "llm-tokens-token"));
      span.tabIndex = 0;
      span.dataset.index = String(i);
      if (!data.inTop(i)) span.classList.add("llm-tokens-outside");
      box.append(span);
      for (const ch of text) if (ch === "\n") box.append(document.createElement("br"));
      spans.push(span);
    }
    root.dataset.revision = String(model.get("revision"));
    shade();
    if (pinned >= data.n) pinned = -1;
    show(focused < data.n ? focused : pinned);
  }

  function shade() {
    const metric = model.get("metric");
    const x = shades(data, metric);
    spans.forEach((span, i) => {
      span.style.backgroundColor = colour(x[i]);
      span.style.color = x[i] > 0.6 ? "#fff" : "#222";
      span.dataset.shade = x[i].toFixed(3);
    });
    metricButtons.forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.metric === metric)));
    root.dataset.metric = metric;
    legend.textContent = (model.get("legends") || {})[metric] || "";
  }

  function cell(tr, text, className) {
    const td = el("td", className, text);
    tr.append(td);
    return td;
  }

  function row(alt, i, chosen) {
    const tr = el("tr", "llm-tokens-alt");
    tr.dataset.rank = String(alt.choice + 1);
    tr.dataset.id = String(alt.id);
    const p = Math.exp(alt.logprob);
    cell(tr, String(alt.choice + 1), "llm-tokens-rank");
    cell(tr, percent(p), "llm-tokens-prob").dataset.value = String(p);
    const where = cell(tr, "", "llm-tokens-alt-token");
    if (model.get("branchable") && !chosen) {
      const b = button("llm-tokens-branch");
      b.title = "branch here with this token";
      b.append(tokenBox(alt.text));
      b.addEventListener("click", () => {
        model.send({ action: "branch", position: i, choice: alt.choice, id: alt.id });
      });
      where.append(b);
    } else {
      where.append(tokenBox(alt.text));
    }
    cell(tr, chosen ? "\u25c0 chosen" : "", "llm-tokens-mark");
    if (chosen) tr.classList.add("llm-tokens-chosen");
    return tr;
  }

  function show(i) {
    focused = i;
    spans.forEach((span, j) => span.classList.toggle("llm-tokens-focused", j === i));
    table.replaceChildren();
    if (i < 0 || i >= data.n) {
      panelHead.textContent = "Point at a token, or focus it with Tab, to see its alternatives.";
      delete panel.dataset.index;
      return;
    }
    panel.dataset.index = String(i);
    const lp = data.logprob(i);
    const rank = data.ranks[i];
    const alts = data.alternatives(i);
    const inTop = data.inTop(i);
    panelHead.replaceChildren();
    const pos = el("span", "llm-tokens-pos", `token ${i + model.get("first_index")} `);
    const ent = data.entropy[i];
    const facts = el("span", "llm-tokens-facts",
      ` p ${percent(Math.exp(lp))} \u00b7 rank ${rank > 0 ? rank : "?"} \u00b7 ` +
      `${(-lp / Math.LN2).toFixed(2)} bits \u00b7 entropy ` +
      `${Number.isFinite(ent) ? `${ent.toFixed(2)} nats` : "n/a"}`);
    panelHead.append(pos, tokenBox(data.text(i)), facts);
    if (!inTop) {
      panelHead.append(el("div", "llm-tokens-flag", `chosen outside the top ${alts.length}`));
    }
    const headRow = el("tr");
    ["rank", "probability", "token", ""].forEach((h) => headRow.append(el("th", "", h)));
    const body = el("tbody");
    let sum = 0;
    for (const alt of alts) {
      sum += Math.exp(alt.logprob);
      body.append(row(alt, i, alt.id === data.ids[i]));
    }
    if (!inTop) {
      const tr = row({ choice: -1, id: data.ids[i], text: data.text(i), logprob: lp }, i, true);
      tr.classList.add("llm-tokens-outside");
      tr.dataset.rank = String(rank);
      tr.querySelector(".llm-tokens-rank").textContent = rank > 0 ? String(rank) : "?";
      tr.querySelector(".llm-tokens-mark").textContent = "\u25c0 chosen, outside";
      body.append(tr);
    }
    const others = el("tr", "llm-tokens-others");
    const rest = Math.max(0, 1 - sum);
    cell(others, "", "llm-tokens-rank");
    cell(others, percent(rest), "llm-tokens-prob").dataset.value = String(rest);
    cell(others, "others", "llm-tokens-alt-token");
    cell(others, "", "llm-tokens-mark");
    body.append(others);
    const thead = el("thead");
    thead.append(headRow);
    table.append(thead, body);
  }

  function tokenOf(event) {
    const span = event.target && event.target.closest && event.target.closest(".llm-tokens-token");
    return span && box.contains(span) ? Number(span.dataset.index) : -1;
  }
  box.addEventListener("mouseover", (event) => {
    const i = tokenOf(event);
    if (i >= 0 && i !== focused) show(i);
  });
  box.addEventListener("focusin", (event) => {
    const i = tokenOf(event);
    if (i >= 0) {
      pinned = i;
      show(i);
    }
  });
  // On the way from a token to the panel the pointer crosses others: back to the pinned one.
  box.addEventListener("mouseleave", () => {
    if (pinned >= 0 && pinned !== focused) show(pinned);
  });
  box.addEventListener("keydown", (event) => {
    const i = tokenOf(event);
    if (i < 0) return;
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (step && spans[i + step]) {
      spans[i + step].focus();
      event.preventDefault();
    } else if (event.key === "Enter") {
      const first = table.querySelector("button");
      if (first) first.focus();
      event.preventDefault();
    }
  });
  panel.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && spans[pinned]) spans[pinned].focus();
  });

  function drawCrumbs() {
    const list = model.get("crumbs") || [];
    const current = model.get("current");
    crumbs.replaceChildren();
    list.forEach((c, i) => {
      if (i > 0) crumbs.append(el("span", "llm-tokens-dim", " \u203a "));
      const b = button("llm-tokens-crumb", c.label);
      b.title = c.title || "";
      b.dataset.index = String(i);
      b.dataset.state = c.state || "";
      if (i === current) b.setAttribute("aria-current", "true");
      b.addEventListener("click", () => {
        model.set("current", i);
        model.save_changes();
      });
      crumbs.append(b);
    });
    crumbs.hidden = list.length < 2;
    const running = (list[current] || {}).state === "running";
    root.dataset.view = running ? "stream" : "tokens";
    box.hidden = running;
    panel.hidden = running;
    stream.hidden = !running;
    drawStream();
  }

  function drawStream() {
    streamLead.textContent = model.get("lead") || "";
    const text = model.get("stream") || "";
    if (streamText.textContent !== text) streamText.textContent = text;
  }

  function drawStatus() {
    const s = model.get("state") || "idle";
    root.dataset.state = s;
    state.textContent = STATES[s] ?? s;
    stop.hidden = s !== "running";
    status.hidden = s !== "running";
    error.textContent = model.get("error") || "";
    error.hidden = !error.textContent;
    title.textContent = model.get("title") || "";
    note.textContent = model.get("note") || "";
    note.hidden = !note.textContent;
    waits.textContent = model.get("wait_note") || "";
    waits.hidden = !waits.textContent;
  }

  const listeners = [
    ["change:revision", drawTokens], ["change:metric", shade], ["change:legends", shade],
    ["change:crumbs", drawCrumbs], ["change:current", drawCrumbs], ["change:stream", drawStream],
    ["change:state", drawStatus], ["change:error", drawStatus], ["change:title", drawStatus],
    ["change:note", drawStatus], ["change:wait_note", drawStatus], ["change:lead", drawTokens],
  ];
  for (const [name, fn] of listeners) model.on(name, fn);
  drawStatus();
  drawTokens();
  drawCrumbs();
  return () => {
    for (const [name, fn] of listeners) model.off(name, fn);
  };
}

export default { render };
