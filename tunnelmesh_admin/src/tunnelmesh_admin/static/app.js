// tunnelmesh dashboard: progressive enhancement of the server-rendered pages.
// - the live feed (/events, Server-Sent Events) keeps the peers table, counts and charts current;
// - forms with class "api" call the coordinator's JSON API (the same routes the CLI uses);
// - lists the API owns (coordinator filter rules, transport state) are filled from it.
// No inline script, no eval, no innerHTML with data: every value goes in as text.
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;
  const isAdmin = body.dataset.admin === "yes";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  function scaled(v, units) {
    let i = 0;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return i === 0 ? v.toFixed(0) + " " + units[i] : v.toFixed(1) + " " + units[i];
  }
  const rate = (v) => scaled(v, ["B/s", "kB/s", "MB/s", "GB/s", "TB/s"]);
  const size = (v) => scaled(v, ["B", "kB", "MB", "GB", "TB", "PB"]);

  function ago(ts) {
    if (!ts) return "never";
    const s = Math.max(0, Date.now() / 1000 - ts);
    if (s < 60) return s.toFixed(0) + " s ago";
    if (s < 3600) return (s / 60).toFixed(0) + " min ago";
    if (s < 86400) return (s / 3600).toFixed(0) + " h ago";
    return (s / 86400).toFixed(0) + " d ago";
  }

  let toastTimer = null;
  function toast(text, isError) {
    const t = document.getElementById("toast");
    if (!t) return;
    t.textContent = text;
    t.className = "toast show" + (isError ? " error" : "");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.className = "toast"; }, 3500);
  }

  async function api(method, path, payload) {
    const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (payload !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    const resp = await fetch(path, init);
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      const msg = data && data.message ? data.message : resp.status + " " + resp.statusText;
      const err = new Error(msg);
      err.status = resp.status;
      throw err;
    }
    return data;
  }

  // --- the live feed ---------------------------------------------------------------------
  const rows = new Map(); // peer_id -> row
  let view = { transports: {}, rtt_ms: {} };
  const listeners = [];

  function applyMessage(msg) {
    if (msg.type === "snapshot") {
      rows.clear();
      for (const r of msg.rows) rows.set(r.peer_id, r);
    } else if (msg.type === "update") {
      for (const r of msg.rows) rows.set(r.peer_id, r);
      for (const id of msg.gone) rows.delete(id);
    }
    if (msg.view) view = msg.view;
    for (const fn of listeners) fn(msg);
  }

  function startFeed() {
    if (!window.EventSource) return;
    const live = document.getElementById("live");
    const source = new EventSource("/events");
    source.onopen = () => { if (live) { live.textContent = "live"; live.className = "live on"; } };
    source.onerror = () => { if (live) { live.textContent = "reconnecting"; live.className = "live"; } };
    source.onmessage = (ev) => { applyMessage(JSON.parse(ev.data)); };
  }

  function updateCounts() {
    let online = 0;
    for (const r of rows.values()) if (r.online) online++;
    const on = document.getElementById("online-count");
    const total = document.getElementById("total-count");
    if (on) on.textContent = String(online);
    if (total) total.textContent = String(rows.size);
  }
  listeners.push(updateCounts);

  // --- peers page --------------------------------------------------------------------------
  function pathCell(td, r) {
    td.replaceChildren();
    if (r.name === body.dataset.me) { td.append(el("span", { class: "muted" }, "this peer")); return; }
    const t = view.transports ? view.transports[r.name] : undefined;
    if (!t) { td.append(el("span", { class: "muted" }, "—")); return; }
    const relayed = t === "relay";
    td.append(el("span", { class: "transport " + (relayed ? "relayed" : "direct") }, t), " ",
      el("span", { class: "muted" }, relayed ? "relayed" : "direct"));
  }

  function peerRow(r) {
    const name = el("td", { class: "name" }, el("a", { href: "/peers/" + encodeURIComponent(r.name) }, r.name));
    const tr = el("tr", { "data-peer": r.peer_id, "data-name": r.name }, name,
      el("td", { class: "mono" }, r.mesh_ip), el("td", { class: "status" }), el("td", { class: "path" }),
      el("td", { class: "rtt" }), el("td", { class: "rx" }), el("td", { class: "tx" }),
      el("td", { class: "seen" }), el("td", { class: "exit" }), el("td", { class: "version mono" }));
    return tr;
  }

  function fillRow(tr, r) {
    const status = tr.querySelector(".status");
    status.replaceChildren(el("span", { class: "dot " + (r.online ? "on" : "off") }), r.online ? "online" : "offline");
    pathCell(tr.querySelector(".path"), r);
    const rtt = view.rtt_ms ? view.rtt_ms[r.name] : undefined;
    tr.querySelector(".rtt").textContent = rtt === undefined ? "—" : rtt.toFixed(1) + " ms";
    tr.querySelector(".rx").textContent = rate(r.rx_rate);
    tr.querySelector(".tx").textContent = rate(r.tx_rate);
    const seen = tr.querySelector(".seen");
    seen.dataset.ts = String(r.last_seen);
    seen.textContent = ago(r.last_seen);
    tr.querySelector(".exit").textContent = r.exit ? "yes" : "";
    tr.querySelector(".version").textContent = r.version;
  }

  function initPeers() {
    const tbody = document.querySelector("#peers tbody");
    if (!tbody) return;
    listeners.push((msg) => {
      if (msg.type === "tick") return;
      const existing = new Map();
      for (const tr of tbody.querySelectorAll("tr[data-peer]")) existing.set(tr.dataset.peer, tr);
      const changed = msg.type === "snapshot" ? [...rows.values()] : msg.rows;
      for (const r of changed) {
        let tr = existing.get(r.peer_id);
        if (!tr) { tr = peerRow(r); tbody.append(tr); }
        fillRow(tr, r);
        if (msg.type === "update") { tr.classList.remove("flash"); void tr.offsetWidth; tr.classList.add("flash"); }
      }
      for (const [id, tr] of existing) if (!rows.has(id)) tr.remove();
    });
    setInterval(() => {
      for (const td of tbody.querySelectorAll("td.seen")) td.textContent = ago(Number(td.dataset.ts));
    }, 5000);
  }

  // --- one peer: traffic chart and transport controls --------------------------------------
  function initPeer() {
    const box = document.getElementById("peer");
    if (!box) return;
    const peerId = box.dataset.peer;
    const chartBox = document.getElementById("traffic-chart");
    const xs = [], rx = [], tx = [];
    let plot = null;
    function draw() {
      if (!window.uPlot || !chartBox) return;
      if (!plot) {
        chartBox.replaceChildren();
        plot = new window.uPlot({
          width: Math.max(320, chartBox.clientWidth - 20), height: 240,
          series: [{}, { label: "receive", stroke: "#2563eb", width: 2, value: (u, v) => v == null ? "—" : rate(v) },
            { label: "transmit", stroke: "#7c3aed", width: 2, value: (u, v) => v == null ? "—" : rate(v) }],
          axes: [{}, { values: (u, vals) => vals.map((v) => rate(v)), size: 84 }],
          scales: { y: { range: (u, min, max) => [0, Math.max(1000, max * 1.15)] } },
        }, [xs, rx, tx], chartBox);
      } else {
        plot.setData([xs, rx, tx]);
      }
    }
    function add(t, r, s) {
      xs.push(t); rx.push(r); tx.push(s);
      if (chartBox) { // what the chart shows, readable by scripts and tests
        chartBox.dataset.points = String(xs.length);
        chartBox.dataset.lastRx = String(r);
        chartBox.dataset.lastTx = String(s);
      }
      const cut = xs.length - 3600;
      if (cut > 0) { xs.splice(0, cut); rx.splice(0, cut); tx.splice(0, cut); }
    }
    const historyApi = chartBox ? chartBox.dataset.api : "";
    function loadSpan(span) {
      // the coordinator's ring of this peer's rates (heartbeats), then live points on top
      api("GET", historyApi + "?span=" + span).then((data) => {
        xs.length = 0; rx.length = 0; tx.length = 0;
        for (const [t, r, s] of data.points || []) add(t, r, s);
        draw();
      }).catch((e) => { toast(e.message, true); draw(); });
    }
    if (historyApi && chartBox.dataset.history === "yes") {
      loadSpan("hour");
      for (const b of document.querySelectorAll("button[data-span]")) {
        b.addEventListener("click", () => loadSpan(b.dataset.span));
      }
    } else {
      draw();
    }
    listeners.push((msg) => {
      const r = rows.get(peerId);
      if (!r) return;
      add(msg.time, r.rx_rate, r.tx_rate);
      draw();
      const rxEl = document.getElementById("rx-rate");
      const txEl = document.getElementById("tx-rate");
      if (rxEl) rxEl.textContent = rate(r.rx_rate);
      if (txEl) txEl.textContent = rate(r.tx_rate);
      // the totals move with the rates (the page's first figures are its load time's)
      const rxTotal = document.getElementById("rx-total");
      const txTotal = document.getElementById("tx-total");
      if (rxTotal) { rxTotal.textContent = size(r.rx_bytes); rxTotal.dataset.bytes = r.rx_bytes; }
      if (txTotal) { txTotal.textContent = size(r.tx_bytes); txTotal.dataset.bytes = r.tx_bytes; }
    });
    loadTransport();
  }

  async function loadTransport() {
    const box = document.getElementById("transport");
    if (!box) return;
    try {
      const state = await api("GET", box.dataset.api);
      const order = state.order && state.order.length ? state.order.join(", ") + " (set by an admin)" :
        (state.effective_order && state.effective_order.length ? state.effective_order.join(", ") : "the peer's own config");
      document.getElementById("transport-order").textContent = order;
    } catch (e) {
      document.getElementById("transport-order").textContent = "unknown (" + e.message + ")";
    }
  }

  // --- packet filter: coordinator rules from the API ---------------------------------------
  async function loadRules() {
    const table = document.getElementById("coord-rules");
    if (!table || !table.dataset.api) return;
    let data;
    try { data = await api("GET", table.dataset.api); } catch (e) { toast(e.message, true); return; }
    const tbody = table.querySelector("tbody");
    tbody.replaceChildren();
    const rules = data.rules || [];
    if (!rules.length) tbody.append(el("tr", { class: "empty" }, el("td", { colSpan: 7, class: "muted" }, "No coordinator rules.")));
    for (const r of rules) {
      const expires = r.expires ? new Date(r.expires * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "never";
      const cell = el("td");
      if (isAdmin && r.origin === "api") {
        const q = r.source_peer ? "?source_peer=" + encodeURIComponent(r.source_peer) : "";
        const btn = el("button", { class: "danger small", type: "button" }, "Remove");
        btn.dataset.remove = "/api/v1/filter/rules/" + encodeURIComponent(r.protocol) + "/" + r.port + q;
        cell.append(btn);
      }
      tbody.append(el("tr", { "data-origin": r.origin, "data-port": String(r.port) },
        el("td", {}, r.protocol), el("td", {}, String(r.port)),
        el("td", {}, el("span", { class: "action " + r.action }, r.action)),
        el("td", {}, r.source_name || r.source_peer || "any peer"),
        el("td", {}, r.origin === "api" ? "dashboard / API" : "server.yaml"),
        el("td", {}, expires), cell));
    }
    const count = document.getElementById("coord-count");
    if (count) count.textContent = String(rules.length);
  }

  document.addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button[data-remove]");
    if (!btn) return;
    try {
      await api("DELETE", btn.dataset.remove);
      toast("Rule removed");
      loadRules();
    } catch (e) { toast(e.message, true); }
  });

  // --- a plugin's panel: rows from its own API route -----------------------------------------
  async function loadPanel() {
    const table = document.getElementById("panel");
    if (!table) return;
    const keys = [...table.querySelectorAll("th[data-key]")].map((th) => th.dataset.key);
    const tbody = table.querySelector("tbody");
    let data;
    try { data = await api("GET", table.dataset.api); } catch (e) {
      tbody.replaceChildren(el("tr", { class: "empty" }, el("td", { colSpan: keys.length, class: "muted" },
        e.status === 403 ? "Admins only." : e.message)));
      return;
    }
    const rowsOf = data && Array.isArray(data[table.dataset.listKey]) ? data[table.dataset.listKey] : [];
    tbody.replaceChildren();
    if (!rowsOf.length) tbody.append(el("tr", { class: "empty" }, el("td", { colSpan: keys.length, class: "muted" }, "Nothing yet.")));
    for (const row of rowsOf) {
      tbody.append(el("tr", {}, ...keys.map((k) => {
        const v = row[k];
        return el("td", {}, v === undefined || v === null ? "" : (typeof v === "object" ? JSON.stringify(v) : String(v)));
      })));
    }
  }

  // --- forms that call the JSON API ----------------------------------------------------------
  function formPayload(form) {
    const payload = {};
    let path = form.dataset.action || "";
    const template = form.dataset.actionTemplate;
    if (template) path = template;
    for (const field of form.elements) {
      if (!field.name) continue;
      let value = field.value;
      if (field.dataset.path === "yes") { path = path.replace("{" + field.name + "}", encodeURIComponent(value)); continue; }
      if (field.dataset.int === "yes") value = parseInt(value, 10);
      else if (field.dataset.list === "yes") value = value.split(",").map((s) => s.trim()).filter(Boolean);
      payload[field.name] = value;
    }
    return { path, payload };
  }

  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!form.classList.contains("api")) return;
    ev.preventDefault();
    const method = form.dataset.method || "POST";
    const { path, payload } = formPayload(form);
    const button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    try {
      await api(method, path, method === "DELETE" ? undefined : payload);
      toast("Done");
      const what = form.dataset.reload;
      if (what === "rules") loadRules();
      else if (what === "transport") loadTransport();
      else if (what === "page") window.location.reload();
    } catch (e) {
      toast(e.message, true);
    } finally {
      if (button) button.disabled = false;
    }
  });

  // --- S3 upload: the file's bytes as the body of PUT /s3/BUCKET/object?key=... --------------
  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (form.id !== "upload") return;
    ev.preventDefault();
    const file = form.elements.file.files[0];
    if (!file) return;
    const key = (form.dataset.prefix || "") + file.name;
    const url = "/s3/" + encodeURIComponent(form.dataset.bucket) + "/object?key=" + encodeURIComponent(key);
    try {
      const resp = await fetch(url, { method: "PUT", body: file, credentials: "same-origin" });
      const data = await resp.json();
      if (!resp.ok) throw new Error(data.message || resp.statusText);
      toast("Uploaded " + key);
      window.location.reload();
    } catch (e) { toast(e.message, true); }
  });

  document.addEventListener("DOMContentLoaded", () => {
    if (page === "peers") { initPeers(); initPeer(); }
    if (page.startsWith("panel-")) loadPanel();
    startFeed();
  });
})();
