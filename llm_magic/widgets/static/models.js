// The loaded models of llm_magic as a table with Unload and Pin buttons
// (anywidget ES module). All data goes in with textContent; buttons send
// {action, name} to the kernel, which calls the Python API. The measured memory
// shows the model's kept conversation caches beside it ("9.0 MB + 698.4 KB cache").

function ago(t) {
  if (!t) return "never";
  const dt = Math.max(0, Date.now() / 1000 - t);
  if (dt < 60) return `${dt.toFixed(0)}s ago`;
  if (dt < 3600) return `${(dt / 60).toFixed(0)}m ago`;
  return `${(dt / 3600).toFixed(1)}h ago`;
}

const COLUMNS = [
  ["name", "name"], ["source", "source"], ["revision", "revision"], ["device", "device"],
  ["dtype", "dtype"], ["quantized", "quantized"], ["estimate", "estimated"],
  ["memory", "measured"],
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

  // One row per model, kept while the model stays loaded: an update rewrites only the
  // text that changed, so a button under the pointer is never replaced mid-click.
  const shown = new Map(); // name -> its row's elements
  let current = new Map(); // name -> the row data last received

  function makeRow(name) {
    const tr = node("tr");
    tr.dataset.model = name;
    const cells = {};
    COLUMNS.forEach(([key]) => {
      const td = node("td");
      td.dataset.field = key;
      cells[key] = td;
      tr.append(td);
    });
    // The memory cell: the weights' bytes, then the kept caches' (shown while there are some).
    const memory = node("span", "lm-memory");
    const cache = node("span", "lm-cache");
    cache.dataset.field = "cache";
    cache.title = "Kept conversation caches: they count in the model's memory budget and " +
      "leave first when memory runs short";
    cache.style.color = "var(--jp-ui-font-color2, #555)";
    cells.memory.append(memory, cache);
    const used = node("td");
    used.dataset.field = "last_used";
    const actions = node("td");
    const unload = button("Unload", `Unload ${name} and free its memory`,
      () => model.send({ action: "unload", name }));
    unload.dataset.action = "unload";
    // Enabled while it generates: the kernel refuses in one line, as the API does.
    const pin = button("Pin", "", () => {
      const m = current.get(name);
      model.send({ action: "pin", name, pinned: !(m && m.pinned) });
    });
    pin.dataset.action = "pin";
    // Shown while the model generates: stops a %%llm cell's or the playground's generation,
    // keeping its text so far (a generation from plain Python code is refused in one line).
    const stop = button("Stop", `Stop the generation on ${name}; its text so far is kept`,
      () => model.send({ action: "stop", name }));
    stop.dataset.action = "stop";
    actions.append(unload, pin);
    tr.append(used, actions);
    return { tr, cells, used, pin, stop, actions, memory, cache };
  }

  function rows() {
    const models = model.get("models") || [];
    current = new Map(models.map((m) => [m.name, m]));
    shown.forEach((row, name) => {
      if (!current.has(name)) {
        row.tr.remove();
        shown.delete(name);
      }
    });
    ages = [];
    models.forEach((m, i) => {
      let row = shown.get(m.name);
      if (!row) {
        row = makeRow(m.name);
        shown.set(m.name, row);
      }
      COLUMNS.forEach(([key]) => {
        if (key !== "memory") {
          setText(row.cells[key], key === "name" && m.pinned ? `${m.name} (pinned)` : String(m[key] ?? ""));
        }
      });
      setText(row.memory, String(m.memory ?? ""));
      setText(row.cache, m.cache ? ` + ${m.cache} cache` : "");
      row.cache.hidden = !m.cache;
      // While it generates, "last used" says so (in italics), and a Stop button shows.
      row.used.classList.toggle("lm-generating", !!m.generating);
      if (m.generating) {
        setText(row.used, "generating");
      } else {
        setText(row.used, ago(m.last_used));
        ages.push([row.used, m.last_used]);
      }
      setText(row.pin, m.pinned ? "Unpin" : "Pin");
      row.pin.title = m.pinned ? "Let loads evict it again" : "Never evict it to make room";
      if (m.generating && !row.stop.isConnected) row.actions.append(row.stop);
      if (!m.generating) row.stop.remove();
      if (body.children[i] !== row.tr) body.insertBefore(row.tr, body.children[i] || null);
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
    ages.forEach(([cell, t]) => setText(cell, ago(t)));
    if ((model.get("loading") || {}).name) status();
  }, 1000);
  const changes = ["change:loading", "change:error", "change:notice", "change:wait_note"];
  const unlisten = listen(model, [["change:models", rows], ...changes.map((e) => [e, status])]);
  rows();
  status();
  return () => {
    clearInterval(tick);
    unlisten();
  };
}

export default { render };
