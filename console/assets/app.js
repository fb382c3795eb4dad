// weir console: renders each page from its JSON twin under /api/. This file holds the
// helpers, most pages and the start; messages.js and filters.js (loaded after it, sharing
// its top-level names) hold the Messages and Filters pages.
//
// Invariant: nothing here assigns HTML. Every value from the server (message bodies and
// properties are anyone's) enters the page as a text node or an attribute value set
// through the DOM, so it shows as text. State changes are POSTs carrying the session's
// CSRF token (the <meta name="csrf-token"> the server put in the page).
"use strict";

// ---- DOM and HTTP helpers --------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "value") e.value = v;
    else if (k === "checked") e.checked = !!v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const $main = () => document.getElementById("main");
const csrf = () => document.querySelector('meta[name="csrf-token"]').getAttribute("content");

class ApiError extends Error {
  constructor(message, login) { super(message); this.login = login; }
}

async function call(method, path, body) {
  const opts = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (method !== "GET") {
    opts.headers["Content-Type"] = "application/json";
    opts.headers["X-CSRF-Token"] = csrf();
    opts.body = JSON.stringify(body || {});
  }
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (e) {
    throw new ApiError("the console itself cannot be reached: " + e.message, false);
  }
  const text = await resp.text();
  let data = null;
  try { data = JSON.parse(text); } catch (_) { /* not JSON: shown as text below */ }
  if (!resp.ok) {
    const msg = data && data.error ? data.error : (text || resp.statusText);
    throw new ApiError(resp.status + " " + resp.statusText + ": " + msg, !!(data && data.login));
  }
  return data;
}
const api = (path) => call("GET", path);
const post = (path, body) => call("POST", path, body);
const q = (params) => new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== "")).toString();

function errorBox(e) {
  const box = el("div", { class: "error", role: "alert", "data-testid": "error" }, "Error: " + e.message);
  if (e.login) box.append(el("div", {}, el("a", { href: "/login?next=" + encodeURIComponent(location.pathname + location.search) }, "Log in with an access key")));
  return box;
}

// Runs `fn`, showing its error in `where` (replacing what was there) instead of the result.
async function guarded(where, fn) {
  try {
    const nodes = await fn();
    where.replaceChildren(...[].concat(nodes || []));
  } catch (e) {
    where.replaceChildren(errorBox(e));
  }
}

// A form whose submit runs `fn(values)`; the outcome (or error) shows under it.
function form(testid, fields, label, fn, opts) {
  const out = el("div", { "data-testid": testid + "-result" });
  const f = el("form", { "data-testid": testid }, fields, el("button", { type: "submit", class: (opts && opts.danger) ? "danger" : "" }, label), out);
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const values = Object.fromEntries(new FormData(f).entries());
    try {
      const r = await fn(values, f);
      out.replaceChildren(...(r === "" || r == null ? [] : [el("div", { class: "ok" }, r)]));
    } catch (e) {
      out.replaceChildren(errorBox(e));
    }
  });
  return f;
}

const input = (name, label, attrs) => el("label", {}, label + " ", el("input", Object.assign({ name, type: "text" }, attrs || {})));

function table(headers, rows, attrs) {
  const num = new Set((attrs && attrs.num) || []);
  return el("table", attrs && attrs.testid ? { "data-testid": attrs.testid } : {},
    el("thead", {}, el("tr", {}, headers.map((h, i) => el("th", { class: num.has(i) ? "num" : null }, h)))),
    el("tbody", {}, rows.map((r) => el("tr", r.attrs || {}, (r.cells || r).map((c, i) => el("td", { class: num.has(i) ? "num" : null }, c))))));
}

const fmtTime = (ms) => ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "–";
const fmtDuration = (ms) => {
  const s = Math.floor(ms / 1000), d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  return d ? `${d} d ${h} h` : h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
};
const fmtNum = (n) => (n === null || n === undefined) ? "–" : Number(n).toLocaleString("en-US");
const link = (href, text) => el("a", { href }, text);

function pager(paging, go) {
  return el("div", { class: "pager", "data-testid": "pager" },
    el("button", { type: "button", class: "secondary", disabled: paging.page <= 1, onclick: () => go(paging.page - 1) }, "← Previous"),
    `page ${paging.page} of ${paging.pages} (${fmtNum(paging.total)})`,
    el("button", { type: "button", class: "secondary", disabled: paging.page >= paging.pages, onclick: () => go(paging.page + 1) }, "Next →"));
}

// Refreshes `fn` every `ms` while this page is shown; one request at a time.
let timers = [];
function every(ms, fn) {
  let busy = false;
  const t = setInterval(async () => {
    if (busy) return;
    busy = true;
    try { await fn(); } finally { busy = false; }
  }, ms);
  timers.push(t);
}

// ---- Pages -----------------------------------------------------------------------------

const pages = {};

pages.cluster = async (main) => {
  const body = el("div", {});
  const canvas = el("canvas", { width: 900, height: 180, "data-testid": "rate-chart" });
  main.append(el("h1", {}, "Cluster"), body, el("h2", {}, "Produce and consume rates (messages/s, all brokers, last 15 minutes)"), canvas,
    el("p", { class: "muted" }, "Blue: produced. Green: consumed. Sampled every 5 s while this page is open."));
  const load = () => guarded(body, async () => {
    const d = await api("/api/cluster");
    drawRates(canvas, d.brokers);
    if (!d.brokers.length) return el("p", {}, "No broker is registered with the name servers.");
    return table(["Cluster", "Broker", "Id", "Role", "Address", "Version", "Messages in", "Messages out", "Connections", "Clients", "Topics", "Disk used", "Replication lag", "Uptime", "Error"],
      d.brokers.map((b) => {
        const s = b.stats || {};
        return [b.cluster, b.broker, b.id, b.role, b.addr, el("span", { "data-testid": "broker-version" }, b.version || "–"), fmtNum(s.messages_in), fmtNum(s.messages_out), fmtNum(s.connections), fmtNum(s.clients), fmtNum(s.topics),
          s.disk_used_percent == null ? "–" : s.disk_used_percent.toFixed(1) + " %",
          b.lag_bytes == null ? "–" : `${fmtNum(b.lag_bytes)} B, ${fmtNum(b.lag_ms)} ms`,
          s.uptime_ms == null ? "–" : el("span", { title: s.started_at_ms ? "started " + fmtTime(s.started_at_ms) : null }, fmtDuration(s.uptime_ms)),
          b.error ? el("span", { class: "state-failed" }, b.error) : ""];
      }), { testid: "brokers", num: [6, 7, 8, 9, 10] });
  });
  await load();
  every(5000, load);
};

function drawRates(canvas, brokers) {
  const sum = new Map();
  for (const b of brokers) for (const [t, i, o] of (b.rates || [])) {
    const k = Math.round(t / 5000) * 5000;
    const v = sum.get(k) || [0, 0];
    sum.set(k, [v[0] + i, v[1] + o]);
  }
  const pts = [...sum.entries()].sort((a, b) => a[0] - b[0]);
  const g = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, pad = 30;
  g.clearRect(0, 0, W, H);
  g.fillStyle = "#6b7280";
  g.font = "11px sans-serif";
  if (pts.length < 1) { g.fillText("Collecting samples…", pad, H / 2); return; }
  const max = Math.max(1, ...pts.map(([, v]) => Math.max(v[0], v[1])));
  const t1 = pts[pts.length - 1][0], t0 = t1 - 15 * 60 * 1000;
  const x = (t) => pad + (W - 2 * pad) * (t - t0) / (t1 - t0 || 1);
  const y = (v) => H - pad + 10 - (H - pad) * v / max;
  g.fillText(max.toFixed(1) + "/s", 2, 12);
  g.fillText("0", 2, H - pad + 10);
  for (const [idx, color] of [[0, "#2857c5"], [1, "#067647"]]) {
    g.strokeStyle = color;
    g.beginPath();
    pts.forEach(([t, v], n) => (n ? g.lineTo(x(t), y(v[idx])) : g.moveTo(x(t), y(v[idx]))));
    g.stroke();
  }
}

pages.topics = async (main, params) => {
  const list = el("div", {});
  const state = { q: params.get("q") || "", system: params.get("system") === "1", page: Number(params.get("page")) || 1 };
  const load = () => guarded(list, async () => {
    const d = await api("/api/topics?" + q({ q: state.q, system: state.system ? "true" : "", page: state.page, per_page: 100 }));
    if (!d.topics.length) return el("p", {}, "No topic matches.");
    const known = (v) => (v == null ? "–" : v);
    return [table(["Topic", "Kind", "Brokers", "Read queues", "Write queues", "Permission"],
      d.topics.map((t) => [link("/topic?" + q({ name: t.name }), t.name), t.kind, t.brokers.join(", ") || "–", known(t.read_queues), known(t.write_queues), known(t.perm)]),
      { testid: "topics", num: [3, 4] }),
      pager(d.paging, (p) => { state.page = p; load(); })];
  });
  main.append(el("h1", {}, "Topics"),
    form("create-topic", [input("name", "New topic", { required: true }), input("queues", "Queues", { type: "number", value: 8, min: 1, max: 1024 })], "Create",
      async (v) => {
        const r = await post("/api/topics", { name: v.name, queues: Number(v.queues) });
        load();
        return ["Created ", link("/topic?" + q({ name: r.topic }), r.topic), " on " + r.brokers.join(", ")];
      }),
    el("div", { class: "box" },
      el("label", {}, "Filter ", el("input", { type: "text", value: state.q, "data-testid": "topic-search", oninput: (e) => { state.q = e.target.value; state.page = 1; load(); } })),
      el("label", {}, el("input", { type: "checkbox", checked: state.system, onchange: (e) => { state.system = e.target.checked; load(); } }), " retry, dead-letter and system topics")),
    list);
  await load();
};

pages.topic = async (main, params) => {
  const name = params.get("name") || "";
  const body = el("div", {});
  const load = () => guarded(body, async () => {
    const d = await api("/api/topic?" + q({ name }));
    const out = [el("h2", {}, "Route"), table(["Broker", "Read queues", "Write queues", "Permission"], d.route.map((r) => [r.broker, r.read_queues, r.write_queues, r.perm]), { testid: "route" })];
    for (const b of d.brokers) {
      out.push(el("h2", {}, `Queues on ${b.broker} (${b.addr})`));
      if (b.error) { out.push(el("div", { class: "error" }, b.error)); continue; }
      out.push(table(["Queue", "Min offset", "Max offset", "Messages"], b.queues.map((x) => [x.queue, fmtNum(x.min), fmtNum(x.max), fmtNum(x.messages)]), { testid: "queues", num: [1, 2, 3] }));
    }
    return out;
  });
  main.append(el("h1", {}, "Topic ", el("code", { "data-testid": "topic-name" }, name)), body,
    el("h2", {}, "Send a test message"),
    form("send-message", [input("tag", "Tag"), input("keys", "Keys (comma-separated)"), el("label", {}, "Properties (one K=V a line)", el("textarea", { name: "props" })),
      el("label", { style: null }, "Body", el("textarea", { name: "body", "data-testid": "send-body" }))], "Send",
      async (v) => {
        const props = (v.props || "").split("\n").filter((l) => l.trim()).map((l) => {
          const i = l.indexOf("=");
          if (i < 1) throw new ApiError(`property line ${JSON.stringify(l)} is not K=V`, false);
          return [l.slice(0, i), l.slice(i + 1)];
        });
        const r = await post("/api/topic/send", { topic: name, tag: v.tag, keys: (v.keys || "").split(",").map((k) => k.trim()).filter(Boolean), props, body: v.body });
        load();
        return [`${r.status}: message `, link("/messages?" + q({ id: r.msg_id }), r.msg_id), ` on ${r.broker} queue ${r.queue} at offset ${r.queue_offset}`];
      }),
    el("h2", {}, "Change"),
    form("update-topic", [input("queues", "Queues", { type: "number", min: 1, max: 1024 }),
      el("label", {}, "Permission ", el("select", { name: "perm" }, el("option", { value: "" }, "(keep)"), el("option", { value: "rw" }, "rw"), el("option", { value: "r" }, "r (no sends)"), el("option", { value: "w" }, "w (no pulls)")))], "Update",
      async (v) => {
        const r = await post("/api/topic/update", { name, queues: v.queues ? Number(v.queues) : null, perm: v.perm });
        load();
        return r.brokers.map((b) => `${b.broker}: ${b.read_queues} read / ${b.write_queues} write queues, ${b.perm}. `);
      }),
    form("delete-topic", [el("p", {}, "Deleting removes the topic's queues and every group's offsets on it. Type the topic's name, ", el("code", {}, name), ", to confirm."),
      input("confirm", "Topic name", { autocomplete: "off" })], "Delete topic " + name,
      async (v) => {
        const r = await post("/api/topic/delete", { name, confirm: v.confirm });
        return `Deleted ${r.topic} on ${r.brokers.join(", ")}.`;
      }, { danger: true }));
  await load();
};

pages.groups = async (main, params) => {
  const list = el("div", {});
  const state = { q: params.get("q") || "", page: Number(params.get("page")) || 1 };
  const load = () => guarded(list, async () => {
    const d = await api("/api/groups?" + q({ q: state.q, page: state.page, per_page: 100 }));
    const errors = d.errors.map((e) => el("div", { class: "error" }, e));
    if (!d.groups.length) return [errors, el("p", {}, "No consumer group matches.")];
    return [errors, table(["Group", "Model", "Members", "Subscriptions", "Lag", "Retry topic", "Dead-letter topic"],
      d.groups.map((g) => ({ attrs: { "data-group": g.name }, cells: [link("/group?" + q({ name: g.name }), g.name), g.model || "–", g.members, g.subscriptions.join(", ") || "–",
        g.lag == null ? "–" : fmtNum(g.lag), g.retry_topic ? "yes" : "–", g.dead_letter_topic ? "yes" : "–"] })),
      { testid: "groups", num: [2, 4] }),
      pager(d.paging, (p) => { state.page = p; load(); })];
  });
  main.append(el("h1", {}, "Consumer groups"),
    el("p", { class: "muted" }, "Groups a broker knows (live members or committed offsets) and groups with a retry or dead-letter topic. Open any other group by name."),
    el("div", { class: "box" },
      el("label", {}, "Filter ", el("input", { type: "text", value: state.q, "data-testid": "group-search", oninput: (e) => { state.q = e.target.value; state.page = 1; load(); } }))),
    form("open-group", [input("name", "Open group", { required: true })], "Open", async (v) => { location.href = "/group?" + q({ name: v.name }); return ""; }),
    list);
  await load();
};

pages.group = async (main, params) => {
  const name = params.get("name") || "";
  const body = el("div", {});
  let topics = [];
  const topicSelect = el("select", { name: "topic", "data-testid": "reset-topic" });
  const load = () => guarded(body, async () => {
    const d = await api("/api/group?" + q({ name }));
    // The subscribed topics first, the group's retry topic last.
    const seen = [...new Set(d.subscriptions.map((s) => s.topic).concat(d.queues.map((x) => x.topic)))]
      .sort((a, b) => (a.startsWith("%") - b.startsWith("%")) || a.localeCompare(b));
    if (seen.join() !== topics.join()) {
      topics = seen;
      topicSelect.replaceChildren(...topics.map((t) => el("option", { value: t }, t)));
    }
    const out = [el("div", { class: "stats" },
      el("div", {}, el("span", {}, "Model"), d.model || "– (no live member)"),
      el("div", {}, el("span", {}, "Live members"), el("b", { "data-testid": "member-count" }, d.members.length)),
      el("div", {}, el("span", {}, "Total lag"), el("b", { class: "big", "data-testid": "total-lag", "data-lag": d.total_lag }, fmtNum(d.total_lag))),
      el("div", {}, el("span", {}, "Retry backlog"), fmtNum(d.retry_depth)),
      el("div", {}, el("span", {}, "Dead letters"), d.dead_letters == null ? "–" : link("/messages?" + q({ topic: d.dead_letter_topic, range: "all" }), fmtNum(d.dead_letters))))];
    for (const e of d.errors) out.push(el("div", { class: "error" }, e));
    out.push(el("h2", {}, "Members"), d.members.length
      ? table(["Client id", "Address", "Model", "Subscriptions", "Last heartbeat"], d.members.map((m) => [m.client_id, m.addr, m.model, m.subscriptions.map(([t, e]) => `${t}: ${e}`).join("; "), Math.round(m.last_heartbeat_ms_ago / 1000) + " s ago"]), { testid: "members" })
      : el("p", { class: "muted" }, "No live member."));
    out.push(el("h2", {}, "Progress per queue"), table(["Topic", "Broker", "Queue", "Broker offset", "Consumer offset", "Lag", "Held by"],
      d.queues.map((x) => ({ attrs: { "data-topic": x.topic, "data-queue": x.queue }, cells: [x.topic, x.broker, x.queue, fmtNum(x.broker_offset), fmtNum(x.consumer_offset), fmtNum(x.lag), x.holder || "–"] })),
      { testid: "progress", num: [2, 3, 4, 5] }));
    return out;
  });
  const live = el("input", { type: "checkbox", checked: true, "data-testid": "live" });
  main.append(el("h1", {}, "Consumer group ", el("code", { "data-testid": "group-name" }, name)),
    el("label", {}, live, " refresh every 2 s"), body,
    el("h2", {}, "Reset offsets"),
    form("reset-offsets", [el("label", {}, "Topic ", topicSelect),
      el("label", {}, "To ", el("select", { name: "to" }, el("option", { value: "earliest" }, "earliest (first stored)"), el("option", { value: "latest" }, "latest (skip all)"), el("option", { value: "time" }, "a time"))),
      input("time", "Time (UTC)", { type: "datetime-local", step: 1 }),
      el("label", {}, el("input", { type: "checkbox", name: "force", value: "1" }), " even with live members"),
      el("p", {}, "Stop the group's consumers first: a live consumer commits over the reset. Type the group's name, ", el("code", {}, name), ", to confirm."),
      input("confirm", "Group name", { autocomplete: "off" })], "Reset offsets",
      async (v) => {
        const time_ms = v.time ? Date.parse(v.time + "Z") : null;
        const r = await post("/api/group/reset", { group: name, topic: v.topic, to: v.to, time_ms, force: v.force === "1", confirm: v.confirm });
        load();
        return `Reset ${r.queues.length} queue(s) of ${r.topic}: ` + r.queues.map((x) => `${x.broker}/${x.queue} ${x.old ?? "–"}→${x.new}`).join(", ");
      }, { danger: true }));
  await load();
  every(2000, () => (live.checked ? load() : null));
};

// ---- Transactions and login (Messages: messages.js; Filters: filters.js) -----------------

pages.transactions = async (main, params) => {
  const state = params.get("state") === "dead" ? "dead" : "pending";
  const list = el("div", {});
  const load = () => guarded(list, async () => {
    const d = await api("/api/transactions?" + q({ state }));
    if (!d.transactions.length) return el("p", {}, `No ${state} transaction.`);
    const rows = d.transactions.map((t) => [t.broker, t.transaction_id, t.producer_group, t.topic, t.queue, fmtTime(t.first_stored_ms), t.check_times, t.msg_id,
      state === "dead" ? el("span", {},
        el("button", { type: "button", onclick: () => resolve(t, "commit") }, "Commit"), " ",
        el("button", { type: "button", class: "danger", onclick: () => resolve(t, "rollback") }, "Roll back")) : ""]);
    return [table(["Broker", "Transaction", "Producer group", "Topic", "Queue", "First stored", "Check-backs", "Half message", ""], rows, { testid: "transactions" }),
      d.truncated ? el("p", { class: "muted" }, "More than shown: the first 1,000 per broker.") : null];
  });
  const resolve = async (t, decision) => {
    if (!confirm(`${decision} transaction ${t.transaction_id}?`)) return;
    try { await post("/api/transactions/resolve", { id: t.transaction_id, decision }); } catch (e) { list.prepend(errorBox(e)); return; }
    load();
  };
  main.append(el("h1", {}, "Transactions"),
    el("p", {}, state === "pending" ? ["Pending half messages. ", link("/transactions?state=dead", "Dead ones (given up on) →")] : ["Given up on after too many check-backs: decide by hand. ", link("/transactions", "← Pending")]),
    list);
  await load();
};

pages.login = async (main, params) => {
  main.append(el("h1", {}, "Log in"),
    el("p", {}, "The cluster has access control on: requests are signed with your access key. The secret stays in the console's memory for this session."),
    form("login", [input("access_key", "Access key", { required: true, autocomplete: "username" }), input("secret", "Secret", { type: "password", required: true, autocomplete: "current-password" })], "Log in",
      async (v) => {
        await post("/api/login", v);
        const next = params.get("next") || "/";
        location.href = next.startsWith("/") && !next.startsWith("//") ? next : "/";
        return "Logged in.";
      }));
};

// ---- Start -------------------------------------------------------------------------------

const routes = { "/": "cluster", "/topics": "topics", "/topic": "topic", "/groups": "groups", "/group": "group", "/messages": "messages", "/filters": "filters", "/transactions": "transactions", "/login": "login" };

async function start() {
  const page = routes[location.pathname] || "cluster";
  const parent = { topic: "topics", group: "groups" }[page] || page;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === parent);
  const main = $main();
  main.replaceChildren();
  api("/api/session").then((s) => {
    const u = document.getElementById("user");
    if (!s.user) return u.replaceChildren(link("/login", "Log in"));
    u.replaceChildren("Signed as " + s.user + " ", el("button", { type: "button", class: "secondary", onclick: async () => { await post("/api/logout"); location.reload(); } }, "Log out"));
  }).catch(() => {});
  try {
    await pages[page](main, new URLSearchParams(location.search));
  } catch (e) {
    main.append(errorBox(e));
  }
  document.body.dataset.ready = page;
}

document.addEventListener("DOMContentLoaded", start);
