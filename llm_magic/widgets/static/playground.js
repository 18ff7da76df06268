// The playground's conversation (anywidget ES module): the conversation's name and heading,
// its turns (user, assistant; an interrupted reply marked), each reply's footer (new tokens,
// what the prompt reused of the kept cache), the turn that runs streaming in, and one line
// for an error or a refusal. Every text goes in with textContent; shaded turns take their ink
// from inkOn. The turns scroll inside their own box, which follows the end while it is there.

const STATES = {
  idle: "", waiting: "waiting for the model…", generating: "answering…", done: "",
  stopped: "stopped: the reply so far is kept as the turn", error: "",
  elsewhere: "another turn of this conversation runs (a cell)…",
};
// The turns' shades and the interrupted mark's (llm_magic/widgets/_transcript.py SHADES, MARK).
const SHADES = { user: [227, 236, 250], assistant: [243, 243, 243], system: [251, 243, 220] };
const MARK = [245, 124, 0];
const EMPTY = "No turns yet: write a message below and press Send.";

function shade(e, colour) {
  e.style.background = rgb(colour);
  e.style.color = inkOn(colour);
}

// One turn: its role (and the interrupted mark), its text, the reply's footer.
function turnNode(role, content, interrupted, footer) {
  const box = node("div", "lm-turn");
  box.dataset.role = role;
  shade(box, SHADES[role] || SHADES.assistant);
  const head = node("div", "lm-turn-role", role);
  if (interrupted) {
    const mark = node("span", "lm-turn-interrupted", "interrupted");
    mark.dataset.field = "chat-interrupted";
    shade(mark, MARK);
    head.append(" ", mark);
  }
  const text = node("div", "lm-turn-text", content);
  text.dataset.field = "chat-turn-text";
  box.append(head, text);
  if (footer) {
    const foot = node("div", "lm-turn-footer", footer);
    foot.dataset.field = "chat-footer";
    box.append(foot);
  }
  return { box, text };
}

function render({ model, el }) {
  const root = node("div", "llm-magic-chat");
  const head = node("div", "lm-chat-head");
  const name = node("span", "lm-chat-name");
  name.dataset.field = "chat-name";
  const about = node("span", "lm-chat-about");
  about.dataset.field = "chat-about";
  head.append(name, about);
  const log = node("div", "lm-chat-log");
  log.dataset.field = "chat-log";
  const turns = node("div", "lm-chat-turns");
  const empty = node("div", "lm-chat-empty", EMPTY);
  const pending = node("div", "lm-chat-pending");
  log.append(turns, empty, pending);
  const state = node("div", "lm-chat-state");
  state.dataset.field = "chat-state";
  const notice = node("div", "lm-chat-notice");
  notice.dataset.field = "chat-notice";
  const error = node("div", "lm-chat-error");
  error.dataset.field = "chat-error";
  error.setAttribute("role", "alert");
  root.append(head, log, state, notice, error);
  el.append(root);

  let reply = null; // the streaming reply's text node
  const atEnd = () => log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  function follow(was) {
    if (was) log.scrollTop = log.scrollHeight;
  }

  function drawTurns() {
    const was = atEnd();
    const messages = model.get("messages") || [];
    turns.replaceChildren(...messages.map((m, i) => {
      const { box } = turnNode(m.role, m.content, !!m.interrupted, m.footer || "");
      box.dataset.turn = String(i);
      return box;
    }));
    drawPending();
    follow(was);
  }

  function drawPending() {
    const was = atEnd();
    const prompt = model.get("pending_prompt") || "";
    if (!prompt) {
      pending.replaceChildren();
      reply = null;
    } else if (!reply) {
      const user = turnNode("user", prompt, false, "");
      const answer = turnNode("assistant", model.get("pending_text") || "", false, "");
      answer.text.dataset.field = "chat-pending-text";
      pending.replaceChildren(user.box, answer.box);
      reply = answer.text;
    } else {
      setText(pending.firstChild.querySelector(".lm-turn-text"), prompt);
      setText(reply, model.get("pending_text") || "");
    }
    empty.hidden = !!prompt || (model.get("messages") || []).length > 0;
    follow(was);
  }

  function drawLines() {
    setText(name, model.get("name") || "");
    setText(about, model.get("about") || "");
    head.style.display = name.textContent ? "" : "none";
    const s = model.get("state") || "idle";
    root.dataset.state = s;
    setText(state, STATES[s] ?? s);
    setText(notice, model.get("notice") || "");
    setText(error, model.get("error") || "");
    state.hidden = !state.textContent;
    notice.hidden = !notice.textContent;
    error.hidden = !error.textContent;
  }

  const lines = ["change:name", "change:about", "change:state", "change:notice", "change:error"];
  const unlisten = listen(model, [
    ["change:messages", drawTurns],
    ["change:pending_prompt", drawPending],
    ["change:pending_text", drawPending],
    ...lines.map((e) => [e, drawLines]),
  ]);
  drawTurns();
  drawLines();
  return unlisten;
}

export default { render };
