// Live resource gauges of llm_magic (anywidget ES module, no dependencies).
// Every figure is text in the DOM (textContent, never innerHTML); bars are divs
// and the samples so far (up to two minutes) are drawn on one canvas per section,
// between a value axis (0 to 100 %) and a time axis (how long ago, to now) in the DOM.

function width(part, whole) {
  if (part === null || part === undefined || !whole) return "0%";
  return `${Math.max(0, Math.min(100, (100 * part) / whole)).toFixed(1)}%`;
}

// The series arrive as bytes: half-percent steps 0..200, 255 where a figure is unknown.
function percents(value) {
  return Array.from(bytesOf(value), (b) => (b === 255 ? NaN : b / 2));
}

const SPAN = 120; // seconds: the time axis grows with the samples up to two minutes
const MIN_SPAN = 10; // seconds: the shortest time axis, so the first samples are not stretched
// A section's two lines: CPU or utilization (the colour of its bar), RAM or memory (the
// colour of its memory bar's used part, .lm-fill-other in widgets.css).
const COLOURS = ["#2f7ed8", "#6a9f1a"];

// The time axis of samples whose oldest is `oldest` seconds old.
function spanOf(oldest) {
  return Math.min(SPAN, Math.max(MIN_SPAN, oldest || 0));
}

function ago(seconds) {
  const s = Math.round(seconds);
  if (s < 60) return `${s} s ago`;
  const rest = s % 60;
  return rest ? `${Math.floor(s / 60)} min ${rest} s ago` : `${s / 60} min ago`;
}

function drawSparkline(canvas, names, data, ages, columns, span) {
  const w = canvas.clientWidth || 240;
  const h = canvas.clientHeight || 36;
  const ctx = canvasContext(canvas, w, h, window.devicePixelRatio || 1);
  if (!ctx) return;
  ctx.strokeStyle = "rgba(128, 128, 128, 0.35)"; // the 50 % line of the value axis
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(0, Math.round(h / 2) + 0.5);
  ctx.lineTo(w, Math.round(h / 2) + 0.5);
  ctx.stroke();
  const n = names.length ? Math.min(Math.floor(data.length / names.length), ages.length) : 0;
  columns.forEach((col, k) => {
    ctx.strokeStyle = COLOURS[k % COLOURS.length];
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let pen = false;
    for (let i = 0; i < n; i++) {
      const v = data[i * names.length + col];
      if (Number.isNaN(v) || ages[i] > span) { pen = false; continue; }
      const x = w - 1 - (ages[i] / span) * (w - 2); // the newest sample at the right edge
      const y = h - 1 - (Math.max(0, Math.min(100, v)) / 100) * (h - 2);
      if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      pen = true;
    }
    ctx.stroke();
  });
}

function gauge(parent, label, field) {
  const row = node("div", "lm-row");
  row.append(node("span", "lm-label", label));
  const bar = node("div", "lm-bar");
  const fill = node("div", "lm-fill");
  bar.append(fill);
  row.append(bar);
  const value = node("span", "lm-value");
  value.dataset.field = field;
  row.append(value);
  parent.append(row);
  return { row, bar, fill, value };
}

function memoryBar(parent, label, field) {
  const g = gauge(parent, label, field);
  g.fill.classList.add("lm-fill-other");
  const mine = node("div", "lm-fill lm-fill-mine");
  g.bar.append(mine);
  const models = node("div", "lm-fill lm-fill-models");
  g.bar.append(models);
  g.mine = mine;
  g.models = models;
  return g;
}

function detail(parent, label, field, key) {
  const row = node("div", "lm-row lm-detail");
  const name = node("span", "lm-label", label);
  if (key) name.classList.add("lm-key", key); // the colour of its part of the memory bar
  row.append(name);
  const value = node("span", "lm-value");
  value.dataset.field = field;
  row.append(value);
  parent.append(row);
  return value;
}

function sparkline(parent, labels, field) {
  const box = node("div", "lm-spark-box");
  const values = node("div", "lm-y-axis");
  values.append(node("span", "", "100 %"), node("span", "", "50 %"), node("span", "", "0 %"));
  const plot = node("div", "lm-plot");
  const canvas = node("canvas", "lm-spark");
  canvas.dataset.field = field;
  const times = node("div", "lm-x-axis");
  const from = node("span", "lm-x-from");
  from.dataset.field = `${field}-from`;
  times.append(from, node("span", "", "now"));
  plot.append(canvas, times);
  box.append(values, plot);
  const legend = node("div", "lm-legend");
  labels.forEach((label, k) => {
    const key = node("span", "lm-key", label);
    key.style.borderColor = COLOURS[k % COLOURS.length];
    legend.append(key);
  });
  parent.append(box, legend);
  return { canvas, from };
}

function render({ model, el }) {
  const root = node("div", "llm-magic-monitor");
  el.append(root);
  const head = node("div", "lm-head");
  head.append(node("span", "lm-title", "llm_magic monitor"));
  const state = node("span", "lm-state");
  state.dataset.field = "state";
  head.append(state);
  const close = node("button", "lm-close", "\u00d7");
  close.title = "Stop updating";
  close.setAttribute("aria-label", "Stop updating");
  close.addEventListener("click", () => model.send({ action: "stop" }));
  head.append(close);
  root.append(head);

  const gpuBox = node("div", "lm-section lm-gpus");
  // "CPU only", and why in small grey text (and on hover): a fact about the machine.
  const note = node("div", "lm-note");
  const noteText = node("span", "lm-note-text");
  noteText.dataset.field = "gpu-note";
  const reason = node("span", "lm-note-reason");
  reason.dataset.field = "gpu-reason";
  note.append(noteText, reason);
  const hostBox = node("div", "lm-section lm-host");
  root.append(gpuBox, note, hostBox);

  // host section: built once
  hostBox.append(node("div", "lm-section-title", "Host"));
  const cpu = gauge(hostBox, "CPU", "cpu");
  const ram = memoryBar(hostBox, "RAM", "ram");
  const rss = detail(hostBox, "this process", "rss", "lm-key-mine");
  const procCpu = detail(hostBox, "process CPU", "process-cpu");
  const hostModels = detail(hostBox, "models", "host-models", "lm-key-models");
  const hostSpark = sparkline(hostBox, ["CPU", "RAM"], "host-sparkline");

  let gpuViews = [];

  function buildGpus(gpus) {
    gpuBox.replaceChildren();
    gpuViews = gpus.map((_, i) => {
      const box = node("div", "lm-gpu");
      box.dataset.gpu = String(i);
      const title = node("div", "lm-section-title");
      title.dataset.field = "gpu-label";
      box.append(title);
      const v = {
        box, title,
        util: gauge(box, "utilization", "gpu-util"),
        mem: memoryBar(box, "memory", "gpu-memory"),
        process: detail(box, "this process", "gpu-process", "lm-key-mine"),
        models: detail(box, "models", "gpu-models", "lm-key-models"),
        temp: detail(box, "temperature", "gpu-temperature"),
        power: detail(box, "power", "gpu-power"),
      };
      v.spark = sparkline(box, ["utilization", "memory"], "gpu-sparkline");
      gpuBox.append(box);
      return v;
    });
  }

  function modelBytes(models) {
    return (models || []).reduce((sum, m) => sum + (m[1] || 0), 0);
  }

  function update() {
    const running = model.get("running");
    setText(state, running ? "live" : "stopped");
    root.classList.toggle("lm-stopped", !running);
    close.disabled = !running;

    const gpus = model.get("gpus") || [];
    if (gpus.length !== gpuViews.length) buildGpus(gpus);
    gpus.forEach((g, i) => {
      const v = gpuViews[i];
      setText(v.title, g.label);
      setText(v.util.value, g.util_text);
      v.util.fill.style.width = width(g.util, 100);
      setText(v.mem.value, g.mem_text);
      v.mem.fill.style.width = width(g.mem_used, g.mem_total);
      v.mem.mine.style.width = width(g.process, g.mem_total);
      v.mem.models.style.width = width(modelBytes(g.models), g.mem_total);
      setText(v.process, g.process_text);
      setText(v.models, g.models_text || "none");
      setText(v.temp, g.temp_text);
      setText(v.power, g.power_text);
    });
    const cpuOnly = model.get("gpu_note") || "";
    const why = model.get("gpu_reason") || "";
    setText(noteText, cpuOnly);
    setText(reason, why);
    note.title = why;
    note.hidden = !cpuOnly;

    const h = model.get("host") || {};
    setText(cpu.value, h.cpu_text || "");
    cpu.fill.style.width = width(h.cpu, 100);
    setText(ram.value, h.ram_text || "");
    ram.fill.style.width = width(h.ram_used, h.ram_total);
    ram.mine.style.width = width(h.rss, h.ram_total);
    ram.models.style.width = width(modelBytes(h.models), h.ram_total);
    setText(rss, h.rss_text || "");
    setText(procCpu, h.process_cpu_text || "");
    setText(hostModels, h.models_text || "none");
    draw();
  }

  function draw() {
    const names = model.get("series_names") || [];
    const data = percents(model.get("series"));
    const ages = float32s(model.get("series_ages"));
    const span = spanOf(ages.length ? ages[0] : 0);
    const sparks = [[hostSpark, [0, 1]], ...gpuViews.map((v, i) => [v.spark, [2 + 2 * i, 3 + 2 * i]])];
    sparks.forEach(([spark, columns]) => {
      setText(spark.from, ago(span));
      drawSparkline(spark.canvas, names, data, ages, columns, span);
    });
  }

  const events = ["change:host", "change:gpus", "change:gpu_note", "change:gpu_reason",
    "change:running", "change:series"];
  const unlisten = listen(model, events.map((e) => [e, update]));
  update();
  return unlisten;
}

export default { render };
