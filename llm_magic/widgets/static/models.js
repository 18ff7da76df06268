// The loaded models of llm_magic as a table with Unload and Pin buttons
// (anywidget ES module). All data goes in with textContent; buttons send
// {action, name} to the kernel, which calls the Python API.

function node(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function ago(t) {
  if (!t) return "never";
  const dt = Math.max(0, Date.now() / 1000 - t);
  if (dt < 60) return `${dt.toFixed(0)}s ago`;
  if (dt < 3600) return `${(dt / 60).toFixed(0)}m ago`;
  return `${(dt / 3600).toFixed(1)}h ago`;
}

const COLUMNS = [
  ["name", "name"], ["source", "source"], ["revision", "revision"], ["device", "device"],
  ["dtype", "dtype"], ["estimate", "estimated"], ["memory", "measured"],
];

function render({ model, el }) {
  const root = node("div", "llm-magic-models");
  el.append(root);
  const table = node("table");
  const head = node("tr");
  [...COLUMNS.map((c) => c[1]), "last used", ""].forEach((h) => head.append(node("th", "", h)));
  const thead = node("thead");
  thead.append(head);
  const body = node("tbody");
  table.append(thead, body);
  const empty = node("div", "lm-empty", "No models loaded.");
  const loading = node("div", "lm-loading");
  const notice = node("div", "lm-notice");
  const error = node("div", "lm-error");
  error.setAttribute("role", "alert");
  const waits = node("div", "lm-wait-note");
  waits.dataset.field = "wait-note";
  root.append(table, empty, loading, notice, error, waits);
  let ages = [];

  function button(label, title, onClick) {
    const b = node("button", "jupyter-button lm-button", label);
    b.title = title;
    b.addEventListener("click", onClick);
    return b;
  }

  function rows() {
    const models = model.get("models") || [];
    body.replaceChildren();
    ages = [];
    models.forEach((m) => {
      const tr = node("tr");
      tr.dataset.model = m.name;
      COLUMNS.forEach(([key]) => {
        const td = node("td", "", key === "name" && m.pinned ? `${m.name} (pinned)` : String(m[key] ?? ""));
        td.dataset.field = key;
        tr.append(td);
      });
      const used = node("td", "", ago(m.last_used));
      used.dataset.field = "last_used";
      ages.push([used, m.last_used]);
      tr.append(used);
      const actions = node("td");
      const unload = button("Unload", `Unload ${m.name} and free its memory`,
        () => model.send({ action: "unload", name: m.name }));
      unload.dataset.action = "unload";
      // Enabled while it generates: the kernel refuses in one line, as the API does.
      const pin = button(m.pinned ? "Unpin" : "Pin",
        m.pinned ? "Let loads evict it again" : "Never evict it to make room",
        () => model.send({ action: "pin", name: m.name, pinned: !m.pinned }));
      pin.dataset.action = "pin";
      actions.append(unload, pin);
      if (m.generating) actions.append(node("span", "lm-generating", " generating"));
      tr.append(actions);
      body.append(tr);
    });
    table.hidden = models.length === 0;
    empty.hidden = models.length !== 0;
  }

  function status() {
    const l = model.get("loading") || {};
    loading.replaceChildren();
    if (l.name) {
      const seconds = Math.max(0, Date.now() / 1000 - (l.started || 0));
      loading.append(node("span", "", `Loading ${l.name} from ${l.source} (estimated ${l.estimate}), ${seconds.toFixed(0)} s `));
      const bar = node("span", "lm-progress");
      const fill = node("div");
      fill.style.width = l.progress === null || l.progress === undefined ? "10%" : `${(100 * l.progress).toFixed(0)}%`;
      bar.append(fill);
      loading.append(bar);
    }
    loading.hidden = !l.name;
    notice.textContent = model.get("notice") || "";
    error.textContent = model.get("error") || "";
    waits.textContent = model.get("wait_note") || "";
    notice.hidden = !notice.textContent;
    error.hidden = !error.textContent;
    waits.hidden = !waits.textContent;
  }

  const tick = setInterval(() => {
    ages.forEach(([cell, t]) => { const text = ago(t); if (cell.textContent !== text) cell.textContent = text; });
    if ((model.get("loading") || {}).name) status();
  }, 1000);
  model.on("change:models", rows);
  const changes = ["change:loading", "change:error", "change:notice", "change:wait_note"];
  changes.forEach((e) => model.on(e, status));
  rows();
  status();
  return () => {
    clearInterval(tick);
    model.off("change:models", rows);
    changes.forEach((e) => model.off(e, status));
  };
}

export default { render };
