// provbox dashboard: a live table of phones fed by Server-Sent Events.
// No framework and no external assets, so it works in an offline lab. Rows are built
// once per phone and updated in place, so progress bars animate instead of flickering.
"use strict";

(function () {
  const STATES = [
    "discovered", "leased", "firmware_check", "firmware_download", "burning", "rebooted",
    "config_download", "provisioned", "stalled", "failed", "config_rejected", "recovery",
  ];
  const LABEL = {
    discovered: "discovered", leased: "leased", firmware_check: "firmware check",
    firmware_download: "downloading", burning: "burning", rebooted: "rebooted",
    config_download: "config", provisioned: "provisioned", stalled: "stalled", failed: "failed",
    config_rejected: "config rejected", recovery: "recovery",
  };
  const LIVE = new Set(["firmware_check", "firmware_download", "burning", "config_download", "recovery"]);
  const ORDER = Object.fromEntries(STATES.map((s, i) => [s, i]));

  // ---- token: ?token= in the address bar, kept for the session ----
  const params = new URLSearchParams(location.search);
  if (params.get("token")) {
    sessionStorage.setItem("provbox-token", params.get("token"));
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
  }
  const token = sessionStorage.getItem("provbox-token");
  const withToken = (url) => token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url;
  const api = (path) => fetch(withToken(path), { headers: { "Accept": "application/json" } });

  // ---- state ----
  const devices = new Map(); // key -> view
  const rowEls = new Map(); // key -> { tr, cells... }
  let skew = 0; // server clock - local clock, ms
  let sortKey = "key", sortDesc = false;
  let stateFilter = null;
  let text = "";
  let selected = null;
  let renderQueued = false;
  let es = null;

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, txt) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (txt !== undefined) e.textContent = txt;
    return e;
  };

  // ---- formatting ----
  function bytes(n) {
    if (n == null) return "";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0, v = n;
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return (i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)) + " " + u[i];
  }
  function dur(ms) {
    if (ms == null || ms < 0) return "";
    const s = Math.round(ms / 1000);
    if (s < 60) return s + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min " + String(s % 60).padStart(2, "0") + " s";
    return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " min";
  }
  function ago(ms) {
    const d = Date.now() + skew - ms;
    if (d < 5000) return "just now";
    return dur(d) + " ago";
  }
  function clock(ms) {
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }
  const stateVar = (s) => "var(--s-" + s + ")";
  const protoVar = (p) => "var(--p-" + p + ")";

  function pill(state, live) {
    const p = el("span", "pill" + (live ? " live" : ""), LABEL[state] || state);
    p.style.setProperty("--c", stateVar(state));
    return p;
  }
  function tag(proto) {
    const t = el("span", "tag", proto);
    t.style.setProperty("--c", protoVar(proto));
    return t;
  }

  // ---- counters ----
  const counterEls = new Map();
  function buildCounters() {
    const box = $("counters");
    const groups = [["all", "phones", "var(--accent)"]].concat(
      STATES.map((s) => [s, LABEL[s], stateVar(s)]),
      [["pending", "update pending", "var(--s-burning)"]],
    );
    for (const [k, label, color] of groups) {
      const c = el("div", "counter");
      c.dataset.filter = k;
      c.style.setProperty("--c", color);
      c.append(el("div", "n", "0"), el("div", "l", label));
      c.addEventListener("click", () => {
        stateFilter = (k === "all" || stateFilter === k) ? null : k;
        scheduleRender();
      });
      box.append(c);
      counterEls.set(k, c);
    }
  }
  function updateCounters() {
    const n = { all: devices.size, pending: 0 };
    for (const s of STATES) n[s] = 0;
    for (const d of devices.values()) {
      n[d.state] = (n[d.state] || 0) + 1;
      if (d.update_pending) n.pending++;
    }
    for (const [k, c] of counterEls) {
      const num = c.querySelector(".n");
      const v = String(n[k] || 0);
      if (num.textContent !== v) {
        num.textContent = v;
        c.classList.remove("bump");
        void c.offsetWidth;
        c.classList.add("bump");
      }
      c.classList.toggle("zero", !n[k] && k !== "all");
      c.classList.toggle("active", stateFilter === k || (k === "all" && !stateFilter));
    }
  }

  // ---- rows ----
  function makeRow(key) {
    const tr = el("tr");
    tr.dataset.key = key;
    const tds = [0, 1, 2, 3, 4, 5].map(() => el("td"));
    tds[0].className = "phone";
    tds[2].className = "fw";
    tds[4].className = "col-progress";
    tds[5].className = "last";
    tr.append(...tds);
    // The progress cell is built once: its bar keeps animating across updates.
    const prog = el("div", "prog");
    const top = el("div", "prog-top");
    const label = el("span", "plabel");
    const pct = el("span", "pct");
    top.append(label, pct);
    const bar = el("div", "bar");
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    const fill = el("div", "fill");
    bar.append(fill);
    const sub = el("div", "prog-sub");
    prog.append(top, bar, sub);
    const none = el("span", "none", "—");
    tds[4].append(prog, none);
    tr.addEventListener("click", () => openDrawer(key));
    const r = { tr, tds, prog, label, pct, bar, fill, sub, none, sig: "" };
    rowEls.set(key, r);
    return r;
  }

  function fillRow(r, d) {
    const sig = JSON.stringify([d.mac, d.ip, d.model, d.vendor, d.firmware, d.target_firmware, d.update_pending, d.state, d.reason, d.static_ip, d.last_event]);
    if (sig !== r.sig) {
      r.sig = sig;
      const [c0, c1, c2, c3] = r.tds;
      c0.replaceChildren(el("div", "mac mono", d.mac || d.key.replace(/^ip:/, "")));
      const meta = el("div", "meta", [d.vendor, d.model].filter(Boolean).join(" ") || (d.static_ip ? "static address" : "model unknown"));
      if (d.static_ip) meta.append(el("span", "badge static", "no lease"));
      c0.append(meta);
      c1.replaceChildren(el("span", "mono", d.ip || "—"));
      c2.replaceChildren();
      const now = el("span", "mono", d.firmware || "?");
      c2.append(now);
      if (d.target_firmware && d.target_firmware !== d.firmware) {
        c2.append(el("span", "arrow", "→"), el("span", "mono target", d.target_firmware));
      }
      c2.title = (d.update_pending ? "update pending: the store has " + d.target_firmware + ". " : "")
        + (d.firmware_source ? "Running version from the " + d.firmware_source.replace("_", " ") + "." : "");
      c3.className = "st-" + d.state;
      c3.style.setProperty("--c", stateVar(d.state));
      c3.replaceChildren(pill(d.state, LIVE.has(d.state)));
      if (d.reason) {
        const why = el("span", "why", d.reason);
        why.title = d.reason;
        c3.append(why);
      }
      c3.title = d.stalled_in ? "stalled in " + (LABEL[d.stalled_in] || d.stalled_in) : "";
    }
    fillProgress(r, d);
    const last = r.tds[5];
    const agoText = ago(d.last_seen_ms);
    last.replaceChildren(el("div", "", d.last_event || ""), el("div", "meta", agoText));
    last.title = d.last_event || "";
  }

  function setBar(r, pct, color, moving) {
    const v = Math.max(0, Math.min(100, pct));
    r.fill.style.width = v.toFixed(1) + "%";
    r.bar.style.setProperty("--c", color);
    r.bar.setAttribute("aria-valuenow", v.toFixed(1));
    r.bar.classList.toggle("moving", moving);
  }

  // TFTP only: the server's smoothed DATA→ACK round trip and packets sent again, the
  // first signs of a lossy or slow link.
  function linkText(p) {
    const parts = [];
    if (p.rtt_us != null) parts.push("rtt " + (p.rtt_us < 10000 ? (p.rtt_us / 1000).toFixed(2) : Math.round(p.rtt_us / 1000)) + " ms");
    if (p.retransmits) parts.push(p.retransmits + " resent");
    return parts.join(", ");
  }

  function fillProgress(r, d) {
    const p = d.progress;
    const now = Date.now() + skew;
    let show = true;
    if (p) {
      r.label.replaceChildren(tag(p.proto), document.createTextNode(" " + p.file));
      r.label.title = p.file;
      r.pct.textContent = p.pct.toFixed(p.pct < 10 ? 1 : 0) + " %";
      setBar(r, p.pct, stateVar(d.state === "stalled" ? "stalled" : d.state), d.state !== "stalled");
      const parts = [bytes(p.bytes) + " of " + bytes(p.total)];
      if (p.rate_bps) parts.push(bytes(p.rate_bps) + "/s");
      if (p.eta_s != null && d.state !== "stalled") parts.push("ETA " + dur(p.eta_s * 1000));
      const link = linkText(p);
      if (link) parts.push(link);
      r.sub.textContent = parts.join(" · ");
    } else if (d.burn) {
      const elapsed = Math.max(0, now - d.burn.started_ms);
      const pct = d.burn.expected_ms ? 100 * elapsed / d.burn.expected_ms : 0;
      r.label.replaceChildren(document.createTextNode("burning " + (d.burn.version || d.burn.image)));
      r.label.title = d.burn.image;
      r.pct.textContent = dur(elapsed);
      setBar(r, Math.min(pct, 100), stateVar(d.state === "burning" ? "burning" : d.state), d.state === "burning");
      r.sub.textContent = elapsed > d.burn.expected_ms
        ? "longer than the expected " + dur(d.burn.expected_ms)
        : "expected about " + dur(d.burn.expected_ms);
    } else if (d.state === "provisioned" && d.provisioned_ms) {
      r.label.replaceChildren(document.createTextNode("done"));
      r.label.title = "";
      r.pct.textContent = "100 %";
      setBar(r, 100, stateVar("provisioned"), false);
      r.sub.textContent = "in " + dur(d.provisioned_ms - d.first_seen_ms);
    } else {
      show = false;
    }
    r.prog.hidden = !show;
    r.none.hidden = show;
    if (!show) {
      r.bar.removeAttribute("aria-valuenow");
    }
  }

  // ---- filtering and sorting ----
  function matches(d) {
    if (stateFilter === "pending" && !d.update_pending) return false;
    if (stateFilter && stateFilter !== "pending" && d.state !== stateFilter) return false;
    if (!text) return true;
    const hay = [d.key, d.mac, d.ip, d.model, d.vendor, d.firmware, d.target_firmware, d.state, LABEL[d.state], d.policy]
      .filter(Boolean).join(" ").toLowerCase();
    return text.split(/\s+/).every((t) => hay.includes(t));
  }
  function ipNum(ip) {
    if (!ip) return -1;
    const p = ip.split(".");
    return p.length === 4 ? p.reduce((a, x) => a * 256 + Number(x), 0) : 0;
  }
  function cmp(a, b) {
    let x, y;
    switch (sortKey) {
      case "ip": x = ipNum(a.ip); y = ipNum(b.ip); break;
      case "firmware": x = a.firmware || ""; y = b.firmware || ""; break;
      case "state": x = ORDER[a.state]; y = ORDER[b.state]; break;
      case "progress": x = a.progress ? a.progress.pct : (a.state === "provisioned" ? 101 : -1); y = b.progress ? b.progress.pct : (b.state === "provisioned" ? 101 : -1); break;
      case "last": x = a.last_seen_ms; y = b.last_seen_ms; break;
      default: x = a.key; y = b.key;
    }
    const r = x < y ? -1 : x > y ? 1 : (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
    return sortDesc ? -r : r;
  }

  function render() {
    renderQueued = false;
    const body = $("rows");
    const list = [...devices.values()].filter(matches).sort(cmp);
    const want = new Set(list.map((d) => d.key));
    for (const [key, r] of rowEls) {
      if (!devices.has(key)) { r.tr.remove(); rowEls.delete(key); }
      else if (!want.has(key)) r.tr.remove();
    }
    let prev = null;
    for (const d of list) {
      const r = rowEls.get(d.key) || makeRow(d.key);
      fillRow(r, d);
      r.tr.classList.toggle("selected", d.key === selected);
      const expected = prev ? prev.nextSibling : body.firstChild;
      if (expected !== r.tr) body.insertBefore(r.tr, expected);
      prev = r.tr;
    }
    $("empty").hidden = devices.size > 0;
    $("shown").textContent = devices.size ? (list.length === devices.size ? devices.size + " phones" : list.length + " of " + devices.size + " phones") : "";
    $("clear-filter").hidden = !(text || stateFilter);
    for (const th of document.querySelectorAll("#phones th")) {
      th.classList.toggle("sorted", th.dataset.sort === sortKey);
      th.classList.toggle("desc", th.dataset.sort === sortKey && sortDesc);
    }
    updateCounters();
  }
  function scheduleRender() {
    if (!renderQueued) {
      renderQueued = true;
      requestAnimationFrame(render);
    }
  }

  function upsert(d) {
    if (typeof d.now_ms === "number") skew = d.now_ms - Date.now();
    devices.set(d.key, d);
  }

  // ---- drawer ----
  let drawerTimer = null;
  async function openDrawer(key) {
    selected = key;
    $("drawer").classList.add("open");
    $("drawer").setAttribute("aria-hidden", "false");
    $("scrim").classList.add("open");
    scheduleRender();
    await refreshDrawer();
  }
  function closeDrawer() {
    selected = null;
    $("drawer").classList.remove("open");
    $("drawer").setAttribute("aria-hidden", "true");
    $("scrim").classList.remove("open");
    scheduleRender();
  }
  function refreshDrawerSoon() {
    if (drawerTimer) return;
    drawerTimer = setTimeout(() => { drawerTimer = null; refreshDrawer(); }, 400);
  }
  async function refreshDrawer() {
    const key = selected;
    if (!key) return;
    let d;
    try {
      const r = await api("/api/v1/devices/" + encodeURIComponent(key));
      if (!r.ok) return;
      d = await r.json();
    } catch (_) { return; }
    if (selected !== key) return;
    $("d-title").textContent = d.mac || d.key;
    const sub = $("d-sub");
    sub.replaceChildren(pill(d.state, LIVE.has(d.state)));
    sub.append(el("span", "", [d.vendor, d.model].filter(Boolean).join(" ")), el("span", "mono", d.ip || ""));

    const facts = $("d-facts");
    facts.replaceChildren();
    const fact = (k, v) => { if (v != null && v !== "") facts.append(el("div", "k", k), el("div", "v", String(v))); };
    fact("Why", d.reason);
    if (d.progress) {
      const p = d.progress;
      fact("Transfer", p.proto.toUpperCase() + " " + p.file + ": " + p.pct.toFixed(1) + " % of " + bytes(p.total)
        + (p.rate_bps ? " at " + bytes(p.rate_bps) + "/s" : "") + (p.eta_s != null ? ", ETA " + dur(p.eta_s * 1000) : "")
        + (linkText(p) ? "; " + linkText(p) : ""));
    }
    if (d.burn) fact("Burning", d.burn.image + " for " + dur(Date.now() + skew - d.burn.started_ms) + " (expected about " + dur(d.burn.expected_ms) + ")");
    fact("Firmware", (d.firmware || "unknown") + (d.firmware_source ? "  (from the " + d.firmware_source.replace("_", " ") + ")" : ""));
    fact("Store has", d.target_firmware ? d.target_firmware + (d.target_image ? "  (" + d.target_image + ")" : "") : "");
    fact("Policy", d.policy);
    fact("Vendor class", d.vendor_class);
    fact("Asked for", d.requested_options && d.requested_options.length ? "options " + d.requested_options.join(", ") : "");
    fact("First seen", new Date(d.first_seen_ms).toLocaleString());
    if (d.provisioned_ms) fact("Provisioned in", dur(d.provisioned_ms - d.first_seen_ms));

    const tl = $("d-timeline");
    tl.replaceChildren();
    for (const e of [...d.timeline].reverse()) {
      const li = el("li", e.kind === "state" ? "state" : "");
      li.style.setProperty("--c", e.state ? stateVar(e.state) : protoVar(e.source));
      li.append(el("span", "when", clock(e.at_ms)), tag(e.source), el("span", "text", e.text));
      tl.append(li);
    }
    const files = $("d-files");
    files.replaceChildren();
    for (const f of [...d.files].reverse()) {
      const tr = el("tr");
      const name = el("td", "mono", f.file);
      name.title = "sha256 " + f.sha256 + (f.path !== f.file ? "\nrequested as " + f.path : "");
      const res = el("td", f.result === "finished" ? "ok" : "bad", f.result);
      if (f.reason) res.title = f.reason;
      tr.append(name, el("td"), el("td", "", bytes(f.bytes) + (f.offset ? " @" + bytes(f.offset) : "")), el("td", "", dur(f.duration_ms) || "<1 s"), res);
      tr.children[1].append(tag(f.proto));
      files.append(tr);
    }
    if (!d.files.length) {
      const tr = el("tr");
      const td = el("td", "none", "nothing yet");
      td.colSpan = 5;
      tr.append(td);
      files.append(tr);
    }
    $("d-receipt").href = withToken("/api/v1/devices/" + encodeURIComponent(d.key) + "/receipt");
  }

  // ---- live feed ----
  function setConn(state, msg) {
    $("conn").dataset.state = state;
    $("conn-text").textContent = msg;
  }

  async function load() {
    let r;
    try {
      r = await api("/api/v1/devices");
    } catch (_) {
      setConn("reconnecting", "cannot reach provbox; retrying…");
      setTimeout(load, 3000);
      return;
    }
    if (r.status === 401) {
      setConn("denied", "token needed: open this page with ?token=…");
      return;
    }
    if (!r.ok) {
      setConn("reconnecting", "provbox answered " + r.status + "; retrying…");
      setTimeout(load, 3000);
      return;
    }
    const seq = r.headers.get("x-provbox-feed-seq") || "0";
    const list = await r.json();
    devices.clear();
    for (const d of list) upsert(d);
    scheduleRender();
    connect(seq);
  }

  function connect(since) {
    if (es) es.close();
    es = new EventSource(withToken("/api/v1/events?types=device,state&since=" + encodeURIComponent(since)));
    es.onopen = () => setConn("live", "live");
    es.onerror = () => setConn("reconnecting", "reconnecting…");
    es.addEventListener("device", (m) => {
      try {
        upsert(JSON.parse(m.data));
        scheduleRender();
      } catch (_) { /* a malformed message is skipped */ }
    });
    es.addEventListener("removed", (m) => {
      try {
        devices.delete(JSON.parse(m.data).key);
        scheduleRender();
      } catch (_) { /* skipped */ }
    });
    es.addEventListener("state", (m) => {
      try {
        const c = JSON.parse(m.data);
        const r = rowEls.get(c.key);
        if (r) {
          r.tr.classList.remove("flash");
          void r.tr.offsetWidth;
          r.tr.classList.add("flash");
        }
        if (c.key === selected) refreshDrawerSoon();
      } catch (_) { /* skipped */ }
    });
    es.addEventListener("reset", () => { es.close(); load(); });
  }

  // ---- wiring ----
  document.addEventListener("DOMContentLoaded", () => {
    buildCounters();
    $("filter").addEventListener("input", (e) => { text = e.target.value.trim().toLowerCase(); scheduleRender(); });
    $("clear-filter").addEventListener("click", () => { text = ""; stateFilter = null; $("filter").value = ""; scheduleRender(); });
    for (const th of document.querySelectorAll("#phones th")) {
      th.addEventListener("click", () => {
        const k = th.dataset.sort;
        if (sortKey === k) sortDesc = !sortDesc; else { sortKey = k; sortDesc = k === "last" || k === "progress"; }
        scheduleRender();
      });
    }
    $("d-close").addEventListener("click", closeDrawer);
    $("scrim").addEventListener("click", closeDrawer);
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape") closeDrawer();
      if (e.key === "/" && document.activeElement !== $("filter")) { e.preventDefault(); $("filter").focus(); }
    });
    // Relative times and burn bars move with the clock.
    setInterval(scheduleRender, 1000);
    setInterval(() => { if (selected) refreshDrawer(); }, 5000);
    load();
  });
})();
