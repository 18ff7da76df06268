// The token probability view of llm_magic (anywidget ES module): the text, each token
// shaded by probability, entropy or surprisal; a side panel of the alternatives of one
// token; clicking an alternative asks the kernel for a branch; breadcrumbs switch branches.
// The panel follows a click (the token is pinned, and marked) or the keyboard focus; a
// pointer resting on a token previews it after PREVIEW_MS, never while a token is pinned,
// so a pointer travelling to the panel over other tokens leaves it alone. Numbers arrive
// as binary buffers (int32 ids and ranks, float16 log-probabilities and entropies) and a
// string table. "why?" (the token on the panel) and "why not?" (one of its alternatives) ask
// the kernel for one attribution row; the prompt and the earlier output are then shaded by
// it on a diverging scale (red raised the token's log-probability, blue lowered it), with
// the numbers in nats on hover, until "back to probabilities". Every text is set with textContent; the panel and the breadcrumbs are
// updated in place, so a click landing as they change still reaches its button.

const METRICS = ["probability", "entropy", "surprisal"];
const LIGHT = [255, 255, 255]; // a certain token (analysis/tokens.py: _LIGHT, _DARK)
const DARK = [230, 85, 13];
const STATES = { idle: "", running: "generating the branch\u2026", error: "" };
const PREVIEW_MS = 300; // how long the pointer rests on a token before the panel previews it
const HELP_BRANCH = "Click a token to pin it, then click an alternative to branch from there.";
const HELP_SCORE = "Click a token to pin it and see its alternatives.";
const EMPTY = "Click a token, or focus it with Tab, to see its alternatives here.";
const POS = [178, 24, 43]; // "why?": raised the token's log-probability (or favoured it)
const NEG = [33, 102, 172]; // lowered it

// An attribution score s over the row's largest |score| as [r, g, b]: white at 0.
function whyColour(s, largest) {
  const x = largest > 0 && Number.isFinite(s) ? Math.max(-1, Math.min(1, s / largest)) : 0;
  return x >= 0 ? mix(WHITE, POS, x) : mix(WHITE, NEG, -x);
}

// A score as the hover shows it: three significant digits, its sign always written.
function signed(v) {
  if (!Number.isFinite(v)) return "n/a";
  const a = Math.abs(v);
  const t = a === 0 ? "0" : a >= 0.01 ? a.toFixed(3) : a.toPrecision(2);
  return `${v < 0 ? "\u2212" : "+"}${t}`;
}

// The diverging scale of "why?": blue, white at 0, red, from -largest to +largest.
function divergingBar(caption, largest) {
  const box = node("div", "llm-tokens-whyscale");
  const ramp = node("canvas", "llm-tokens-whyramp");
  ramp.width = 101;
  ramp.height = 1;
  const ctx = ramp.getContext("2d");
  if (ctx) {
    for (let l = 0; l <= 100; l++) {
      ctx.fillStyle = rgb(whyColour((l - 50) / 50, 1));
      ctx.fillRect(l, 0, 1, 1);
    }
  }
  const ticks = node("div", "llm-tokens-whyticks");
  const amount = largest > 0 ? largest.toPrecision(2) : "0";
  for (const [cls, text] of [["lo", `\u2212${amount}`], ["mid", "0"], ["hi", `+${amount}`]]) {
    ticks.append(node("span", `llm-tokens-whytick-${cls}`, text));
  }
  const bar = node("div", "llm-tokens-whybar");
  bar.append(ramp, ticks);
  box.append(bar, node("span", "llm-tokens-whycaption", caption));
  return box;
}

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

// The shade x (0 to 1) as [r, g, b], as analysis/tokens.py's _colour().
function shadeColour(x) {
  return mix(LIGHT, DARK, Math.min(1, Math.max(0, x)));
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

// Each token's shade from 0 to 1, as analysis/tokens.py's shade() computes it: 1 - p, or
// surprisal (-ln p) or entropy, both in nats, over the text's largest.
function shades(data, metric) {
  const out = new Float32Array(data.n);
  if (metric === "probability") {
    for (let i = 0; i < data.n; i++) out[i] = 1 - Math.exp(data.logprob(i));
    return out;
  }
  let top = 0;
  for (let i = 0; i < data.n; i++) {
    const v = metric === "surprisal" ? -data.logprob(i) : data.entropy[i];
    out[i] = Number.isFinite(v) ? v : 0;
    top = Math.max(top, out[i]);
  }
  for (let i = 0; i < data.n; i++) out[i] = top > 0 ? out[i] / top : 0;
  return out;
}

function nats(v) {
  return Number.isFinite(v) ? `${v.toFixed(2)} nats` : "n/a";
}

function tokenBox(text, className) {
  return node("span", `llm-tokens-box ${className || ""}`.trim(), visible(text));
}

function render({ model, el: host }) {
  const root = own(node("div", "llm-tokens"));
  root.dir = "ltr";
  // The controls first, then the breadcrumbs, then the title of the branch on screen: a
  // title that grows when a branch ends moves nothing a press may be resting on.
  const head = node("div", "llm-tokens-head");
  const title = node("div", "llm-tokens-title");
  const metrics = node("div", "llm-tokens-metrics");
  metrics.setAttribute("role", "group");
  metrics.setAttribute("aria-label", "shade by");
  metrics.append(node("span", "llm-tokens-dim", "shade by "));
  const metricButtons = METRICS.map((m) => {
    const b = button("llm-tokens-metric", m);
    b.dataset.metric = m;
    b.addEventListener("click", () => {
      if (root.dataset.why !== undefined) model.send({ action: "unwhy" });
      model.set("metric", m);
      model.save_changes();
    });
    metrics.append(b);
    return b;
  });
  const help = node("span", "llm-tokens-help");
  head.append(metrics, help);

  const crumbs = node("nav", "llm-tokens-crumbs");
  crumbs.setAttribute("aria-label", "branches");
  crumbs.append(node("span", "llm-tokens-dim", "branches: "));
  const main = node("div", "llm-tokens-main");
  const box = node("div", "llm-tokens-text");
  const stream = node("pre", "llm-tokens-stream");
  const streamLead = node("span", "llm-tokens-lead");
  const streamText = node("span", "llm-tokens-streamed");
  stream.append(streamLead, streamText);

  // The side panel: every part is made once and then updated in place.
  const panel = node("aside", "llm-tokens-panel");
  panel.setAttribute("aria-live", "polite");
  const panelHead = node("div", "llm-tokens-panel-head");
  const empty = node("div", "llm-tokens-empty", EMPTY);
  const about = node("div", "llm-tokens-about");
  const pos = node("span", "llm-tokens-pos");
  const headBox = tokenBox("", "llm-tokens-head-token");
  about.append(pos, headBox, node("span", "llm-tokens-pos", " \u2014 alternatives"));
  const facts = node("div", "llm-tokens-facts");
  const factParts = [0, 1, 2, 3].map(() => node("span", "llm-tokens-fact"));
  factParts.forEach((part, j) => facts.append(...(j ? [" \u00b7 "] : []), part));
  const flag = node("div", "llm-tokens-flag");
  const pinLine = node("div", "llm-tokens-pinline");
  const pinState = node("span", "llm-tokens-pinstate");
  const unpin = button("llm-tokens-unpin", "Unpin");
  unpin.title = "Unpin this token (Escape): resting the pointer on a token previews it again";
  pinLine.append(pinState, unpin);
  const whyLine = node("div", "llm-tokens-whyline");
  const whyButton = button("llm-tokens-why", "why?");
  whyButton.title = "Shade the prompt and the earlier output by their attribution to this token";
  const methodLabel = node("label", "llm-tokens-dim", "by ");
  const methodSelect = own(node("select", "llm-tokens-method"));
  methodSelect.setAttribute("aria-label", "attribution method");
  methodLabel.append(methodSelect);
  whyLine.append(whyButton, methodLabel);
  panelHead.append(empty, about, facts, flag, pinLine, whyLine);
  const table = node("table", "llm-tokens-alts");
  const headRow = node("tr");
  ["rank", "probability", "token", ""].forEach((h) => headRow.append(node("th", "", h)));
  const thead = node("thead");
  thead.append(headRow);
  const body = node("tbody");
  table.append(thead, body);
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
  // "why?": what the shading shows now, the way back, and the integrated gradients' check.
  const whyHead = node("div", "llm-tokens-whyhead");
  whyHead.setAttribute("aria-live", "polite");
  const whyAbout = node("div", "llm-tokens-whyabout");
  const whyBack = button("llm-tokens-whyback", "\u2190 back to probabilities");
  whyBack.title = "Shade the tokens by probability again";
  const whyWhat = node("span", "llm-tokens-whywhat");
  whyAbout.append(whyBack, whyWhat);
  const whyFacts = node("div", "llm-tokens-whyfacts");
  const whyCheck = node("div", "llm-tokens-whycheck");
  const whyWarn = node("div", "llm-tokens-whywarn");
  whyWarn.setAttribute("role", "alert");
  const whyRunning = node("div", "llm-tokens-whyrunning");
  const whyScale = node("div", "llm-tokens-whylegend");
  whyHead.append(whyAbout, whyFacts, whyCheck, whyWarn, whyScale);
  root.append(head, crumbs, title, whyRunning, whyHead, main, legend, status, note, waits, error);
  host.append(root);

  let data = decode(model);
  let spans = [];
  let leadSpan = null; // the prompt as one dimmed text
  const whyLead = node("span", "llm-tokens-whylead"); // the prompt as tokens, under "why?"
  let whyAsked = null; // { position, choice } of the row on screen: its button is pressed
  let shown = -1; // the token the panel shows
  let pinned = -1; // the token clicked or focused: the panel stays on it
  let timer = 0; // a pending preview

  function drawTokens() {
    data = decode(model);
    cancelPreview();
    box.replaceChildren();
    const lead = model.get("lead") || "";
    leadSpan = lead ? node("span", "llm-tokens-lead", visible(lead, true)) : null;
    if (leadSpan) box.append(leadSpan);
    spans = [];
    for (let i = 0; i < data.n; i++) {
      const text = data.text(i);
      const span = own(tokenBox(text, "llm-tokens-token"));
      span.tabIndex = 0;
      span.setAttribute("role", "button");
      span.dataset.index = String(i);
      if (!data.inTop(i)) span.classList.add("llm-tokens-outside");
      box.append(span);
      for (const ch of text) if (ch === "\n") box.append(document.createElement("br"));
      spans.push(span);
    }
    root.dataset.revision = String(model.get("revision"));
    // A pin outlives a switch of branch: the tokens before a branch point are the same.
    if (pinned >= data.n) pinned = -1;
    shade();
    show(pinned >= 0 ? pinned : shown);
  }

  function shade() {
    const why = whyRow();
    if (why) {
      shadeWhy(why);
      return;
    }
    delete root.dataset.why;
    whyHead.hidden = true;
    whyLead.replaceChildren();
    whyLead.remove(); // in the text only under "why?"
    if (leadSpan) leadSpan.hidden = false;
    legend.hidden = false;
    markWhy(null);
    const metric = model.get("metric");
    const x = shades(data, metric);
    spans.forEach((span, i) => {
      const c = shadeColour(x[i]);
      span.style.backgroundColor = rgb(c);
      span.style.color = inkOn(c);
      span.dataset.shade = x[i].toFixed(3);
      span.classList.remove("llm-tokens-whytarget", "llm-tokens-after");
      span.removeAttribute("title");
      delete span.dataset.score;
    });
    metricButtons.forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.metric === metric)));
    root.dataset.metric = metric;
    legend.textContent = (model.get("legends") || {})[metric] || "";
  }

  // -- why?: one attribution row from the kernel, on the branch it was asked on

  function whyRow() {
    const info = model.get("why") || {};
    if (info.position === undefined || info.branch !== model.get("current")) return null;
    const scores = float32s(model.get("why_scores"));
    const prompt = model.get("why_prompt") || [];
    if (scores.length !== info.columns || prompt.length !== info.prompt_tokens
      || info.position >= data.n || info.columns !== info.prompt_tokens + info.position) return null;
    return { info, scores, prompt };
  }

  function paintWhy(span, v, largest, hover) {
    const c = whyColour(v, largest);
    span.style.backgroundColor = rgb(c);
    span.style.color = inkOn(c);
    span.dataset.score = String(v);
    span.title = hover;
  }

  function shadeWhy({ info, scores, prompt }) {
    const largest = info.largest || 0;
    const saliency = info.method === "saliency";
    const hover = (v, what) => saliency ? `${what}: gradient norm ${Math.abs(v).toPrecision(3)}`
      : `${what}: ${signed(v)} nats`;
    root.dataset.why = String(info.position);
    if (leadSpan) leadSpan.hidden = true;
    whyLead.replaceChildren();
    prompt.forEach((text, j) => {
      const span = tokenBox(text, "llm-tokens-input");
      span.dataset.column = String(j);
      paintWhy(span, scores[j], largest, hover(scores[j], `prompt token ${j}`));
      whyLead.append(span);
      for (const ch of text) if (ch === "\n") whyLead.append(document.createElement("br"));
    });
    const start = node("span", "llm-tokens-whysep", "\u25b8");
    start.title = "the prompt ends here; the output starts";
    whyLead.append(start);
    box.insertBefore(whyLead, leadSpan ? leadSpan.nextSibling : box.firstChild);
    const first = model.get("first_index") || 0;
    spans.forEach((span, i) => {
      span.classList.toggle("llm-tokens-whytarget", i === info.position);
      span.classList.toggle("llm-tokens-after", i > info.position);
      delete span.dataset.shade;
      if (i < info.position) {
        const v = scores[info.prompt_tokens + i];
        paintWhy(span, v, largest, hover(v, `token ${i + first}`));
        return;
      }
      delete span.dataset.score;
      span.style.backgroundColor = rgb(WHITE);
      span.style.color = i === info.position ? "#000" : "#767676"; // 4.5:1 on white
      span.title = i === info.position ? `token ${i + first}: the token attributed`
        : "after the token attributed: not one of its inputs";
    });
    metricButtons.forEach((b) => b.setAttribute("aria-pressed", "false"));
    legend.hidden = true;
    whyScale.replaceChildren(divergingBar(`${info.caption}; ${info.reading}.`, largest));
    markWhy({ position: info.position, choice: info.choice });
    setText(whyWhat, `${info.about}, by ${info.method_words}`);
    const facts = [`f = ${info.target} = ${signed(info.f)} nats`];
    if (!saliency) facts.push(`sum of the scores ${signed(info.sum)} nats`);
    setText(whyFacts, facts.join(" \u00b7 "));
    const complete = info.completeness;
    setText(whyCheck, complete === null || complete === undefined ? ""
      : `completeness error ${(100 * complete).toFixed(2)} % (the scores' sum against ` +
        "f(input) \u2212 f(baseline); over 1 % is flagged)");
    whyCheck.hidden = !whyCheck.textContent;
    setText(whyWarn, info.warning || "");
    whyWarn.hidden = !whyWarn.textContent;
    whyHead.hidden = false;
  }

  // The button of the question on screen is pressed: "why?" of its token, or "why not?" of its row.
  function markWhy(asked) {
    whyAsked = asked;
    const here = asked !== null && asked.position === shown;
    whyButton.setAttribute("aria-pressed", String(here && asked.choice === -1));
    for (const s of slots) {
      const on = here && asked.choice >= 0 && s.position === asked.position
        && s.choice === asked.choice;
      s.whyNot.setAttribute("aria-pressed", String(on));
      s.tr.classList.toggle("llm-tokens-whyrow", on);
    }
  }

  function askWhy(position, choice) {
    if (position < 0) return;
    model.send({ action: "why", position, choice, method: methodSelect.value });
  }

  function drawMethods() {
    const names = model.get("why_methods") || {};
    const keys = Object.keys(names);
    if (methodSelect.options.length !== keys.length) {
      methodSelect.replaceChildren(...keys.map((k) => {
        const o = node("option", "", names[k]);
        o.value = k;
        return o;
      }));
    }
    methodSelect.value = model.get("why_method") || "input_x_gradient";
    const explainable = !!model.get("explainable");
    whyLine.hidden = !explainable;
    const running = model.get("why_state") === "running";
    root.dataset.whyState = running ? "running" : "idle";
    setText(whyRunning, running ? "computing the attribution\u2026" : "");
    whyRunning.hidden = !running;
  }

  whyButton.addEventListener("click", () => {
    if (shown >= 0 && shown !== pinned) pin(shown);
    askWhy(shown, -1);
  });
  methodSelect.addEventListener("change", () => {
    model.set("why_method", methodSelect.value);
    model.save_changes();
    const info = (whyRow() || {}).info;
    if (info) askWhy(info.position, info.choice);
  });
  whyBack.addEventListener("click", () => model.send({ action: "unwhy" }));

  // -- the alternatives: one kept row per place in the table

  const slots = [];
  function slot(j) {
    if (slots[j]) return slots[j];
    const s = { tr: node("tr"), position: -1, choice: -1, id: -1 };
    s.rank = node("td", "llm-tokens-rank");
    s.prob = node("td", "llm-tokens-prob");
    s.where = node("td", "llm-tokens-alt-token");
    s.mark = node("td", "llm-tokens-mark");
    s.branch = button("llm-tokens-branch");
    s.inButton = tokenBox("");
    s.branch.append(s.inButton);
    s.plain = tokenBox("");
    s.markText = node("span");
    // A row's one <button> is its branch; "why not?" is a second control, a role=button span
    // that Tab reaches and Enter or Space presses.
    s.whyNot = own(node("span", "llm-tokens-whynot", "why not?"));
    s.whyNot.setAttribute("role", "button");
    s.whyNot.tabIndex = 0;
    s.whyNot.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        s.whyNot.click();
      }
    });
    s.whyNot.addEventListener("click", () => {
      if (s.position >= 0 && s.choice >= 0) {
        if (s.position !== pinned) pin(s.position);
        askWhy(s.position, s.choice);
      }
    });
    s.mark.append(s.markText);
    s.tr.append(s.rank, s.prob, s.where, s.mark);
    // The row's token and alternative as they are now, read when the click lands.
    s.branch.addEventListener("click", () => {
      if (s.position >= 0 && s.choice >= 0) {
        model.send({ action: "branch", position: s.position, choice: s.choice, id: s.id });
      }
    });
    slots[j] = s;
    return s;
  }

  function fill(s, alt, i, { rank, chosen, outside, branchable }) {
    Object.assign(s, { position: i, choice: alt.choice, id: alt.id });
    s.tr.className = "llm-tokens-alt" + (chosen ? " llm-tokens-chosen" : "")
      + (outside ? " llm-tokens-outside" : "");
    s.tr.dataset.rank = String(rank);
    s.tr.dataset.id = String(alt.id);
    const p = Math.exp(alt.logprob);
    setText(s.rank, rank > 0 ? String(rank) : "?");
    setText(s.prob, percent(p));
    s.prob.dataset.value = String(p);
    const holder = branchable ? s.branch : s.plain;
    setText(branchable ? s.inButton : s.plain, visible(alt.text));
    if (s.where.firstChild !== holder) s.where.replaceChildren(holder);
    s.branch.title = `branch from token ${i + (model.get("first_index") || 0)} with ` +
      `\u201c${visible(alt.text)}\u201d`;
    setText(s.markText, outside ? "\u25c0 chosen, outside" : chosen ? "\u25c0 chosen" : "");
    // Only where it applies: a row's buttons are what it offers (no hidden one in the chosen row).
    if (chosen || !model.get("explainable")) s.whyNot.remove();
    else if (s.whyNot.parentNode !== s.mark) s.mark.append(s.whyNot);
    const other = `\u201c${visible(alt.text)}\u201d`;
    s.whyNot.title = `why \u201c${visible(data.text(i))}\u201d and not ${other}: attribute ` +
      `log p(chosen) \u2212 log p(${other})`;
  }

  const others = node("tr", "llm-tokens-others");
  const othersProb = node("td", "llm-tokens-prob");
  others.append(node("td", "llm-tokens-rank"), othersProb,
    node("td", "llm-tokens-alt-token", "others"), node("td", "llm-tokens-mark"));

  function show(index) {
    const i = index >= 0 && index < data.n ? index : -1;
    shown = i;
    spans.forEach((span, j) => {
      span.classList.toggle("llm-tokens-focused", j === i);
      span.classList.toggle("llm-tokens-pinned", j === pinned);
      span.setAttribute("aria-pressed", String(j === pinned));
    });
    root.dataset.pinned = String(pinned);
    setText(empty, i < 0 ? EMPTY : "");
    empty.hidden = i >= 0;
    for (const e of [about, facts, pinLine, table]) e.hidden = i < 0;
    if (i < 0) {
      delete panel.dataset.index;
      delete panel.dataset.pinned;
      setText(flag, "");
      flag.hidden = true;
      return;
    }
    panel.dataset.index = String(i);
    panel.dataset.pinned = String(i === pinned);
    const lp = data.logprob(i);
    const rank = data.ranks[i];
    const alts = data.alternatives(i);
    const inTop = data.inTop(i);
    setText(pos, `token ${i + (model.get("first_index") || 0)}: `);
    setText(headBox, visible(data.text(i)));
    [`p ${percent(Math.exp(lp))}`, `rank ${rank > 0 ? rank : "?"}`, `surprisal ${nats(-lp)}`,
      `entropy ${nats(data.entropy[i])}`].forEach((text, j) => setText(factParts[j], text));
    setText(flag, inTop ? "" : `chosen outside the top ${alts.length}`);
    flag.hidden = inTop;
    setText(pinState, i === pinned ? "pinned: other tokens leave this panel alone"
      : "preview: click the token to pin it");
    unpin.hidden = i !== pinned;

    const branchable = !!model.get("branchable");
    let n = 0;
    let sum = 0;
    for (const alt of alts) {
      sum += Math.exp(alt.logprob);
      const chosen = alt.id === data.ids[i];
      fill(slot(n++), alt, i, { rank: alt.choice + 1, chosen, outside: false,
        branchable: branchable && !chosen });
    }
    if (!inTop) {
      fill(slot(n++), { choice: -1, id: data.ids[i], text: data.text(i), logprob: lp }, i,
        { rank, chosen: true, outside: true, branchable: false });
    }
    for (let j = 0; j < n; j++) {
      if (body.children[j] !== slots[j].tr) body.insertBefore(slots[j].tr, body.children[j] || null);
    }
    for (let j = n; j < slots.length; j++) slots[j].tr.remove();
    const rest = Math.max(0, 1 - sum);
    setText(othersProb, percent(rest));
    othersProb.dataset.value = String(rest);
    if (body.lastChild !== others) body.append(others);
    markWhy(whyAsked);
  }

  // -- pinning and previews

  function cancelPreview() {
    if (timer) clearTimeout(timer);
    timer = 0;
  }

  function pin(i) {
    cancelPreview();
    pinned = i;
    show(i);
  }

  function unpinNow() {
    pinned = -1;
    show(shown);
  }

  function tokenOf(event) {
    const span = event.target && event.target.closest && event.target.closest(".llm-tokens-token");
    return span && box.contains(span) ? Number(span.dataset.index) : -1;
  }
  // A preview only after the pointer rests on one token: on its way to the panel it crosses
  // others, each for less than PREVIEW_MS, and leaves the panel as it was.
  box.addEventListener("mouseover", (event) => {
    cancelPreview();
    const i = tokenOf(event);
    if (i < 0 || pinned >= 0 || i === shown) return;
    timer = setTimeout(() => {
      timer = 0;
      if (pinned < 0) show(i);
    }, PREVIEW_MS);
  });
  box.addEventListener("mouseleave", cancelPreview);
  box.addEventListener("click", (event) => {
    const i = tokenOf(event);
    if (i >= 0) pin(i);
  });
  box.addEventListener("focusin", (event) => {
    const i = tokenOf(event);
    if (i >= 0 && i !== pinned) pin(i);
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
    } else if (event.key === "Escape" && pinned >= 0) {
      unpinNow();
      event.preventDefault();
    }
  });
  unpin.addEventListener("click", unpinNow);
  panel.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && spans[pinned]) spans[pinned].focus();
  });

  // -- breadcrumbs: one kept button per branch

  const parts = [];
  function drawCrumbs() {
    const list = model.get("crumbs") || [];
    const current = model.get("current");
    list.forEach((c, i) => {
      if (!parts[i]) {
        const sep = i > 0 ? node("span", "llm-tokens-dim", " \u203a ") : null;
        const b = button("llm-tokens-crumb");
        b.dataset.index = String(i);
        b.addEventListener("click", () => {
          model.set("current", i);
          model.save_changes();
        });
        parts[i] = { sep, b };
        if (sep) crumbs.append(sep);
        crumbs.append(b);
      }
      const b = parts[i].b;
      setText(b, c.label || "");
      b.title = c.title || "";
      b.dataset.state = c.state || "";
      if (i === current) b.setAttribute("aria-current", "true");
      else b.removeAttribute("aria-current");
    });
    while (parts.length > list.length) {
      const { sep, b } = parts.pop();
      b.remove();
      if (sep) sep.remove();
    }
    crumbs.hidden = list.length < 2;
    const running = (list[current] || {}).state === "running";
    root.dataset.view = running ? "stream" : "tokens";
    box.hidden = running;
    panel.hidden = running;
    stream.hidden = !running;
    drawStream();
  }

  function drawStream() {
    setText(streamLead, visible(model.get("lead") || "", true));
    setText(streamText, visible(model.get("stream") || "", true));
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
    help.textContent = model.get("branchable") ? HELP_BRANCH : HELP_SCORE;
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
    ["change:branchable", drawStatus], ["change:why", shade], ["change:why_scores", shade],
    ["change:why_prompt", shade], ["change:why_method", drawMethods],
    ["change:why_methods", drawMethods], ["change:why_state", drawMethods],
    ["change:explainable", drawMethods],
  ];
  const unlisten = listen(model, listeners);
  drawStatus();
  drawMethods();
  drawTokens();
  drawCrumbs();
  return () => {
    cancelPreview();
    unlisten();
  };
}

export default { render };
