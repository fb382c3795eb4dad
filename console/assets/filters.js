// weir console: the Filters page (every group's filters with their counters; upload,
// reset, remove) and the preview, which tries a component on a topic's last messages in
// the console (`weir filter test` behind the page). Loaded after app.js, whose helpers it
// uses; same invariant: values from the server only ever become text nodes.
"use strict";

// The chosen file of `input`, in Base64.
async function fileBase64(input) {
  const f = input.files[0];
  if (!f) throw new ApiError("choose a component file", false);
  const bytes = new Uint8Array(await f.arrayBuffer());
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}

// `K=V` lines as pairs.
function pairs(text, what) {
  return (text || "").split("\n").filter((l) => l.trim()).map((l) => {
    const i = l.indexOf("=");
    if (i < 1) throw new ApiError(`${what} line ${JSON.stringify(l)} is not K=V`, false);
    return [l.slice(0, i), l.slice(i + 1)];
  });
}

pages.filters = async (main, params) => {
  const list = el("div", {});
  const state = { group: params.get("group") || "" };
  const load = () => guarded(list, async () => {
    const d = await api("/api/filters?" + q({ group: state.group }));
    if (!d.filters.length) return el("p", {}, "No filter is registered.");
    return table(["Broker", "Group", "Topic", "Version", "sha256", "Parameters", "State", "Calls", "In", "Kept", "ns/message", "Failures", ""],
      d.filters.map((f) => ({
        attrs: { "data-group": f.group, "data-topic": f.topic },
        cells: [f.broker, f.group, f.topic, f.version, el("code", { title: f.sha256 }, f.sha256.slice(0, 12)), f.params.map(([k, v]) => `${k}=${v}`).join(", "),
          el("span", { class: "state-" + f.state, "data-testid": "filter-state" }, f.state === "failed" ? "failed: " + f.failed : "active"),
          el("span", { "data-testid": "filter-calls" }, fmtNum(f.calls)), el("span", { "data-testid": "filter-in" }, fmtNum(f.messages_in)), fmtNum(f.messages_kept), fmtNum(f.ns_per_message),
          f.failures.total ? `${f.failures.total} (traps ${f.failures.traps}, time ${f.failures.deadlines}, memory ${f.failures.memory_exhausted}, errors ${f.failures.guest_errors}, verdicts ${f.failures.wrong_verdicts})` : "0",
          el("span", {},
            f.state === "failed" ? el("button", { type: "button", class: "secondary", onclick: () => act("/api/filters/reset", f) }, "Reset") : null, " ",
            el("button", { type: "button", class: "danger", onclick: () => act("/api/filters/remove", f, `Remove the filter of ${f.group} on ${f.topic}?`) }, "Remove"))],
      })), { testid: "filters", num: [7, 8, 9, 10] });
  });
  const act = async (path, f, question) => {
    if (question && !confirm(question)) return;
    try { await post(path, { group: f.group, topic: f.topic }); } catch (e) { list.prepend(errorBox(e)); return; }
    load();
  };
  const file = el("input", { type: "file", name: "component", accept: ".wasm", "data-testid": "filter-file", required: true });
  main.append(el("h1", {}, "Filters"),
    form("upload-filter", [input("group", "Consumer group", { required: true }), input("topic", "Topic", { required: true }), el("label", {}, "Component (.wasm) ", file),
      input("memory", "Memory cap", { placeholder: "default, or e.g. 64MiB", size: 16 }),
      el("label", {}, "Parameters (one K=V a line)", el("textarea", { name: "params" }))], "Upload",
      async (v) => {
        const component_base64 = await fileBase64(file);
        const r = await post("/api/filters/upload", { group: v.group, topic: v.topic, params: pairs(v.params, "parameter"), memory: v.memory, component_base64 });
        load();
        return r.brokers.map((b) => `${b.broker}: version ${b.version}, sha256 ${b.sha256.slice(0, 12)}… `);
      }),
    el("div", { class: "box" }, el("label", {}, "Group ", el("input", { type: "text", value: state.group, oninput: (e) => { state.group = e.target.value; load(); } })),
      el("span", { class: "muted" }, " (refreshes every 2 s)")),
    list,
    el("h2", {}, "Try a filter on a topic's last messages"),
    el("p", { class: "muted" }, "The console runs the component itself, in the brokers' filter runtime and limits, over the topic's newest messages (up to 1,000): nothing is uploaded, no offset moves. One preview at a time per console."),
    ...previewForm());
  await load();
  every(2000, load);
};

function previewForm() {
  const file = el("input", { type: "file", name: "component", accept: ".wasm", "data-testid": "preview-file", required: true });
  const out = el("div", { "data-testid": "preview-out" });
  const f = form("preview-filter", [input("topic", "Topic", { required: true }), input("count", "Last messages", { type: "number", value: 100, min: 1, max: 1000 }),
    el("label", {}, "Component (.wasm) ", file), input("memory", "Memory cap", { placeholder: "default, or e.g. 64MiB", size: 16 }),
    input("group", "As group", { placeholder: "weir-console-preview" }),
    el("label", {}, "Parameters (one K=V a line)", el("textarea", { name: "params" }))], "Try it",
    async (v) => {
      out.replaceChildren(el("p", { class: "muted" }, "Running…"));
      const component_base64 = await fileBase64(file);
      let d;
      try {
        d = await post("/api/filters/preview", { topic: v.topic, count: Number(v.count) || 100, group: v.group, memory: v.memory, params: pairs(v.params, "parameter"), component_base64 });
      } catch (e) { out.replaceChildren(); throw e; }
      out.replaceChildren(...previewView(d));
      return "";
    });
  return [f, out];
}

function previewView(d) {
  const nodes = [el("p", { "data-testid": "preview-summary" }, `${fmtNum(d.read)} of the last ${fmtNum(d.asked)} messages of ${d.topic} read: ${fmtNum(d.kept)} kept, ${fmtNum(d.dropped)} dropped` + (d.needs_body ? " (the filter reads bodies)." : "."))];
  if (d.error) nodes.push(el("div", { class: "error", role: "alert", "data-testid": "preview-error" }, d.error));
  if (d.log.length || d.log_lines_dropped) {
    nodes.push(el("h3", {}, "The filter's log"), el("pre", { class: "body", "data-testid": "preview-log" }, d.log.map((l) => `[${l.level}] ${l.line}`).join("\n")));
    if (d.log_lines_dropped) nodes.push(el("p", { class: "muted" }, `${fmtNum(d.log_lines_dropped)} more lines dropped (at most 10 a second).`));
  }
  if (!d.messages.length) nodes.push(el("p", {}, "The topic has no message to try it on."));
  else nodes.push(table(["Broker", "Queue", "Offset", "Tags", "Keys", "Stored", "Verdict", "Message"],
    d.messages.map((m) => ({ attrs: { "data-verdict": m.verdict || "none" }, cells: [m.broker, m.queue, fmtNum(m.queue_offset), m.tags, m.keys.join(", "), fmtTime(m.store_ts),
      el("span", { class: m.verdict === "kept" ? "state-active" : m.verdict === "dropped" ? "muted" : "state-failed", "data-testid": "preview-verdict" }, m.verdict || "not judged"),
      link("/messages?" + q({ id: m.msg_id }), m.msg_id)] })),
    { testid: "preview", num: [1, 2] }));
  return nodes;
}
