// Streamed text of the llm_magic playground (anywidget ES module): the prompt
// (dimmed) and the text that continues it,
// the generation's stats and an error line, all set with textContent.

const STATES = { idle: "", waiting: "waiting for the model…", generating: "generating…",
  done: "", stopped: "stopped", error: "" };

function render({ model, el }) {
  const root = node("div", "llm-magic-stream");
  const state = node("div", "lm-state");
  state.dataset.field = "state";
  const pre = node("pre", "lm-output");
  const prompt = node("span", "lm-prompt");
  prompt.dataset.field = "prompt";
  const text = node("span", "lm-text");
  text.dataset.field = "text";
  pre.append(prompt, text);
  const stats = node("div", "lm-stats");
  stats.dataset.field = "stats";
  const error = node("div", "lm-error");
  error.dataset.field = "error";
  error.setAttribute("role", "alert");
  root.append(state, pre, stats, error);
  el.append(root);

  function update() {
    const s = model.get("state") || "idle";
    root.dataset.state = s;
    state.textContent = STATES[s] ?? s;
    setText(prompt, model.get("prompt") || "");
    const value = model.get("text") || "";
    if (text.textContent !== value) {
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      text.textContent = value;
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    }
    stats.textContent = model.get("stats") || "";
    error.textContent = model.get("error") || "";
    error.hidden = !error.textContent;
  }

  const events = ["change:prompt", "change:text", "change:stats", "change:state", "change:error"];
  const unlisten = listen(model, events.map((e) => [e, update]));
  update();
  return unlisten;
}

export default { render };
