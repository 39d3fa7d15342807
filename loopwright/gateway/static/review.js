// The review page: signs in with an API key and calls the gateway's /v1/review API.
// No framework, no build step. All data is rendered with textContent (never as HTML):
// prompts and answers are untrusted text.

const KEY = "loopwright.review.key"; // sessionStorage: gone when the tab closes
const $ = (id) => document.getElementById(id);

const state = { items: [], index: -1, item: null, reasons: new Set() };
// What the gateway enqueues for an interaction; anything else (e.g. an alert) is listed as is.
const INTERACTION_KEYS = new Set([
  "messages", "response", "model_name", "model_version", "route",
  "retrieved_context_ids", "input_verdict", "output_verdict", "error",
]);

function apiKey() {
  return sessionStorage.getItem(KEY);
}

function keyId(key) {
  // A key is lw_<key id>_<secret>; the key id is what the queue records as claimed_by.
  return (key || "").slice(3).split("_")[0];
}

function say(text, kind = "info") {
  const el = $("message");
  el.textContent = text;
  el.dataset.kind = kind;
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${apiKey()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const message = (data.error && data.error.message) || `HTTP ${res.status}`;
    if (res.status === 401) signOut();
    throw new Error(message);
  }
  return data;
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

// -- sign in -----------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const key = $("key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY, key);
  $("key").value = "";
  try {
    await api("GET", "/v1/review/items?limit=1");
  } catch (err) {
    sessionStorage.removeItem(KEY);
    say(`Sign-in failed: ${err.message}`, "error");
    return;
  }
  showSession();
  await load();
}

function signOut() {
  sessionStorage.removeItem(KEY);
  state.items = [];
  state.item = null;
  state.reasons.clear();
  // Nothing of this session may show in the next one (another key, maybe another tenant).
  $("filters").reset();
  $("queue").replaceChildren();
  delete $("queue").dataset.query;
  renderDetail();
  $("signin").hidden = false;
  $("session").hidden = true;
  $("workspace").hidden = true;
  $("key").focus();
}

function showSession() {
  $("signin").hidden = true;
  $("session").hidden = false;
  $("workspace").hidden = false;
  $("whoami").textContent = `Signed in as key ${keyId(apiKey())}`;
}

// -- queue ---------------------------------------------------------------------------

async function load(keep) {
  const params = new URLSearchParams({ status: $("status").value, limit: "200" });
  const reason = $("reason").value.trim();
  if (reason) params.set("reason", reason);
  try {
    const data = await api("GET", `/v1/review/items?${params}`);
    state.items = data.items;
  } catch (err) {
    say(`Could not load the queue: ${err.message}`, "error");
    return;
  }
  for (const item of state.items) item.reasons.forEach((r) => state.reasons.add(r));
  const datalist = $("reasons");
  datalist.replaceChildren(...[...state.reasons].sort().map((r) => {
    const option = el("option");
    option.value = r;
    return option;
  }));
  renderQueue();
  $("queue").dataset.query = params.toString(); // what the list shows (tests wait on it)
  const at = keep === undefined ? 0 : Math.min(keep, state.items.length - 1);
  await select(state.items.length ? Math.max(at, 0) : -1);
}

function promptOf(item) {
  const messages = (item.payload && item.payload.messages) || [];
  const users = messages.filter((m) => m.role === "user");
  if (users.length) return users[users.length - 1].content;
  return (item.payload && (item.payload.summary || item.payload.alert)) || "(no user message)";
}

function renderQueue() {
  const list = $("queue");
  list.replaceChildren();
  if (!state.items.length) {
    list.append(el("li", "Nothing here.", "none"));
    return;
  }
  state.items.forEach((item, i) => {
    const li = el("li");
    li.id = `item-${item.item_id}`;
    li.setAttribute("role", "option");
    li.setAttribute("aria-selected", String(i === state.index));
    li.dataset.index = String(i);
    li.append(el("span", `#${item.item_id}`, "id"), el("span", item.status, `status ${item.status}`));
    if (item.gold) li.append(el("span", "gold", "gold"));
    li.append(el("span", promptOf(item), "prompt"), el("span", item.reasons.join(", "), "why"));
    li.addEventListener("click", () => select(i));
    list.append(li);
  });
}

async function select(i) {
  state.index = i;
  for (const li of $("queue").querySelectorAll("li[role=option]")) {
    li.setAttribute("aria-selected", String(Number(li.dataset.index) === i));
  }
  if (i < 0) {
    state.item = null;
    renderDetail();
    return;
  }
  const current = $("queue").querySelector(`li[data-index="${i}"]`);
  if (current) {
    $("queue").setAttribute("aria-activedescendant", current.id);
    current.scrollIntoView({ block: "nearest" });
  }
  try {
    state.item = await api("GET", `/v1/review/items/${state.items[i].item_id}`);
  } catch (err) {
    say(err.message, "error");
    state.item = state.items[i];
  }
  renderDetail();
}

function move(step) {
  if (!state.items.length) return;
  const next = Math.min(Math.max(state.index + step, 0), state.items.length - 1);
  if (next !== state.index) select(next);
}

// -- detail --------------------------------------------------------------------------

function verdictBlock(name, verdict) {
  const box = el("div", undefined, "verdict");
  box.append(el("h4", `${name}: ${(verdict && verdict.action) || "none"}`));
  if (!verdict) return box;
  if (verdict.reasons && verdict.reasons.length) box.append(el("p", verdict.reasons.join(", ")));
  const scores = Object.entries(verdict.scores || {});
  if (scores.length) box.append(el("p", scores.map(([k, v]) => `${k} ${v}`).join(" · ")));
  return box;
}

function renderDetail() {
  const item = state.item;
  $("empty").hidden = Boolean(item);
  $("detail").hidden = !item;
  $("resolve").hidden = !item || item.status === "resolved";
  if (!item) return;
  const p = item.payload || {};
  const meta = $("meta");
  meta.replaceChildren();
  const rows = [
    ["Item", `#${item.item_id} (${item.status})`],
    ["Interaction", item.interaction_id],
    ["Created", item.created_at],
    ["Model", [p.model_name, p.model_version && `v${p.model_version}`, p.route].filter(Boolean).join(" ")],
    ["Claimed by", item.claimed_by === keyId(apiKey()) ? "you" : item.claimed_by || "nobody"],
  ];
  if (item.status === "resolved") {
    rows.push(["Label", `${item.label}${item.gold ? " (gold)" : ""}`]);
    if (item.correction) rows.push(["Correction", item.correction]);
  }
  if (p.error) rows.push(["Error", p.error]);
  for (const [k, v] of rows) meta.append(el("dt", k), el("dd", v || "—"));
  $("reasons-list").replaceChildren(...item.reasons.map((r) => el("li", r)));
  $("messages").replaceChildren(...(p.messages || []).map((m) => {
    const li = el("li", undefined, `msg ${m.role}`);
    li.append(el("strong", m.role), el("pre", m.content));
    return li;
  }));
  $("answer").textContent = p.response || "(no answer)";
  $("verdicts").replaceChildren(verdictBlock("input", p.input_verdict), verdictBlock("output", p.output_verdict));
  const facts = p.retrieved_context_ids || [];
  $("facts").replaceChildren(...(facts.length ? facts.map((f) => el("li", f)) : [el("li", "none")]));
  $("interaction").hidden = !Array.isArray(p.messages);
  const extra = Object.entries(p).filter(([k]) => !INTERACTION_KEYS.has(k));
  $("extra-box").hidden = !extra.length;
  $("extra").replaceChildren(...extra.flatMap(([k, v]) => [
    el("dt", k), el("dd", typeof v === "string" ? v : JSON.stringify(v)),
  ]));
  const mine = item.status === "claimed" && item.claimed_by === keyId(apiKey());
  $("claim").disabled = item.status !== "pending";
  $("claim").textContent = mine ? "Claimed by you" : "Claim (c)";
  if (!$("resolve").hidden && $("resolve").dataset.item !== String(item.item_id)) {
    $("resolve").reset(); // a new item starts with an empty form
    $("resolve").dataset.item = String(item.item_id);
  }
}

async function claim() {
  const item = state.item;
  if (!item || item.status !== "pending") return;
  try {
    state.item = await api("POST", `/v1/review/items/${item.item_id}/claim`);
    state.items[state.index] = state.item;
    say(`Claimed #${item.item_id}.`);
  } catch (err) {
    say(`Could not claim #${item.item_id}: ${err.message}`, "error");
  }
  renderQueue();
  renderDetail();
}

// -- resolve -------------------------------------------------------------------------

function buildLabels() {
  const fieldset = $("labels");
  fieldset.dataset.labels.split(" ").forEach((name, i) => {
    const id = `label-${name}`;
    const input = el("input");
    Object.assign(input, { type: "radio", name: "label", value: name, id, required: true });
    const label = el("label", `${i + 1} ${name.replace(/_/g, " ")}`);
    label.htmlFor = id;
    const row = el("div", undefined, "choice");
    row.append(input, label);
    fieldset.append(row);
  });
}

function chooseLabel(n) {
  const radios = $("labels").querySelectorAll("input[type=radio]");
  if (n >= 1 && n <= radios.length) radios[n - 1].checked = true;
}

async function submit(event) {
  if (event) event.preventDefault();
  const item = state.item;
  if (!item || item.status === "resolved") return;
  const chosen = $("labels").querySelector("input[type=radio]:checked");
  if (!chosen) {
    say("Choose a label first (1–7).", "error");
    return;
  }
  const body = { label: chosen.value, gold: $("gold").checked };
  const correction = $("correction").value.trim();
  const note = $("note").value.trim();
  if (correction) body.correction = correction;
  if (note) body.note = note;
  try {
    const done = await api("POST", `/v1/review/items/${item.item_id}/resolve`, body);
    say(`Resolved #${done.item_id} as ${done.label}${done.gold ? " (gold)" : ""}.`);
  } catch (err) {
    say(`Could not resolve #${item.item_id}: ${err.message}`, "error");
    return;
  }
  $("resolve").reset();
  await load(state.index);
  $("queue").focus();
}

// -- keyboard ------------------------------------------------------------------------

function typing(target) {
  const tag = target.tagName;
  return tag === "TEXTAREA" || tag === "SELECT" || (tag === "INPUT" && !["radio", "checkbox"].includes(target.type));
}

function onKey(event) {
  if ($("workspace").hidden || event.altKey || event.metaKey) return;
  const target = event.target;
  if (typing(target)) {
    if (event.key === "Escape") target.blur();
    else if (event.key === "Enter" && event.ctrlKey && target.id === "correction") submit(event);
    return;
  }
  if (event.ctrlKey) return;
  if (event.key === "Enter" && target.tagName === "BUTTON") return; // the button's own action
  const actions = {
    j: () => move(1),
    k: () => move(-1),
    c: () => claim(),
    g: () => { $("gold").checked = !$("gold").checked; },
    e: () => $("correction").focus(),
    r: () => load(state.index),
    Enter: () => submit(),
  };
  if (/^[1-9]$/.test(event.key)) {
    event.preventDefault();
    chooseLabel(Number(event.key));
  } else if (actions[event.key]) {
    event.preventDefault();
    actions[event.key]();
  }
}

function start() {
  buildLabels();
  $("signin").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); load(); });
  $("claim").addEventListener("click", claim);
  $("resolve").addEventListener("submit", submit);
  document.addEventListener("keydown", onKey);
  if (apiKey()) {
    showSession();
    load();
  } else {
    $("key").focus();
  }
}

start();
