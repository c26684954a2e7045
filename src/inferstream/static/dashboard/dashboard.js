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
  // An application that runs no model has no labels: its rows show no prediction.
  let predicts = true;
  const TOKEN_KEY = "inferstream.token";
  const $ = (id) => document.getElementById(id);

  let socket = null;
  let reconnectTimer = null;
  let charts = null;
  let selectedId = null;
  let imageUrl = null;
  // The application's own views (snapshot.app.views): their timers and charts.
  let viewTimers = [];
  let viewCharts = [];
  const VIEW_PALETTE = ["#0072b2", "#e69f00", "#009e73", "#d55e00", "#cc79a7", "#56b4e9",
    "#f0e442", "#000000"];
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
    clearViews();
    applyModels(false);
    appKey = ""; // signing in again applies the application afresh
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
    predicts = app.labels.length > 0;
    document.querySelectorAll("#table-newest th.prediction").forEach((th) => { th.hidden = !predicts; });
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
    applyViews(app.views || []);
    applyModels(!$("table-models").closest("article").hidden);
  }

  // ---- the model registry -----------------------------------------------------
  // Versions and aliases, and the changes (promotions, moves, rollbacks) on a timeline,
  // read from the registry routes every 10 s while the card is shown.

  let modelsTimer = null;

  function applyModels(shown) {
    clearInterval(modelsTimer);
    modelsTimer = null;
    if (!shown) return;
    loadModels();
    modelsTimer = setInterval(loadModels, 10000);
  }

  async function loadModels() {
    try {
      const versions = await (await authFetch("/v1/registry/models")).json();
      const names = [...new Set(versions.map((v) => v.name))];
      const shown = await Promise.all(names.map(async (name) =>
        (await authFetch(`/v1/registry/models/${encodeURIComponent(name)}`)).json()));
      fillTable("table-models", versions, (tr, v) => {
        cell(tr, v.name);
        cell(tr, v.version);
        cell(tr, v.aliases.join(", ") || "–");
        cell(tr, new Date(v.registered_at_us / 1000).toLocaleString());
        cell(tr, v.registered_by);
      });
      const changes = shown.flatMap((m) => m.history.map((e) => ({ ...e, name: m.name })))
        .filter((e) => e.action !== "register")
        .sort((a, b) => b.at_us - a.at_us).slice(0, 12);
      fillTable("table-model-changes", changes, (tr, e) => {
        cell(tr, new Date(e.at_us / 1000).toLocaleString());
        cell(tr, e.name);
        const alias = e.alias ? `@${e.alias} ` : "";
        cell(tr, `${e.action} ${alias}${e.from_version || "–"} → ${e.to_version || "–"}`);
        cell(tr, e.actor);
        cell(tr, e.reason);
      });
      await drawModelTimeline(names);
      $("models-error").textContent = "";
    } catch (err) {
      $("models-error").textContent = `Could not load the registry: ${err.message}`;
    }
  }

  // The first model (by name) that scored any of this tenant's records: each version's
  // accuracy (solid) and mean confidence (dashed) per time bucket, and the registry's
  // events as triangles at the top, their texts in the tooltip.
  let modelsChart = null;

  async function drawModelTimeline(names) {
    let shown = null;
    for (const name of names.sort()) {
      const answer = await authFetch(
        `/v1/registry/models/${encodeURIComponent(name)}/timeline?hours=24&points=60`);
      const data = await answer.json();
      if (data.series && data.series.length) { shown = data; break; }
    }
    if (!modelsChart) modelsChart = lineChart($("chart-models"));
    const chart = modelsChart;
    $("chart-models").dataset.model = shown ? shown.name : "";
    if (!shown) {
      chart.data.labels = [];
      chart.data.datasets = [];
      chart.update();
      return;
    }
    const events = new Map();
    shown.events.forEach((e) => events.set(e.bucket, [...(events.get(e.bucket) || []), e.text]));
    const labels = [...new Set([...xOrder(shown.series), ...events.keys()])].sort();
    const versions = [...new Set(shown.series.map((s) => `${s.version} (${s.role})`))];
    chart.data.labels = labels;
    chart.data.datasets = shown.series.map((one) => {
      const at = new Map(one.points.map(([x, y]) => [x, y]));
      const n = versions.indexOf(`${one.version} (${one.role})`);
      const colour = VIEW_PALETTE[n % VIEW_PALETTE.length];
      return { label: one.name, data: labels.map((x) => (at.has(x) ? at.get(x) : null)),
        borderColor: colour, backgroundColor: colour, spanGaps: true, borderWidth: 2,
        borderDash: one.kind === "accuracy" ? [] : [6, 4] };
    });
    chart.data.datasets.push({
      label: "changes", data: labels.map((x) => (events.has(x) ? 1.02 : null)),
      showLine: false, pointStyle: "triangle", pointRadius: 7, borderColor: "#1b1f24",
      backgroundColor: "#1b1f24", events: labels.map((x) => events.get(x) || []),
    });
    chart.options.scales.x.title.text = shown.x_label;
    chart.options.scales.y.title.text = shown.y_label;
    chart.options.scales.y.suggestedMax = 1.05;
    chart.options.plugins.tooltip = { callbacks: { label: (item) => (item.dataset.events
      ? item.dataset.events[item.dataIndex] : `${item.dataset.label}: ${item.formattedValue}`) } };
    chart.update();
  }

  // ---- the application's own views -----------------------------------------
  // Each is a line chart, a table or a lanes schematic the application declares, read
  // from one of its own routes with the page's token every refresh_s seconds (the page
  // knows only the three shapes, never what they hold).

  function clearViews() {
    viewTimers.forEach(clearInterval);
    viewTimers = [];
    viewCharts.forEach((chart) => chart && chart.destroy());
    viewCharts = [];
    document.querySelectorAll("[data-view]").forEach((card) => card.remove());
  }

  function applyViews(views) {
    clearViews();
    views.forEach((view, i) => {
      const card = viewCard(view, i);
      $("dashboard").appendChild(card);
      viewCharts.push(view.kind === "lines" ? lineChart(card.querySelector("canvas")) : null);
      const refresh = () => loadView(view, i, card);
      refresh();
      viewTimers.push(setInterval(refresh, view.refresh_s * 1000));
    });
  }

  function element(tag, attributes = {}, text = "") {
    const made = document.createElement(tag);
    Object.entries(attributes).forEach(([name, value]) => made.setAttribute(name, value));
    if (text) made.textContent = text;
    return made;
  }

  function viewCard(view, i) {
    const card = element("article", { class: "card wide", "data-view": String(i),
      "aria-labelledby": `view-${i}-title` });
    card.append(element("h2", { id: `view-${i}-title` }, view.title),
      element("p", { class: "hint", id: `view-${i}-note` }));
    if (view.kind === "lines") {
      const box = element("div", { class: "chart" });
      box.append(element("canvas", { id: `view-${i}-chart`, role: "img",
        "aria-label": `Line chart: ${view.title}` }));
      card.append(box);
    } else if (view.kind === "lanes") {
      card.append(element("div", { class: "lanes", id: `view-${i}-lanes`, role: "img",
        "aria-label": `Schematic: ${view.title}` }));
    } else {
      const table = element("table", { id: `view-${i}-table` });
      table.append(element("thead"), element("tbody"));
      card.append(table);
    }
    card.append(element("p", { class: "error", role: "alert", id: `view-${i}-error` }));
    return card;
  }

  function lineChart(canvas) {
    return new Chart(canvas, {
      type: "line",
      data: { labels: [], datasets: [] },
      options: {
        interaction: { mode: "index", intersect: false },
        scales: { x: axis("", { beginAtZero: false }), y: axis("") },
      },
    });
  }

  async function loadView(view, i, card) {
    if (card.dataset.loading) return; // the previous answer is still on its way
    card.dataset.loading = "1";
    try {
      const data = await (await authFetch(view.url)).json();
      if (!card.isConnected) return; // another application was picked meanwhile
      $(`view-${i}-note`).textContent = data.note || "";
      if (view.kind === "lines") drawLines(viewCharts[i], data);
      else if (view.kind === "lanes") drawLanes($(`view-${i}-lanes`), data);
      else drawTable($(`view-${i}-table`), data);
      $(`view-${i}-error`).textContent = "";
    } catch (err) {
      $(`view-${i}-error`).textContent = `Could not load this view: ${err.message}`;
    } finally {
      delete card.dataset.loading;
    }
  }

  // x values are ordered as numbers when all are numbers, else as text (ISO dates).
  function xOrder(series) {
    const xs = [...new Set(series.flatMap((one) => one.points.map((point) => point[0])))];
    return xs.every((x) => typeof x === "number") ? xs.sort((a, b) => a - b) : xs.sort();
  }

  function drawLines(chart, data) {
    const labels = xOrder(data.series);
    chart.data.labels = labels;
    chart.data.datasets = data.series.map((one, n) => {
      const at = new Map(one.points.map(([x, y]) => [x, y]));
      const colour = VIEW_PALETTE[n % VIEW_PALETTE.length];
      return { label: one.name, data: labels.map((x) => (at.has(x) ? at.get(x) : null)),
        borderColor: colour, backgroundColor: colour, spanGaps: true, borderWidth: 2,
        borderDash: n >= VIEW_PALETTE.length ? [6, 4] : [] };
    });
    chart.options.scales.x.title.text = data.x_label || "";
    chart.options.scales.y.title.text = data.y_label || "";
    chart.update();
  }

  // A schematic in SVG: one row per lane (a bar of its length), its spans on the bar
  // with their labels, its marks in a thin strip beneath. Each shape names what it is
  // (data-lane, data-label, data-from, data-to, data-style) and has a tooltip.
  const SVG = "http://www.w3.org/2000/svg";
  const LANE = { label: 110, width: 1000, height: 58, bar: 22, mark: 10 };

  function svg(tag, attributes = {}, text = "") {
    const made = document.createElementNS(SVG, tag);
    Object.entries(attributes).forEach(([name, value]) => made.setAttribute(name, value));
    if (text) made.textContent = text;
    return made;
  }

  function drawLanes(box, data) {
    const lanes = data.lanes || [];
    const unit = data.unit ? ` ${data.unit}` : "";
    const picture = svg("svg", { viewBox: `0 0 ${LANE.width} ${lanes.length * LANE.height + 4}`,
      preserveAspectRatio: "xMinYMin meet" });
    lanes.forEach((lane, n) => {
      const top = n * LANE.height + 4;
      const scale = (LANE.width - LANE.label - 10) / (lane.length || 1);
      const x = (at) => LANE.label + Math.max(0, Math.min(lane.length, at)) * scale;
      const shape = (part, y, height, kind) => {
        const from = Math.min(part.from, part.to);
        const to = Math.max(part.from, part.to);
        const group = svg("g", { class: `lane-${kind} style-${part.style || "item"}`,
          "data-lane": lane.name, "data-label": part.label || "", "data-from": from,
          "data-to": to, "data-style": part.style || "item" });
        group.append(svg("title", {}, `${lane.name}: ${part.label || ""} ${from}–${to}${unit}`),
          svg("rect", { x: x(from), y, width: Math.max(x(to) - x(from), 2), height, rx: 3 }));
        if (part.label && x(to) - x(from) > part.label.length * 7) {
          group.append(svg("text", { x: (x(from) + x(to)) / 2, y: y + height / 2,
            "text-anchor": "middle", "dominant-baseline": "central" }, part.label));
        }
        return group;
      };
      picture.append(svg("text", { class: "lane-name", x: 0, y: top + LANE.bar / 2,
        "dominant-baseline": "central" }, lane.name),
      svg("rect", { class: "lane-bar", x: LANE.label, y: top, rx: 3, height: LANE.bar,
        width: lane.length * scale }));
      (lane.spans || []).forEach((span) => picture.append(shape(span, top, LANE.bar, "span")));
      (lane.marks || []).forEach((mark) => picture.append(
        shape(mark, top + LANE.bar + 4, LANE.mark, "mark")));
    });
    box.replaceChildren(picture);
  }

  function drawTable(table, data) {
    const head = element("tr");
    const first = data.rows[0] || [];
    data.columns.forEach((name, n) => head.append(element("th",
      { scope: "col", class: typeof first[n] === "number" ? "num" : "" }, String(name))));
    table.tHead.replaceChildren(head);
    table.tBodies[0].replaceChildren(...data.rows.map((values) => {
      const tr = element("tr");
      values.forEach((value) => {
        const shown = value === null || value === undefined || value === "" ? "–" : String(value);
        cell(tr, shown, typeof value === "number" ? "num" : "");
      });
      return tr;
    }));
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
      const subject = cell(tr, scan.subject || "–");
      if (scan.shared_from) {
        // Another tenant's record, shared with this one by a grant: mark its owner.
        tr.classList.add("shared");
        tr.dataset.sharedFrom = scan.shared_from;
        tr.dataset.recordId = scan.record_id;
        tr.dataset.app = scan.app;
        subject.append(" ", sharedMark(scan.shared_from));
      }
      cell(tr, scan.group || "–");
      if (!predicts) return;
      labelCell(tr, scan.label);
      cell(tr, percent(scan.confidence), "num");
      cell(tr, `${scan.model_name} ${scan.model_version}`);
    });
  }

  function sharedMark(owner) {
    const mark = document.createElement("span");
    mark.className = "shared-from";
    mark.textContent = `shared by ${owner}`;
    mark.title = `A record of tenant ${owner}, shared with yours by a sharing grant`;
    return mark;
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

  async function loadOwnScan(id) {
    return Promise.all([
      authFetch(`/v1/scans/${encodeURIComponent(id)}`).then((r) => r.json()),
      authFetch(`/v1/scans/${encodeURIComponent(id)}/image`).then((r) => r.blob()),
    ]);
  }

  async function loadSharedScan(id, app, recordId) {
    // A shared record is read through the record route (the scan's status is the
    // owner's); its image only when the grant allows images.
    const path = `/v1/apps/${encodeURIComponent(app)}/records/${encodeURIComponent(recordId)}`;
    const detail = await authFetch(path).then((r) => r.json());
    const image = detail.image ? await authFetch(detail.image).then((r) => r.blob()) : null;
    return [{ id, status: "processed", result: detail.record }, image];
  }

  async function openScan(id, shared) {
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
      const [detail, image] = shared
        ? await loadSharedScan(id, shared.app, shared.recordId)
        : await loadOwnScan(id);
      if (selectedId !== id) return;
      showScan(detail, image);
    } catch (err) {
      $("scan-error").textContent = `Could not load the scan: ${err.message}`;
    }
  }

  function showScan(detail, image) {
    if (imageUrl) URL.revokeObjectURL(imageUrl);
    imageUrl = image ? URL.createObjectURL(image) : null;
    const result = detail.result || detail;
    const img = $("scan-image");
    if (imageUrl) {
      img.src = imageUrl;
      img.alt = `Image of ${result.subject || detail.id}`;
    } else {
      img.removeAttribute("src");
      img.alt = "No image: the sharing grant does not include images";
    }
    const facts = $("scan-facts");
    fact(facts, "Status", detail.status);
    if (result.shared_from) fact(facts, "Shared by", result.shared_from);
    fact(facts, $("col-subject").textContent, result.subject);
    fact(facts, $("col-group").textContent, result.group);
    fact(facts, "Source", result.source);
    if (predicts) {
      fact(facts, "Prediction", LABEL_NAMES[result.label] || result.label);
      fact(facts, "Confidence", percent(result.confidence));
      fact(facts, "Model", `${result.model_name || "–"} ${result.model_version || ""}`);
    }
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
    const shared = row.dataset.sharedFrom
      ? { app: row.dataset.app, recordId: row.dataset.recordId }
      : null;
    openScan(row.dataset.scanId, shared);
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
