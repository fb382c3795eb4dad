// weir console: the Filters page (every group's filters with their counters; upload,
// reset, remove). Loaded after app.js, whose helpers it uses; same invariant: values from
// the server only ever become text nodes.
"use strict";

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
      el("label", {}, "Parameters (one K=V a line)", el("textarea", { name: "params" }))], "Upload",
      async (v) => {
        const f = file.files[0];
        if (!f) throw new ApiError("choose a component file", false);
        const bytes = new Uint8Array(await f.arrayBuffer());
        let bin = "";
        for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
        const paramsList = (v.params || "").split("\n").filter((l) => l.trim()).map((l) => {
          const i = l.indexOf("=");
          if (i < 1) throw new ApiError(`parameter line ${JSON.stringify(l)} is not K=V`, false);
          return [l.slice(0, i), l.slice(i + 1)];
        });
        const r = await post("/api/filters/upload", { group: v.group, topic: v.topic, params: paramsList, component_base64: btoa(bin) });
        load();
        return r.brokers.map((b) => `${b.broker}: version ${b.version}, sha256 ${b.sha256.slice(0, 12)}… `);
      }),
    el("div", { class: "box" }, el("label", {}, "Group ", el("input", { type: "text", value: state.group, oninput: (e) => { state.group = e.target.value; load(); } })),
      el("span", { class: "muted" }, " (refreshes every 2 s)")),
    list);
  await load();
  every(2000, load);
};
