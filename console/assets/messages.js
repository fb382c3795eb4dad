// weir console: the Messages page (by key, by id, by store time) and a message's delivery
// trail. Loaded after app.js, whose helpers it uses; same invariant: values from the server
// only ever become text nodes.
"use strict";

function hex(b64) {
  const bin = atob(b64);
  const lines = [];
  for (let i = 0; i < bin.length; i += 16) {
    const chunk = bin.slice(i, i + 16);
    const h = [...chunk].map((c) => c.charCodeAt(0).toString(16).padStart(2, "0")).join(" ");
    const a = [...chunk].map((c) => (c.charCodeAt(0) >= 32 && c.charCodeAt(0) < 127 ? c : ".")).join("");
    lines.push(i.toString(16).padStart(8, "0") + "  " + h.padEnd(48) + " " + a);
  }
  return lines.join("\n");
}

function messageCard(m) {
  const pre = el("pre", { class: "body", "data-testid": "message-body" });
  let json = null;
  if (m.body_text !== null) { try { json = JSON.stringify(JSON.parse(m.body_text), null, 2); } catch (_) { /* not JSON */ } }
  const show = (mode) => {
    pre.textContent = mode === "hex" ? hex(m.body_base64) : mode === "json" ? json : m.body_text;
    pre.dataset.mode = mode;
  };
  show(m.body_text === null ? "hex" : "text");
  const origin = (m.props.find(([k]) => k === "RETRY_TOPIC") || [])[1];
  const resend = m.topic.startsWith("%DLQ%") && origin
    ? form("resend", [], `Re-send to ${origin}`, async () => {
      const r = await post("/api/group/resend", { msg_id: m.msg_id });
      return `Sent to ${r.topic} as ${r.msg_id}`;
    }) : null;
  return el("div", { class: "message", "data-testid": "message", "data-msg-id": m.msg_id },
    table(["Message id", "Topic", "Broker / queue / offset", "Tags", "Keys", "Stored", "Born", "Reconsumed"],
      [[m.msg_id, m.topic, `${m.broker} / ${m.queue} / ${m.queue_offset}`, m.tags, m.keys.join(", "), fmtTime(m.store_ts), `${fmtTime(m.born_ts)} from ${m.born_host}`, m.reconsume_times]]),
    m.props.length ? table(["Property", "Value"], m.props, { testid: "properties" }) : null,
    el("div", {}, `Body (${fmtNum(m.body_len)} bytes): `,
      el("button", { type: "button", class: "secondary", disabled: m.body_text === null, onclick: () => show("text") }, "Text"), " ",
      el("button", { type: "button", class: "secondary", disabled: json === null, onclick: () => show("json") }, "JSON"), " ",
      el("button", { type: "button", class: "secondary", onclick: () => show("hex") }, "Hex")),
    pre, resend, trailBox(m));
}

// A message's delivery trail, loaded on demand (3 requests to the cluster).
function trailBox(m) {
  const out = el("div", { "data-testid": "trail" });
  const load = () => guarded(out, () => trailView(m));
  return el("div", { class: "trail" },
    el("button", { type: "button", class: "secondary", "data-testid": "trail-button", onclick: load }, "Delivery trail"), out);
}

async function trailView(m) {
  const d = await api("/api/messages/trail?" + q({ id: m.msg_id, topic: m.topic }));
  const s = d.stored;
  const copies = (g, kinds) => {
    const cs = g.copies.filter((c) => kinds.includes(c.kind));
    if (!cs.length) return "–";
    return el("span", {}, cs.map((c) => el("div", { "data-testid": "trail-copy", "data-kind": c.kind },
      link("/messages?" + q({ id: c.msg_id }), `${c.kind_text} #${c.reconsume_times}`),
      ` in ${c.topic} at ${c.queue_offset}, ${fmtTime(c.store_ts)}`,
      c.kind === "retry" ? (c.consumed === true ? ", consumed" : c.consumed === false ? ", pending" : ", no offset on its queue") : "")));
  };
  const out = [el("h3", {}, "Delivery trail"),
    el("p", { "data-testid": "trail-stored" }, `Stored on ${s.broker} (${s.addr}), ${s.topic} queue ${s.queue} at offset ${s.queue_offset}, ${fmtTime(s.store_ts)}.`,
      d.queue_max_offset == null ? "" : ` The queue's next offset is ${fmtNum(d.queue_max_offset)}.`)];
  if (d.known) {
    out.push(d.groups.length
      ? table(["Consumer group", "Committed offset", "This message", "Retries", "Dead letters"],
        d.groups.map((g) => ({ attrs: { "data-group": g.group }, cells: [link("/group?" + q({ name: g.group }), g.group), fmtNum(g.consumer_offset),
          el("span", { class: g.state === "consumed" ? "state-active" : "state-failed", "data-testid": "trail-state" }, g.state === "consumed" ? "consumed (offset past it)" : "pending"),
          copies(g, ["retry", "retry-waiting"]), copies(g, ["dead-letter"])] })),
        { testid: "trail-groups" })
      : el("p", {}, "No consumer group has committed an offset on this queue."));
  }
  out.push(el("div", { class: "muted" }, "Not known here: ", el("ul", {}, d.unknown.map((u) => el("li", {}, u)))));
  return out;
}


pages.messages = async (main, params) => {
  const results = el("div", { "data-testid": "messages" });
  const showAll = async (path) => guarded(results, async () => {
    const d = await api(path);
    if (!d.messages.length) return el("p", {}, "No message found.");
    const cards = d.messages.map(messageCard);
    if (d.next) cards.push(el("button", { type: "button", class: "secondary", onclick: () => showAll(path.replace(/&cursor=[^&]*/, "") + "&" + q({ cursor: d.next })) }, "Next page →"));
    return cards;
  });
  const topic = params.get("topic") || "";
  const local = (ms) => new Date(ms).toISOString().slice(0, 19);
  main.append(el("h1", {}, "Messages"),
    form("by-key", [input("topic", "Topic", { value: topic, required: true }), input("key", "Key", { required: true })], "Find by key",
      async (v) => { history.replaceState(null, "", "/messages?" + q(v)); await showAll("/api/messages/key?" + q(v)); return ""; }),
    form("by-id", [input("id", "Message id", { size: 40, required: true })], "Find by id",
      async (v) => { history.replaceState(null, "", "/messages?" + q(v)); await showAll("/api/messages/id?" + q(v)); return ""; }),
    form("by-time", [input("topic", "Topic", { value: topic, required: true }),
      input("from", "From (UTC)", { type: "datetime-local", step: 1, value: local(Date.now() - 3600 * 1000) }),
      input("to", "To (UTC)", { type: "datetime-local", step: 1, value: local(Date.now() + 60 * 1000) })], "List by store time",
      async (v) => {
        const from_ms = v.from ? Date.parse(v.from + "Z") : 0;
        const to_ms = v.to ? Date.parse(v.to + "Z") : Date.now();
        await showAll("/api/messages/time?" + q({ topic: v.topic, from_ms, to_ms, per_page: 20 }));
        return "";
      }),
    results);
  if (params.get("key") && topic) await showAll("/api/messages/key?" + q({ topic, key: params.get("key") }));
  else if (params.get("id")) await showAll("/api/messages/id?" + q({ id: params.get("id") }));
  else if (topic && params.get("range") === "all") await showAll("/api/messages/time?" + q({ topic, from_ms: 0, to_ms: Date.now() + 60000, per_page: 20 }));
};
