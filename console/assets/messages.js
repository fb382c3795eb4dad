// weir console: the Messages page (by key, by id, by store time). Loaded after app.js,
// whose helpers it uses; same invariant: values from the server only ever become text
// nodes.
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
    pre, resend);
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
