// Live dashboard: sign in, open the /v1/live WebSocket, draw one snapshot a second.
// The token lives in sessionStorage (gone when the tab closes) and is sent to the
// socket as its first message, so it never appears in a URL or an access log.
"use strict";

(function () {
  const COLORS = { throughput: "#0072b2", p50: "#e69f00", p99: "#d55e00", bars: "#56b4e9" };
  // Labels, their colours and the nouns come from the application's declaration,
  // sent with every snapshot (snapshot.app): the page knows no application.
  let LABEL_NAMES = {};
  let LABEL_COLOURS = {};
  let appKey = "";
  const TOKEN_KEY = "inferstream.token";
  const $ = (id) => document.getElementById(id);

  let socket = null;
  let reconnectTimer = null;
  let charts = null;
  let selectedId = null;
  let imageUrl = null;
  // What arrived, for people debugging in the console and for the browser tests.
  const RECEIVED_KEPT = 120;
  window.inferstreamDashboard = { snapshots: 0, last: null, received: [] };

  // ---- sign in -------------------------------------------------------------

  async function login(event) {
    event.preventDefault();
    $("login-error").textContent = "";
    const body = new URLSearchParams({
      username: $("username").value.trim(),
      password: $("password").value,
    });
    let response;
    try {
      response = await fetch("/auth/token", { method: "POST", body });
    } catch (err) {
      $("login-error").textContent = "The server cannot be reached; try again.";
      return;
    }
    if (!response.ok) {
      $("login-error").textContent = "Wrong username or password (the username is tenant/name).";
      return;
    }
    const answer = await response.json();
    sessionStorage.setItem(TOKEN_KEY, answer.access_token);
    $("password").value = "";
    start();
  }

  function logout() {
    sessionStorage.removeItem(TOKEN_KEY);
    if (socket) socket.close(1000);
    socket = null;
    clearTimeout(reconnectTimer);
    closePanel();
    $("dashboard").hidden = true;
    $("logout").hidden = true;
    $("login-view").hidden = false;
    setStatus("Not signed in");
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  // ---- live feed -----------------------------------------------------------

  function start() {
    $("login-view").hidden = true;
    $("dashboard").hidden = false;
    $("logout").hidden = false;
    if (!charts) charts = makeCharts();
    loadApps();
    connect();
  }

  // A deployment may show several applications: people pick the one the page draws.
  async function loadApps() {
    try {
      const apps = await (await authFetch("/v1/apps")).json();
      const select = $("app-select");
      select.replaceChildren(...apps.map((app) => new Option(app.title, app.name)));
      $("app-pick").hidden = apps.length < 2;
    } catch (err) {
      $("app-pick").hidden = true; // the feed still shows the pipeline's own application
    }
  }

  function chosenApp() {
    return $("app-select").value || null;
  }

  function switchApp() {
    appKey = "";
    if (socket) {
      socket.close(1000);
    }
    clearTimeout(reconnectTimer);
    connect();
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const current = new WebSocket(`${scheme}//${location.host}/v1/live`);
    socket = current;
    setStatus("Connecting…");
    current.addEventListener("open", () =>
      current.send(JSON.stringify({ token: token(), app: chosenApp() })));
    current.addEventListener("message", (event) => {
      if (current === socket) render(JSON.parse(event.data));
    });
    current.addEventListener("close", (event) => {
      if (current !== socket) return; // replaced when another application was picked
      if (event.code === 4401 || event.code === 4403) {
        logout();
        $("login-error").textContent =
          event.code === 4401 ? "Your session has expired; sign in again." :
            "Your role may not view the dashboard.";
        return;
      }
      if (token()) {
        setStatus("Disconnected; reconnecting…");
        reconnectTimer = setTimeout(connect, 2000);
      }
    });
  }

  // ---- charts --------------------------------------------------------------

  function axis(title, extra) {
    return Object.assign({ title: { display: true, text: title }, beginAtZero: true }, extra || {});
  }

  function makeCharts() {
    Chart.defaults.font.size = Math.round(parseFloat(getComputedStyle(document.documentElement).fontSize) * 0.8);
    Chart.defaults.color = "#1b1f24";
    Chart.defaults.animation = false;
    Chart.defaults.maintainAspectRatio = false;
    const throughput = new Chart($("chart-throughput"), {
      type: "line",
      data: {
        labels: [],
        datasets: [
          { label: "Throughput (scans/s)", data: [], yAxisID: "y", borderColor: COLORS.throughput,
            backgroundColor: COLORS.throughput, pointRadius: 0, borderWidth: 2 },
          { label: "Latency p50 (ms)", data: [], yAxisID: "y1", borderColor: COLORS.p50,
            backgroundColor: COLORS.p50, pointRadius: 0, borderWidth: 2, spanGaps: true },
          { label: "Latency p99 (ms)", data: [], yAxisID: "y1", borderColor: COLORS.p99,
            backgroundColor: COLORS.p99, pointRadius: 0, borderWidth: 2, borderDash: [6, 4],
            spanGaps: true },
        ],
      },
      options: {
        interaction: { mode: "index", intersect: false },
        scales: {
          x: axis("Time (seconds before now)", { beginAtZero: false, ticks: { maxTicksLimit: 11 } }),
          y: axis("Throughput (scans/s)", { position: "left" }),
          y1: axis("Latency (ms)", { position: "right", grid: { drawOnChartArea: false } }),
        },
      },
    });
    const mix = new Chart($("chart-mix"), {
      type: "bar",
      data: {
        labels: [],
        datasets: [],
      },
      options: {
        scales: { x: axis("Group", { stacked: true }), y: axis("Scans", { stacked: true }) },
      },
    });
    const confidence = new Chart($("chart-confidence"), {
      type: "bar",
      data: { labels: [], datasets: [{ label: "Scans", data: [], backgroundColor: COLORS.bars,
        borderColor: "#0072b2", borderWidth: 1 }] },
      options: {
        plugins: { legend: { display: false } },
        scales: { x: axis("Confidence of the predicted class"), y: axis("Scans") },
      },
    });
    return { throughput, mix, confidence };
  }

  // ---- rendering -----------------------------------------------------------

  function fmt(value, digits) {
    return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
  }

  function percent(value) {
    return value === null || value === undefined ? "–" : `${(value * 100).toFixed(1)} %`;
  }

  function render(snapshot) {
    if (snapshot.type !== "snapshot") return;
    const state = window.inferstreamDashboard;
    state.snapshots += 1;
    state.last = snapshot;
    state.received.push({
      tenant: snapshot.tenant, at_us: snapshot.at_us, ids: snapshot.newest.map((s) => s.id),
    });
    if (state.received.length > RECEIVED_KEPT) state.received.shift();
    setStatus(`Live · updated ${new Date(snapshot.at_us / 1000).toLocaleTimeString()}`);
    $("tenant-name").textContent = `(${snapshot.tenant})`;
    applyApp(snapshot.app);
    renderKpis(snapshot.totals);
    renderCharts(snapshot);
    renderAccuracy(snapshot.accuracy);
    renderStages(snapshot.stages);
    renderNewest(snapshot.newest);
  }

  function title(noun) {
    const words = String(noun).replace(/_id$/, "").replace(/_/g, " ");
    return words.charAt(0).toUpperCase() + words.slice(1);
  }

  // Names, colours and nouns of the application; charts are rebuilt only when it changes.
  function applyApp(app) {
    const key = JSON.stringify(app);
    if (key === appKey) return;
    appKey = key;
    LABEL_NAMES = Object.fromEntries(app.labels.map((l) => [l.name, l.title]));
    LABEL_COLOURS = Object.fromEntries(app.labels.map((l) => [l.name, l.colour]));
    const group = title(app.group_noun);
    $("mix-title").textContent = `Prediction mix per ${app.group_noun}`;
    $("chart-mix").setAttribute("aria-label", `Stacked bar chart: ${app.labels.map((l) => l.title).join(", ")} per ${app.group_noun}`);
    $("col-subject").textContent = title(app.subject);
    $("col-group").textContent = group;
    // The panels the application asks for, in the page's order (none listed: all).
    document.querySelectorAll("[data-panel]").forEach((card) => {
      card.hidden = app.panels.length > 0 && !app.panels.includes(card.dataset.panel);
    });
    const ratio = app.ratios[0];
    $("kpi-ratio-box").hidden = !ratio;
    if (ratio) $("kpi-ratio-title").textContent = ratio.title;
    const m = charts.mix;
    m.options.scales.x.title.text = group;
    m.data.datasets = app.labels.map((l) => ({
      label: l.title, data: [], backgroundColor: l.colour, stack: "mix",
    }));
    m.update();
  }

  function renderKpis(totals) {
    $("kpi-rate").textContent = fmt(totals.throughput_per_s, 1);
    $("kpi-p50").textContent = fmt(totals.p50_ms, 1);
    $("kpi-p99").textContent = fmt(totals.p99_ms, 1);
    const ratios = Object.values(totals.ratios || {});
    $("kpi-ratio").textContent = percent(ratios.length ? ratios[0] : null);
    $("kpi-scans").textContent = String(totals.scans);
  }

  function renderCharts(snapshot) {
    const t = charts.throughput;
    t.data.labels = snapshot.series.t;
    t.data.datasets[0].data = snapshot.series.throughput;
    t.data.datasets[1].data = snapshot.series.p50_ms;
    t.data.datasets[2].data = snapshot.series.p99_ms;
    t.update();
    const m = charts.mix;
    m.data.labels = snapshot.groups.map((group) => group.group);
    Object.keys(LABEL_NAMES).forEach((label, i) => {
      m.data.datasets[i].data = snapshot.groups.map((group) => group.counts[label] || 0);
    });
    m.update();
    const c = charts.confidence;
    const edges = snapshot.confidence.edges;
    c.data.labels = snapshot.confidence.counts.map((_, i) => `${edges[i].toFixed(1)}–${edges[i + 1].toFixed(1)}`);
    c.data.datasets[0].data = snapshot.confidence.counts;
    c.update();
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function labelCell(row, label) {
    const td = cell(row, "");
    const span = document.createElement("span");
    span.className = "label";
    span.style.setProperty("--c", LABEL_COLOURS[label] || "#888888");
    span.textContent = LABEL_NAMES[label] || label;
    td.appendChild(span);
  }

  function fillTable(id, rows, build) {
    const body = $(id).querySelector("tbody");
    const fragment = document.createDocumentFragment();
    rows.forEach((item) => {
      const tr = document.createElement("tr");
      build(tr, item);
      fragment.appendChild(tr);
    });
    body.replaceChildren(fragment);
  }

  function renderAccuracy(rows) {
    fillTable("table-accuracy", rows, (tr, a) => {
      cell(tr, a.model_name);
      cell(tr, a.model_version);
      cell(tr, a.role);
      cell(tr, String(a.labelled), "num");
      cell(tr, percent(a.accuracy), "num");
    });
  }

  function renderStages(rows) {
    fillTable("table-stages", rows, (tr, s) => {
      cell(tr, s.name);
      cell(tr, fmt(s.rate_per_s, 1), "num");
      cell(tr, s.lag === null || s.lag === undefined ? "–" : String(s.lag), "num");
      cell(tr, s.errors === undefined ? "–" : String(s.errors), "num");
      cell(tr, String(s.dead_letters), "num");
    });
  }

  function renderNewest(rows) {
    fillTable("table-newest", rows, (tr, scan) => {
      tr.dataset.scanId = scan.id;
      tr.tabIndex = 0;
      tr.setAttribute("aria-selected", String(scan.id === selectedId));
      cell(tr, new Date(scan.stored_at_us / 1000).toLocaleTimeString());
      cell(tr, scan.subject || "–");
      cell(tr, scan.group || "–");
      labelCell(tr, scan.label);
      cell(tr, percent(scan.confidence), "num");
      cell(tr, `${scan.model_name} ${scan.model_version}`);
    });
  }

  // ---- scan details --------------------------------------------------------

  async function authFetch(path) {
    const response = await fetch(path, { headers: { Authorization: `Bearer ${token()}` } });
    if (!response.ok) throw new Error(`${path} answered ${response.status}`);
    return response;
  }

  function fact(list, name, value) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value === null || value === undefined ? "–" : String(value);
    list.append(dt, dd);
  }

  async function openScan(id) {
    selectedId = id;
    const panel = $("scan-panel");
    panel.hidden = false;
    $("scan-title").textContent = `Scan ${id}`;
    $("scan-error").textContent = "";
    $("scan-facts").replaceChildren();
    $("scan-scores").replaceChildren();
    $("scan-lineage").replaceChildren();
    $("scan-image").removeAttribute("src");
    $("scan-close").focus();
    try {
      const [detail, image] = await Promise.all([
        authFetch(`/v1/scans/${encodeURIComponent(id)}`).then((r) => r.json()),
        authFetch(`/v1/scans/${encodeURIComponent(id)}/image`).then((r) => r.blob()),
      ]);
      if (selectedId !== id) return;
      showScan(detail, image);
    } catch (err) {
      $("scan-error").textContent = `Could not load the scan: ${err.message}`;
    }
  }

  function showScan(detail, image) {
    if (imageUrl) URL.revokeObjectURL(imageUrl);
    imageUrl = URL.createObjectURL(image);
    const result = detail.result || detail;
    const img = $("scan-image");
    img.src = imageUrl;
    img.alt = `Image of ${result.subject || detail.id}`;
    const facts = $("scan-facts");
    fact(facts, "Status", detail.status);
    fact(facts, $("col-subject").textContent, result.subject);
    fact(facts, $("col-group").textContent, result.group);
    fact(facts, "Source", result.source);
    fact(facts, "Prediction", LABEL_NAMES[result.label] || result.label);
    fact(facts, "Confidence", percent(result.confidence));
    fact(facts, "Model", `${result.model_name || "–"} ${result.model_version || ""}`);
    fact(facts, "Latency", result.latency_ms === undefined ? null : `${fmt(result.latency_ms, 1)} ms`);
    const scores = result.scores || {};
    $("scan-scores").replaceChildren(...Object.keys(scores).map((label) => {
      const li = document.createElement("li");
      li.textContent = `${LABEL_NAMES[label] || label}: ${percent(scores[label])}`;
      return li;
    }));
    const lineage = result.lineage || detail.lineage || [];
    $("scan-lineage").replaceChildren(...lineage.map((step) => {
      const li = document.createElement("li");
      li.textContent = Object.entries(step).map(([k, v]) => `${k}: ${lineageValue(k, v)}`).join(" · ");
      return li;
    }));
  }

  function lineageValue(key, value) {
    // Timestamps in lineage are microseconds since the epoch.
    if (key.endsWith("_us") && typeof value === "number") {
      return new Date(value / 1000).toISOString().replace("T", " ").replace("Z", " UTC");
    }
    return value;
  }

  function closePanel() {
    selectedId = null;
    $("scan-panel").hidden = true;
    if (imageUrl) URL.revokeObjectURL(imageUrl);
    imageUrl = null;
  }

  function onTableActivate(event) {
    if (event.type === "keydown" && event.key !== "Enter" && event.key !== " ") return;
    const row = event.target.closest("tr[data-scan-id]");
    if (!row) return;
    event.preventDefault();
    openScan(row.dataset.scanId);
  }

  // ---- wiring --------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    $("app-select").addEventListener("change", switchApp);
    $("scan-close").addEventListener("click", closePanel);
    document.addEventListener("keydown", (e) => { if (e.key === "Escape") closePanel(); });
    const newest = $("table-newest");
    newest.addEventListener("click", onTableActivate);
    newest.addEventListener("keydown", onTableActivate);
    if (token()) start();
  });
})();
