// The token probability view of llm_magic (anywidget ES module): the text, each token
// shaded by probability, entropy or surprisal; a side panel of the alternatives of the
// token under the pointer or the keyboard focus; clicking an alternative asks the
// kernel for a branch; breadcrumbs switch branches. Numbers arrive as binary buffers
// (int32 ids and ranks, float16 log-probabilities and entropies) and a string table.
// Every text is set with textContent.

const METRICS = ["probability", "entropy", "surprisal"];
const LIGHT = [255, 255, 255]; // a certain token (analysis/tokens.py: _LIGHT, _DARK)
const DARK = [230, 85, 13];
const STATES = { idle: "", running: "generating the branch\u2026", error: "" };

// Keys pressed on a focused part of the view (arrows, Enter, Tab) are the view's: Lumino
// matches the notebook's shortcuts from the focused element up to the first element that
// carries this attribute, so each focusable element carries it itself.
function own(e) {
  e.dataset.lmSuppressShortcuts = "true";
  return e;
}

function button(className, text) {
  const b = own(node("button", className, text));
  b.type = "button";
  return b;
}

function colour(x) {
  return rgb(mix(LIGHT, DARK, Math.min(1, Math.max(0, x))));
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
  return node("span", `llm-tokens-box ${className || ""}`.trim(), visible(text));
}

function render({ model, el: host }) {
  const root = own(node("div", "llm-tokens"));
  const head = node("div", "llm-tokens-head");
  const title = node("span", "llm-tokens-title");
  const metrics = node("div", "llm-tokens-metrics");
  metrics.setAttribute("role", "group");
  metrics.setAttribute("aria-label", "shade by");
  metrics.append(node("span", "llm-tokens-dim", "shade by "));
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

  const crumbs = node("nav", "llm-tokens-crumbs");
  crumbs.setAttribute("aria-label", "branches");
  const main = node("div", "llm-tokens-main");
  const box = node("div", "llm-tokens-text");
  const stream = node("pre", "llm-tokens-stream");
  const streamLead = node("span", "llm-tokens-lead");
  const streamText = node("span", "llm-tokens-streamed");
  stream.append(streamLead, streamText);
  const panel = node("aside", "llm-tokens-panel");
  panel.setAttribute("aria-live", "polite");
  const panelHead = node("div", "llm-tokens-panel-head",
    "Point at a token, or focus it with Tab, to see its alternatives.");
  const table = node("table", "llm-tokens-alts");
  panel.append(panelHead, table);
  main.append(box, stream, panel);
  const legend = node("div", "llm-tokens-legend");
  const status = node("div", "llm-tokens-status");
  const state = node("span", "llm-tokens-state");
  const stop = button("llm-tokens-stop", "Stop");
  stop.addEventListener("click", () => model.send({ action: "stop" }));
  status.append(state, stop);
  const note = node("div", "llm-tokens-note");
  const waits = node("div", "llm-tokens-wait");
  const error = node("div", "llm-tokens-error");
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
    if (lead) box.append(node("span", "llm-tokens-lead", lead));
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
    const td = node("td", className, text);
    tr.append(td);
    return td;
  }

  function row(alt, i, chosen) {
    const tr = node("tr", "llm-tokens-alt");
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
    const pos = node("span", "llm-tokens-pos", `token ${i + model.get("first_index")} `);
    const ent = data.entropy[i];
    const facts = node("span", "llm-tokens-facts",
      ` p ${percent(Math.exp(lp))} \u00b7 rank ${rank > 0 ? rank : "?"} \u00b7 ` +
      `${(-lp / Math.LN2).toFixed(2)} bits \u00b7 entropy ` +
      `${Number.isFinite(ent) ? `${ent.toFixed(2)} nats` : "n/a"}`);
    panelHead.append(pos, tokenBox(data.text(i)), facts);
    if (!inTop) {
      panelHead.append(node("div", "llm-tokens-flag", `chosen outside the top ${alts.length}`));
    }
    const headRow = node("tr");
    ["rank", "probability", "token", ""].forEach((h) => headRow.append(node("th", "", h)));
    const body = node("tbody");
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
    const others = node("tr", "llm-tokens-others");
    const rest = Math.max(0, 1 - sum);
    cell(others, "", "llm-tokens-rank");
    cell(others, percent(rest), "llm-tokens-prob").dataset.value = String(rest);
    cell(others, "others", "llm-tokens-alt-token");
    cell(others, "", "llm-tokens-mark");
    body.append(others);
    const thead = node("thead");
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
      if (i > 0) crumbs.append(node("span", "llm-tokens-dim", " \u203a "));
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
    setText(streamText, model.get("stream") || "");
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
  const unlisten = listen(model, listeners);
  drawStatus();
  drawTokens();
  drawCrumbs();
  return unlisten;
}

export default { render };
