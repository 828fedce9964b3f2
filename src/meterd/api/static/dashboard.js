/* meterd operator console: hash-routed pages over the daemon's JSON API, in zh-CN or English.
 *
 * Plain script, no build step.  Everything that comes from the API reaches the page as text
 * (textContent, text nodes, Chart.js labels drawn on a canvas), never as markup to be parsed.
 *
 * Pages (location.hash): #/ overview, #/alarms, #/meters, #/meter/ADDRESS, #/accounts,
 * #/account/NAME, #/areas, #/area/UNIT, #/terminals, #/terminal/ID, #/reports.  Every list is a
 * page the server cut (limit + cursor); Previous / Next walk the cursors.
 *
 * Words: every visible string is a key of the one dictionary, dashboard/static/i18n.json
 * ({"en": {...}, "zh": {...}}, the same keys in both).  The language is the browser's
 * (navigator.language zh* -> zh) until the switch is used; the choice is kept in localStorage.
 *
 * Roles: GET /api/v1/whoami names the token's role; elements with data-role="operator" (or
 * technician, admin) are removed for roles below it.  The API checks again on every request.
 *
 * Token: the URL fragment (#token=...) or the form; kept in sessionStorage for this tab only.
 *
 * For tests, <body> carries data-loaded ("1" once a page has drawn), data-page, data-errors (""
 * when the last refresh had none), data-token ("missing" / "refused" / "ok"), data-role,
 * data-lang, data-cycles, data-curve-points, data-timezone.
 */
"use strict";

(function () {
  const TOKEN_KEY = "meterd.dashboard.token";
  const LANG_KEY = "meterd.console.lang";
  const API = "api/v1/";
  const PAGE_SIZE = 20;
  const GAUGE_MIN = 0.8;
  const RANK = { viewer: 0, technician: 1, operator: 2, admin: 3 };
  const NEAR_TRIP = ["tripped", "alarmed", "reminded"];
  const params = new URLSearchParams(location.search);
  const refreshSeconds = clamp(Number(params.get("refresh") || 5), 1, 3600, 5);

  const state = {
    token: null, role: null, name: "", timer: null, paused: false, running: false, again: false, cycles: 0,
    zone: "Asia/Shanghai", dict: { en: {}, zh: {} }, lang: "en", charts: {}, route: null,
    pagers: new Map(), // route + list name -> { stack: [cursor...], cursor }
    view: {},          // the current page's own choices (curve range, alarm filter...)
    dialogOpen: false,
  };

  // --- small helpers ---------------------------------------------------------------------------

  function clamp(value, low, high, otherwise) {
    return Number.isFinite(value) ? Math.min(high, Math.max(low, value)) : otherwise;
  }

  function $(id) {
    return document.getElementById(id);
  }

  /* An element with attributes and children; strings become text nodes (never parsed as HTML). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(3)) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setText(id, text) {
    const node = $(id);
    if (node) node.textContent = text === null || text === undefined ? "" : String(text);
  }

  /* The word for ``key`` in the chosen language, with {name} filled from ``vars``. */
  function t(key, vars) {
    let text = state.dict[state.lang][key];
    if (text === undefined) text = state.dict.en[key];
    if (text === undefined) text = key;
    for (const [name, value] of Object.entries(vars || {})) text = text.split(`{${name}}`).join(String(value));
    return text;
  }

  /* A stored value's word when the dictionary has one (states, kinds, roles), else the value. */
  function word(prefix, value) {
    if (value === null || value === undefined || value === "") return "–";
    const key = `${prefix}.${value}`;
    return state.dict.en[key] === undefined ? String(value) : t(key);
  }

  function allowed(role) {
    return state.role !== null && RANK[state.role] >= RANK[role];
  }

  /* A button shown only to ``role`` and above (null for the others: nothing is drawn). */
  function action(role, label, onclick, extra) {
    if (!allowed(role)) return null;
    return el("button", { type: "button", class: `act ${(extra && extra.class) || ""}`, "data-role": role,
      "data-action": (extra && extra.name) || label, onclick }, t(label));
  }

  const fmt = {
    parts: null,
    init(zone) {
      this.parts = new Intl.DateTimeFormat("en-CA", { timeZone: zone, year: "numeric", month: "2-digit",
        day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
    },
  };
  fmt.init(state.zone);

  function siteParts(at) {
    const out = {};
    for (const p of fmt.parts.formatToParts(at)) out[p.type] = p.value;
    return out;
  }

  function siteDay(at) {
    const p = siteParts(at);
    return `${p.year}-${p.month}-${p.day}`;
  }

  function offsetMs(ms) {
    const p = siteParts(new Date(ms));
    const wall = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour % 24, +p.minute, +p.second);
    return wall - Math.floor(ms / 1000) * 1000;
  }

  function offsetText(ms) {
    const minutes = Math.round(offsetMs(ms) / 60e3);
    const a = Math.abs(minutes);
    return `${minutes < 0 ? "-" : "+"}${String(Math.floor(a / 60)).padStart(2, "0")}:${String(a % 60).padStart(2, "0")}`;
  }

  /* "HH:MM:SS" today (the site's day), "YYYY-MM-DD HH:MM" before. */
  function when(iso) {
    if (!iso) return "–";
    const at = new Date(iso);
    if (Number.isNaN(at.getTime())) return String(iso);
    const p = siteParts(at);
    if (siteDay(at) === siteDay(new Date())) return `${p.hour}:${p.minute}:${p.second}`;
    return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}`;
  }

  function axisLabel(ms, span) {
    const p = siteParts(new Date(ms));
    return span > 2 * 86400e3 ? `${p.month}-${p.day}` : `${p.hour}:${p.minute}`;
  }

  function zoneLabel() {
    return `${state.zone} (UTC${offsetText(Date.now())})`;
  }

  function num(text, places) {
    const value = Number(text);
    if (text === null || text === undefined || text === "" || !Number.isFinite(value)) return text ?? "–";
    return value.toLocaleString("en-US", { minimumFractionDigits: places, maximumFractionDigits: places });
  }

  function pct(ratio, places = 2) {
    return ratio === null || ratio === undefined || ratio === "" ? "–" : `${(Number(ratio) * 100).toFixed(places)} %`;
  }

  function badge(prefix, value) {
    return el("span", { class: `badge b-${String(value).replace(/[^a-z0-9_-]/gi, "")}` }, word(prefix, value));
  }

  function link(href, text) {
    return el("a", { href }, text);
  }

  const meterLink = (a) => (a ? link(`#/meter/${encodeURIComponent(a)}`, a) : "–");
  const accountLink = (a) => (a ? link(`#/account/${encodeURIComponent(a)}`, a) : "–");
  const areaLink = (u) => (u ? link(`#/area/${encodeURIComponent(u)}`, u) : "–");
  const terminalLink = (id) => (id ? link(`#/terminal/${encodeURIComponent(id)}`, id) : "–");

  /* A table: headers (dictionary keys; "#key" right-aligns), rows of cells, the empty text's key. */
  function table(headers, rows, emptyKey) {
    const head = el("tr", null, headers.map((h) => el("th", { class: h.startsWith("#") ? "num" : null },
      t(h.replace(/^#/, "")))));
    const body = rows.length ? rows.map((cells) => el("tr", null, cells.map((c) =>
      c instanceof Node && c.tagName === "TD" ? c : el("td", null, c))))
      : [el("tr", { class: "empty" }, el("td", { colspan: headers.length }, t(emptyKey || "common.none")))];
    return el("table", null, el("thead", null, head), el("tbody", null, body));
  }

  const truthy = (reading) => Boolean(reading) && (reading.value === "1" || reading.value === "true");

  const numCell = (text, cls) => el("td", { class: `num ${cls || ""}` }, text);

  // --- the API ---------------------------------------------------------------------------------

  class ApiFailure extends Error {
    constructor(path, status, message) {
      super(message);
      this.path = path;
      this.status = status;
    }
  }

  async function request(method, path, body) {
    const controller = new AbortController();
    const timeout = setTimeout(() => controller.abort(), 30e3);
    let response;
    try {
      response = await fetch(API + path, {
        method, cache: "no-store", credentials: "omit", signal: controller.signal,
        headers: { Authorization: `Bearer ${state.token}`, Accept: "application/json",
          ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (exc) {
      throw new ApiFailure(path, 0, controller.signal.aborted ? t("err.timeout") : t("err.unreachable"));
    } finally {
      clearTimeout(timeout);
    }
    let doc = null;
    try {
      doc = await response.json();
    } catch (exc) {
      if (response.ok) throw new ApiFailure(path, response.status, t("err.notjson"));
    }
    if (!response.ok) {
      const why = doc && typeof doc.error === "string" ? doc.error : response.statusText;
      throw new ApiFailure(path, response.status, `${response.status} ${why}`);
    }
    return doc;
  }

  const get = (path) => request("GET", path);
  const post = (path, body) => request("POST", path, body);

  /* A GET whose failure is recorded (and drawn as null) rather than thrown; 401 still throws. */
  async function soft(errors, path) {
    try {
      return await get(path);
    } catch (exc) {
      if (exc instanceof ApiFailure && exc.status === 401) throw exc;
      errors.push(`${path.split("?")[0]}: ${exc.message}`);
      return null;
    }
  }

  const q = encodeURIComponent;

  // --- language --------------------------------------------------------------------------------

  async function loadDictionary() {
    const response = await fetch("dashboard/static/i18n.json", { cache: "no-cache", credentials: "omit" });
    state.dict = await response.json();
    const chosen = localStorage.getItem(LANG_KEY);
    state.lang = chosen === "zh" || chosen === "en" ? chosen
      : (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
  }

  function applyLanguage() {
    document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
    document.body.dataset.lang = state.lang;
    for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
    for (const node of document.querySelectorAll("[data-i18n-placeholder]")) {
      node.placeholder = t(node.dataset.i18nPlaceholder);
    }
    document.title = `meterd · ${t("app.subtitle")}`;
    $("lang").textContent = state.lang === "zh" ? "English" : "中文";
    for (const chart of Object.values(state.charts)) chart.destroy();
    state.charts = {};
  }

  // --- token and role --------------------------------------------------------------------------

  function takeToken() {
    const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
    const given = fragment.get("token");
    if (given) {
      sessionStorage.setItem(TOKEN_KEY, given.trim());
      history.replaceState(null, "", location.pathname + location.search + "#/");
    }
    state.token = sessionStorage.getItem(TOKEN_KEY);
  }

  function askToken(message) {
    stop();
    state.token = null;
    state.role = null;
    sessionStorage.removeItem(TOKEN_KEY);
    document.body.dataset.token = message ? "refused" : "missing";
    showBanner(message ? [message] : [], t("token.needed"));
    $("token-form").hidden = false;
    $("token-input").value = "";
    $("token-input").focus();
  }

  async function loadWhoami() {
    const me = await get("whoami");
    state.role = me.role;
    state.name = me.name;
    document.body.dataset.role = me.role;
    setText("whoami", `${me.name} · ${word("role", me.role)}`);
  }

  // --- banner, toast, dialog -------------------------------------------------------------------

  function showBanner(errors, heading) {
    const banner = $("banner");
    if (!errors.length) {
      banner.hidden = true;
      banner.replaceChildren();
      return;
    }
    banner.replaceChildren(el("strong", null, heading || t("err.heading")),
      el("ul", null, errors.map((e) => el("li", null, e))));
    banner.hidden = false;
  }

  function toast(text, bad) {
    const box = $("toast");
    box.textContent = text;
    box.className = `toast ${bad ? "bad" : "ok"}`;
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { box.hidden = true; }, 8000);
  }

  /* A confirmation: ``what`` says exactly what will happen; ``fields`` [{name, label, type,
   * required, value, options}]; ``run(values)`` does it (its error is shown in the dialog). */
  function confirmDialog({ title, what, fields = [], okKey = "dlg.confirm", danger = false, run }) {
    const dialog = $("dialog");
    setText("dialog-title", title);
    setText("dialog-text", what);
    $("dialog-error").hidden = true;
    const inputs = {};
    $("dialog-fields").replaceChildren(...fields.map((f) => {
      const input = f.options
        ? el("select", { name: f.name }, f.options.map(([v, label]) => el("option", { value: v }, label)))
        : el(f.type === "textarea" ? "textarea" : "input", { name: f.name, type: f.type === "textarea" ? null : (f.type || "text"),
          required: f.required, value: f.value, rows: f.type === "textarea" ? 2 : null, inputmode: f.inputmode });
      inputs[f.name] = input;
      return el("label", { class: "field" }, el("span", null, f.label), input);
    }));
    const ok = $("dialog-ok");
    ok.textContent = t(okKey);
    ok.className = danger ? "danger" : "primary";
    state.dialogOpen = true;
    dialog.showModal();
    const first = Object.values(inputs)[0];
    if (first) first.focus();
    return new Promise((resolve) => {
      const close = (result) => {
        $("dialog-form").removeEventListener("submit", submit);
        $("dialog-cancel").removeEventListener("click", cancel);
        dialog.close();
        state.dialogOpen = false;
        resolve(result);
      };
      const cancel = () => close(null);
      const submit = async (event) => {
        event.preventDefault();
        const values = {};
        for (const [name, input] of Object.entries(inputs)) values[name] = input.value.trim();
        const missing = fields.find((f) => f.required && !values[f.name]);
        if (missing) {
          $("dialog-error").textContent = t("dlg.required", { field: missing.label });
          $("dialog-error").hidden = false;
          return;
        }
        ok.disabled = true;
        try {
          const result = await run(values);
          close(result === undefined ? true : result);
        } catch (exc) {
          $("dialog-error").textContent = exc && exc.message ? exc.message : String(exc);
          $("dialog-error").hidden = false;
        } finally {
          ok.disabled = false;
        }
      };
      $("dialog-form").addEventListener("submit", submit);
      $("dialog-cancel").addEventListener("click", cancel);
    });
  }

  // --- pagers: server-side pages walked by cursor ------------------------------------------------

  function pager(name) {
    const key = `${location.hash}|${name}`;
    if (!state.pagers.has(key)) state.pagers.set(key, { stack: [], cursor: null });
    return state.pagers.get(key);
  }

  function pagerQuery(name) {
    const p = pager(name);
    return `limit=${PAGE_SIZE}${p.cursor ? `&cursor=${q(p.cursor)}` : ""}`;
  }

  function pagerControls(name, next) {
    const p = pager(name);
    const page = p.stack.length + 1;
    return el("div", { class: "pager", "data-pager": name },
      el("button", { type: "button", disabled: p.stack.length === 0, "data-page": "prev",
        onclick: () => { p.cursor = p.stack.pop() ?? null; refresh(); } }, t("pager.prev")),
      el("span", null, t("pager.page", { n: page })),
      el("button", { type: "button", disabled: !next, "data-page": "next",
        onclick: () => { p.stack.push(p.cursor); p.cursor = next; refresh(); } }, t("pager.next")));
  }

  // --- charts ----------------------------------------------------------------------------------

  const COLORS = ["#1f6feb", "#2da44e", "#bf8700", "#cf222e", "#8250df", "#1b7c83", "#e16f24", "#57606a"];

  function chart(name, canvas, config) {
    if (typeof Chart === "undefined") throw new Error("Chart.js did not load");
    const existing = state.charts[name];
    if (existing && existing.canvas === canvas) {
      existing.data = config.data;
      existing.options = config.options;
      existing.update("none");
      return existing;
    }
    if (existing) existing.destroy();
    state.charts[name] = new Chart(canvas, config);
    return state.charts[name];
  }

  /* Ticks on whole minutes, hours or days of the site's clock between ``lo`` and ``hi`` (ms). */
  function siteTicks(lo, hi) {
    if (!Number.isFinite(lo) || !Number.isFinite(hi) || hi <= lo) return [];
    const minute = 60e3;
    let step = 7 * 1440 * minute;
    for (const m of [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 4320, 10080]) {
      if ((hi - lo) / (m * minute) <= 8) {
        step = m * minute;
        break;
      }
    }
    const off = offsetMs(lo);
    const ticks = [];
    for (let at = Math.ceil((lo + off) / step) * step - off; at <= hi && ticks.length < 20; at += step) ticks.push({ value: at });
    return ticks;
  }

  /* A line chart over time: datasets [{label, points [{x ms, y}], axis "y" | "y1", color, bar}]. */
  function timeChart(name, canvas, datasets, axes, range) {
    const xs = datasets.flatMap((d) => d.points.map((p) => p.x));
    const lo = range ? range[0] : Math.min(...xs);
    const hi = range ? range[1] : Math.max(...xs);
    const span = xs.length || range ? hi - lo : 0;
    const scales = {
      x: { type: "linear", min: range ? range[0] : undefined, max: range ? range[1] : undefined,
        ticks: { callback: (v) => axisLabel(v, span), maxTicksLimit: 12 },
        afterBuildTicks: (axis) => { axis.ticks = siteTicks(axis.min, axis.max); },
        title: { display: true, text: zoneLabel() } },
    };
    for (const [id, axis] of Object.entries(axes)) {
      scales[id] = { position: id === "y" ? "left" : "right", beginAtZero: axis.zero !== false,
        min: axis.min, max: axis.max, title: { display: true, text: axis.title },
        grid: { drawOnChartArea: id === "y" } };
    }
    return chart(name, canvas, {
      type: "line",
      data: { datasets: datasets.map((d, i) => ({
        type: d.bar ? "bar" : "line", label: d.label, data: d.points, yAxisID: d.axis || "y",
        borderColor: d.color || COLORS[i], backgroundColor: d.bar ? (d.color || COLORS[i]) : "transparent",
        pointRadius: d.points.length < 40 ? 3 : 0, borderWidth: 2, stepped: d.stepped || false, tension: 0.15,
        barThickness: d.bar ? "flex" : undefined,
      })) },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false, parsing: false, normalized: true,
        interaction: { mode: "nearest", intersect: false, axis: "x" }, scales,
        plugins: { legend: { display: datasets.length > 1 },
          tooltip: { callbacks: { title: (items) => (items.length ? when(new Date(items[0].parsed.x).toISOString()) : "") } } },
      },
    });
  }

  const chartBox = (id) => el("div", { class: "chart" }, el("canvas", { id }));

  // --- refresh and routing ---------------------------------------------------------------------

  function stop() {
    if (state.timer !== null) clearTimeout(state.timer);
    state.timer = null;
  }

  function schedule() {
    stop();
    if (!state.paused && state.token) state.timer = setTimeout(refresh, refreshSeconds * 1000);
  }

  function route() {
    const hash = location.hash.replace(/^#\/?/, "");
    const [path, query] = hash.split("?");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    return { name: parts[0] || "overview", arg: parts[1] || null, query: new URLSearchParams(query || "") };
  }

  const PAGES = {};

  async function refresh() {
    if (!state.token) return askToken("");
    if (state.dialogOpen) return schedule(); // never redraw under an open dialog
    if (state.running) {
      state.again = true;
      return;
    }
    state.running = true;
    stop();
    const errors = [];
    const r = route();
    const key = `${r.name}/${r.arg || ""}`;
    if (state.route !== key) {
      state.route = key;
      state.view = {};
    }
    try {
      if (state.role === null) await loadWhoami();
      for (const a of document.querySelectorAll("[data-nav]")) {
        a.classList.toggle("on", a.dataset.nav === r.name || `${a.dataset.nav}` === `${r.name}s`);
      }
      const draw = PAGES[r.name] || PAGES.notfound;
      $("page-overview").hidden = r.name !== "overview";
      $("page-view").hidden = r.name === "overview";
      document.body.dataset.page = r.name;
      await Promise.all([draw(errors, r), alarmCounts(errors)]);
      document.body.dataset.token = "ok";
      state.cycles += 1;
      if (!errors.length) setText("updated", when(new Date().toISOString()));
      $("updated").classList.toggle("stale", errors.length > 0);
      document.body.dataset.cycles = String(state.cycles);
      document.body.dataset.loaded = "1";
      document.body.dataset.errors = errors.join(" | ");
      showBanner(errors);
    } catch (exc) {
      state.running = false;
      if (exc instanceof ApiFailure && exc.status === 401) return askToken(t("token.refused"));
      errors.push(`${t("err.page")}: ${exc && exc.message ? exc.message : exc}`);
      document.body.dataset.errors = errors.join(" | ");
      showBanner(errors);
    } finally {
      state.running = false;
    }
    if (state.again) {
      state.again = false;
      return refresh();
    }
    schedule();
  }

  /* The page container for a non-overview page, emptied and titled, unless it is already this page's. */
  function view(r, title, subtitle) {
    const main = $("page-view");
    const key = `${r.name}/${r.arg || ""}|${state.lang}`;
    if (main.dataset.key !== key) {
      main.dataset.key = key;
      main.replaceChildren();
      for (const chartName of Object.keys(state.charts)) {
        if (chartName.startsWith("v-")) {
          state.charts[chartName].destroy();
          delete state.charts[chartName];
        }
      }
    }
    let head = main.querySelector(".page-head");
    if (!head) {
      head = el("div", { class: "page-head panel wide" });
      main.appendChild(head);
    }
    head.replaceChildren(el("h2", { id: "page-title" }, title));
    if (subtitle) head.appendChild(el("div", { class: "sub" }, subtitle));
    return main;
  }

  /* A panel of the current page by id, created once (kept across refreshes, so a chart's canvas stays). */
  function panel(main, id, titleKey, wide) {
    let node = main.querySelector(`#${id}`);
    if (!node) {
      node = el("section", { id, class: `panel ${wide ? "wide" : ""}` },
        el("h2", null, t(titleKey)), el("div", { class: "body" }));
      main.appendChild(node);
    }
    return node.querySelector(".body");
  }

  function fillPanel(body, ...children) {
    body.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  }

  // --- alarm counts (header and overview) --------------------------------------------------------

  async function alarmCounts(errors) {
    let doc = null;
    try {
      doc = await get("alarms?state=open&limit=1");
    } catch (exc) {
      if (exc instanceof ApiFailure && exc.status === 401) throw exc;
      if (!(exc instanceof ApiFailure && exc.status === 404)) errors.push(`alarms: ${exc.message}`);
    }
    const counts = doc && doc.counts ? doc.counts : null;
    setText("nav-alarms", counts && counts.open ? String(counts.open) : "");
    state.alarmCounts = counts;
  }

  // --- overview --------------------------------------------------------------------------------

  PAGES.overview = async function (errors) {
    const day = siteDay(new Date());
    const [overview, terminals, lineloss, quality, commands, anomalies, outages, ...near] = await Promise.all([
      soft(errors, "overview"), soft(errors, "terminals"), soft(errors, `lineloss?period=${q(day)}`),
      soft(errors, `quality?day=${q(day)}`), soft(errors, "console/commands?limit=15"),
      soft(errors, "anomalies?state=open&limit=50"), soft(errors, "outages?open=true&limit=50"),
      ...NEAR_TRIP.map((s) => soft(errors, `console/accounts?state=${s}&limit=20`)),
    ]);
    if (overview && overview.timezone && overview.timezone !== state.zone) takeZone(overview.timezone);
    drawTiles(day, overview, terminals);
    drawAreasTable(day, lineloss);
    drawQualityTable(quality);
    const nearRows = near.filter(Boolean).flatMap((d) => d.accounts);
    $("near-table").replaceChildren(table(["col.state", "col.account", "col.customer", "col.area", "#col.balance", "col.held"],
      nearRows.map((a) => [badge("astate", a.state), accountLink(a.account), a.customer, areaLink(a.area),
        numCell(num(a.balance, 2), Number(a.balance) < 0 ? "bad" : ""), a.held || (a.protected ? t("word.protected") : "")]),
      "empty.near"));
    $("queue-table").replaceChildren(commandsTable(commands ? commands.commands : []));
    $("anomalies-table").replaceChildren(table(["col.opened", "col.meter", "col.kind", "col.severity", "col.detail"],
      (anomalies || []).slice(0, 20).map((e) => [when(e.opened), /^\d{12}$/.test(e.meter) ? meterLink(e.meter) : terminalLink(e.meter), word("anomaly", e.kind),
        badge("severity", e.severity), el("td", { class: "reason" }, e.detail)]), "empty.anomalies"));
    $("outages-table").replaceChildren(table(["col.started", "col.area", "#col.meters"],
      (outages || []).slice(0, 20).map((o) => [when(o.started), areaLink(o.unit), numCell((o.meters || []).length)]),
      "empty.outages"));
    await Promise.all([drawOverviewCurve(errors, day, lineloss), drawOverviewEnergy(errors, day)]);
  };

  function takeZone(zone) {
    try {
      fmt.init(zone);
      state.zone = zone;
    } catch (exc) {
      fmt.init(state.zone);
      return;
    }
    document.body.dataset.timezone = zone;
    for (const node of document.querySelectorAll(".tz")) node.textContent = zoneLabel();
  }

  function drawTiles(day, doc, terminals) {
    setText("overview-day", day);
    if (!doc) return;
    setText("t-meters", doc.meters);
    setText("t-meters-detail", t("ov.withdata", { n: doc.meters_with_data_today }));
    const tt = doc.terminals || {};
    setText("t-terminals", tt.total ? `${tt.online} / ${tt.total}` : "0");
    const offline = (terminals || []).filter((x) => !x.online).map((x) => x.id);
    setText("t-terminals-detail", !tt.total ? t("ov.noterminals")
      : offline.length ? t("ov.offline", { list: offline.slice(0, 4).join(", ") }) : t("ov.allonline"));
    const c = doc.collection || {};
    const target = typeof c.target === "number" ? c.target : 0.97;
    const rate = typeof c.success_rate === "number" ? c.success_rate : null;
    const at = (v) => Math.max(0, Math.min(100, ((v - GAUGE_MIN) / (1 - GAUGE_MIN)) * 100));
    $("gauge-target").style.left = `${at(target)}%`;
    setText("gauge-target-label", `${(target * 100).toFixed(0)} %`);
    $("gauge").title = t("ov.target", { n: (target * 100).toFixed(0) });
    if (rate === null) {
      setText("t-success", "–");
      $("gauge-fill").style.width = "0";
      setText("t-success-detail", t("ov.noattempts"));
      document.body.dataset.successRate = "";
    } else {
      setText("t-success", pct(rate));
      $("gauge-fill").style.width = `${at(rate)}%`;
      $("gauge").className = `gauge ${rate >= target ? "ok" : "bad"}`;
      setText("t-success-detail", t("ov.successdetail", { ok: c.successes, due: c.attempts - (c.no_record || 0),
        target: (target * 100).toFixed(0) }) + (rate >= target ? "" : ` · ${t("ov.below")}`));
      document.body.dataset.successRate = String(rate);
    }
    const a = doc.accounts || {};
    setText("t-accounts", (a.tripped || 0) + (a.alarmed || 0) + (a.reminded || 0));
    setText("t-accounts-detail", t("ov.accountsdetail", { r: a.reminded || 0, a: a.alarmed || 0, t: a.tripped || 0 }));
    const cmd = doc.commands || {};
    setText("t-commands", (cmd.queued || 0) + (cmd.sent || 0));
    setText("t-commands-detail", Object.entries(cmd).map(([k, n]) => `${word("cstate", k)} ${n}`).join(" · "));
    setText("t-anomalies", doc.anomalies_open);
    setText("t-outages", doc.outages_open);
    const al = doc.alarms || state.alarmCounts;
    setText("t-alarms", al ? al.open : "–");
    setText("t-alarms-detail", al ? t("ov.alarmsdetail", { open: al.open, ack: al.acknowledged ?? 0 }) : t("ov.noalarms"));
    $("t-alarms").parentElement.classList.toggle("alert", Boolean(al && al.open));
  }

  function drawAreasTable(day, rows) {
    setText("areas-day", day);
    $("areas-table").replaceChildren(table(
      ["col.unit", "col.kind", "#col.supply", "#col.sales", "#col.loss", "#col.lossrate", "#col.completeness", "col.flags"],
      (rows || []).map((u) => [areaLink(u.unit), word("unitkind", u.kind), numCell(num(u.supply, 2)), numCell(num(u.sales, 2)),
        numCell(num(u.loss, 2)), numCell(u.rate === null ? "–" : `${u.rate} %`, (u.flags || []).includes("over_threshold") ? "bad" : ""),
        numCell(`${num(u.completeness, 0)} %`), (u.flags || []).map((f) => badge("flag", f))]), "empty.topology"));
  }

  function drawQualityTable(doc) {
    if (!doc) return;
    const rows = [...(doc.channels || []).map((r) => ["channel", r]), ...(doc.areas || []).map((r) => ["area", r])];
    $("quality-table").replaceChildren(table(["col.level", "col.name", "#col.success", "#col.okdue", "#col.withdata", "col.failures", "col.nodata"],
      rows.map(([level, r]) => [word("level", level), level === "area" && r.key !== "-" ? areaLink(r.key) : (r.key === "-" ? t("word.noarea") : r.key),
        numCell(pct(r.success_rate), r.success_rate !== null && r.success_rate < 0.97 ? "bad" : ""),
        numCell(`${r.ok ?? "–"} / ${r.due ?? r.attempts ?? "–"}`),
        numCell(`${r.meters_with_data ?? "–"} / ${r.meters_due ?? r.meters ?? "–"}`),
        Object.entries(r.failures || {}).sort().map(([k, n]) => `${word("outcome", k)} ${n}`).join(", ") || "–",
        (r.no_data || []).slice(0, 4).map((m) => [meterLink(m), " "])]),
      "empty.collection"));
  }

  async function drawOverviewCurve(errors, day, units) {
    setText("curve-day", day);
    const select = $("curve-subject");
    const options = [...(units || []).map((u) => [`unit:${u.unit}`, `${word("unitkind", u.kind)} ${u.unit}`])];
    const chosen = state.curveMeter || (params.get("curve") || "").replace(/^meter:/, "");
    if (chosen && !chosen.startsWith("unit:")) options.push([`meter:${chosen}`, `${t("word.meter")} ${chosen}`]);
    if (!options.length) options.push(["meter:000000000001", `${t("word.meter")} 000000000001`]);
    const keyOf = options.map((o) => o[0]).join("|");
    if (select.dataset.key !== keyOf || select.dataset.lang !== state.lang) {
      const previous = select.value || params.get("curve") || "";
      select.replaceChildren(...options.map(([v, label]) => el("option", { value: v }, label)));
      select.dataset.key = keyOf;
      select.dataset.lang = state.lang;
      if (options.some((o) => o[0] === previous)) select.value = previous;
      if (state.curveMeter) select.value = `meter:${state.curveMeter}`;
    }
    const subject = select.value;
    if (!subject) return;
    const [kind, ...rest] = subject.split(":");
    const doc = await soft(errors, `curve?${kind}=${q(rest.join(":"))}&day=${q(day)}&step=${q($("curve-step").value)}`);
    const points = doc ? doc.points.map((p) => ({ x: Date.parse(p.at), y: Number(p.kw) })) : [];
    const datasets = [{ label: "kW", points }];
    if (kind === "unit" && doc) datasets.push({ label: t("word.meters"), axis: "y1", stepped: true, color: "#8b949e",
      points: doc.points.map((p) => ({ x: Date.parse(p.at), y: p.meters })) });
    const midnight = Date.parse(`${day}T00:00:00Z`) - offsetMs(Date.parse(`${day}T00:00:00Z`));
    timeChart("curve", $("curve-chart"), datasets, kind === "unit" ? { y: { title: "kW" }, y1: { title: t("word.meters") } }
      : { y: { title: "kW" } }, [midnight, midnight + 86400e3]);
    document.body.dataset.curvePoints = String(points.length);
    setText("curve-note", points.length ? t("ov.curvenote", { n: points.length, step: $("curve-step").value })
      : t("ov.nocurve"));
  }

  async function drawOverviewEnergy(errors, day) {
    setText("energy-day", day);
    const by = $("energy-by").value;
    const doc = await soft(errors, `energy?period=${q(day)}&by=${q(by)}`);
    const bars = (doc || []).map((r) => ({ key: r.key, kwh: Number(r.kwh) }));
    chart("energy", $("energy-chart"), {
      type: "bar",
      data: { labels: bars.map((b) => b.key), datasets: [{ label: "kWh", data: bars.map((b) => b.kwh),
        backgroundColor: bars.map((_, i) => COLORS[i % COLORS.length]) }] },
      options: { animation: false, responsive: true, maintainAspectRatio: false,
        scales: { y: { beginAtZero: true, title: { display: true, text: "kWh" } } }, plugins: { legend: { display: false } } },
    });
    document.body.dataset.energyBars = String(bars.length);
    setText("energy-note", bars.length ? t("ov.energynote") : t("ov.noenergy"));
  }

  // --- commands (shared) -----------------------------------------------------------------------

  function commandsTable(commands) {
    return table(["#col.id", "col.created", "col.meter", "col.kind", "col.state", "col.reason", "col.actions"],
      commands.map((c) => [numCell(c.id), when(c.created), meterLink(c.meter),
        word("ckind", c.kind) + (c.manual ? ` (${t("word.manual")})` : ""), badge("cstate", c.state),
        el("td", { class: "reason" }, c.account ? [accountLink(c.account), ": "] : "", c.reason,
          c.detail ? el("div", { class: "muted" }, c.detail) : null),
        c.state === "queued" ? action("operator", "act.cancel", () => cancelCommand(c), { name: "cancel" }) : ""]),
      "empty.commands");
  }

  async function cancelCommand(c) {
    const done = await confirmDialog({
      title: t("act.cancel.title", { id: c.id }),
      what: t("act.cancel.what", { id: c.id, kind: word("ckind", c.kind), meter: c.meter }),
      fields: [{ name: "reason", label: t("field.reason"), required: true }],
      run: (v) => post(`commands/${c.id}/cancel`, { reason: v.reason }),
    });
    if (done) {
      toast(t("act.cancel.done", { id: c.id }));
      refresh();
    }
  }

  // --- meter page ------------------------------------------------------------------------------

  const RANGES = [["1h", 1], ["6h", 6], ["24h", 24], ["7d", 168], ["30d", 720]];

  PAGES.meter = async function (errors, r) {
    const address = r.arg;
    const main = view(r, `${t("word.meter")} ${address}`);
    const doc = await get(`console/meters/${q(address)}`).catch((exc) => {
      if (exc.status === 404) return null;
      throw exc;
    });
    if (!doc) {
      fillPanel(panel(main, "p-missing", "page.notfound", true), t("err.nometer", { address }));
      return;
    }
    setText("page-title", `${t("word.meter")} ${doc.address}${doc.name ? ` · ${doc.name}` : ""}`);
    const info = panel(main, "p-state", "meter.state", false);
    const relay = doc.relay || {};
    const open = relay["relay.open"];
    const relayWord = open ? (truthy(open) ? t("relay.open") : t("relay.closed")) : t("word.unknown");
    const account = doc.account;
    fillPanel(info, el("dl", { class: "facts" },
      fact("meter.relay", el("span", { id: "relay-state", class: `badge ${!open ? "" : truthy(open) ? "b-tripped" : "b-confirmed"}`,
        "data-open": open ? String(truthy(open)) : "" }, relayWord), open ? ` ${when(open.timestamp)}` : ""),
      fact("meter.protect", account ? (account.protected ? t("word.protected") : t("word.notprotected")) : "–",
        truthy(relay["relay.protected"]) ? ` · ${t("meter.meterprotect")}` : ""),
      fact("meter.prealarm", relay["alarm.pre_trip"] ? (truthy(relay["alarm.pre_trip"]) ? t("word.yes") : t("word.no")) : "–"),
      fact("col.account", account ? [accountLink(account.account), ` · ${account.customer} · `, badge("astate", account.state),
        ` ¥${num(account.balance, 2)}`] : t("word.noaccount")),
      fact("meter.channel", doc.channel || "–", doc.terminal ? [" · ", terminalLink(doc.terminal.id)] : ""),
      fact("meter.protocol", `${doc.protocol} · CT ${doc.ct} × PT ${doc.pt} · ${t("word.group")} ${doc.group || "–"}`),
      fact("meter.attempts", t("meter.attemptsdetail", { n: doc.attempts_24h.total,
        ok: doc.attempts_24h.by_outcome.ok || 0 }), " ", Object.entries(doc.attempts_24h.by_outcome)
        .filter(([k]) => k !== "ok").map(([k, n]) => badge("outcome", k).appendChild(document.createTextNode(` ${n}`)).parentNode)),
      fact("meter.lastfailure", doc.attempts_24h.last_failure ? `${when(doc.attempts_24h.last_failure.at)} ${
        word("outcome", doc.attempts_24h.last_failure.outcome)} ${doc.attempts_24h.last_failure.detail || ""}` : "–")),
    el("div", { class: "actions" },
      action("operator", "act.trip", () => meterCommand(doc, "trip"), { class: "danger", name: "trip" }),
      action("operator", "act.reclose", () => meterCommand(doc, "reclose"), { name: "reclose" }),
      action("operator", "act.alarm", () => meterCommand(doc, "alarm"), { name: "alarm" }),
      action("technician", "act.callnow", () => callNow(doc), { name: "call-now" })),
    el("div", { id: "trace" }, state.view.trace || null));

    const latest = panel(main, "p-latest", "meter.latest", false);
    fillPanel(latest, table(["col.quantity", "#col.value", "col.unit", "col.time", "col.quality"],
      Object.values(doc.latest).map((x) => [t(`qty.${x.quantity}`) === `qty.${x.quantity}` ? x.quantity : t(`qty.${x.quantity}`),
        numCell(x.kind === "bool" ? t(truthy(x) ? "word.yes" : "word.no") : x.value), x.unit, when(x.timestamp), x.quality === "good" ? "" : badge("quality", x.quality)]), "empty.readings"));

    await drawMeterCurves(errors, main, doc.address);

    const pendingAndCommands = panel(main, "p-commands", "meter.commands", true);
    const cmds = await soft(errors, `console/commands?meter=${q(doc.address)}&${pagerQuery("commands")}`);
    fillPanel(pendingAndCommands, commandsTable(cmds ? cmds.commands : []), pagerControls("commands", cmds && cmds.next));

    const events = panel(main, "p-events", "meter.events", true);
    const ev = await soft(errors, `console/meters/${q(doc.address)}/events?${pagerQuery("events")}`);
    fillPanel(events,
      ev && ev.anomalies.length ? table(["col.opened", "col.kind", "col.severity", "col.closed", "col.detail"],
        ev.anomalies.map((e) => [when(e.opened), word("anomaly", e.kind), badge("severity", e.severity), when(e.closed),
          el("td", { class: "reason" }, e.detail)])) : null,
      table(["col.time", "col.actor", "col.action", "col.detail"], (ev ? ev.events : []).map((e) => [when(e.at), e.actor,
        e.action, el("td", { class: "reason" }, detailText(e.detail))]), "empty.events"),
      pagerControls("events", ev && ev.next));

    if (allowed("technician")) {
      const attempts = panel(main, "p-attempts", "meter.attemptlist", true);
      const list = await soft(errors, `meters/${q(doc.address)}/attempts?limit=20`);
      fillPanel(attempts, attemptsTable((list || []).slice().reverse()));
    }
  };

  function fact(key, ...value) {
    return [el("dt", null, t(key)), el("dd", null, ...value)];
  }

  const ISO_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d/;

  /* An audit or alarm detail object as one line: "key: value", times in the site's zone, nested
   * objects as key=value, booleans yes/no; ``skip`` keys left out. */
  function detailText(detail, skip) {
    if (!detail || typeof detail !== "object") return String(detail ?? "");
    const value = (v) => {
      if (typeof v === "boolean") return t(v ? "word.yes" : "word.no");
      if (typeof v === "string" && ISO_TIME.test(v)) return when(v);
      if (v && typeof v === "object") return Object.entries(v).map(([k, x]) => `${k}=${value(x)}`).join(", ");
      return String(v);
    };
    return Object.entries(detail).filter(([k, v]) => k !== "token_id" && !(skip || []).includes(k) && v !== null && v !== "")
      .map(([k, v]) => `${k}: ${value(v)}`).join(" · ");
  }

  /* What an alarm's detail says that its title does not: the anomaly's own words first. */
  function alarmDetail(detail) {
    if (!detail || typeof detail !== "object") return String(detail ?? "");
    const rest = detailText(detail, ["text", "anomaly_id", "anomaly_kind", "opened", "last_seen", "started"]);
    return [detail.text, rest].filter(Boolean).join(" · ");
  }

  function attemptsTable(list) {
    return table(["col.time", "col.channel", "col.item", "col.outcome", "#col.latency", "col.detail"],
      list.map((a) => [when(a.timestamp), a.channel, a.item, badge("outcome", a.outcome),
        numCell(a.latency === null ? "–" : `${Math.round(a.latency * 1000)} ms`), el("td", { class: "reason" }, a.detail)]),
      "empty.attempts");
  }

  async function drawMeterCurves(errors, main, address) {
    const body = panel(main, "p-curve", "meter.curves", true);
    const range = state.view.range || "24h";
    const hours = (RANGES.find((x) => x[0] === range) || RANGES[2])[1];
    let since;
    let until;
    if (range === "custom" && state.view.since && state.view.until) {
      since = new Date(state.view.since);
      until = new Date(state.view.until);
    } else {
      until = new Date();
      since = new Date(until.getTime() - hours * 3600e3);
    }
    if (!body.querySelector(".controls")) {
      const picker = el("div", { class: "controls range" },
        RANGES.map(([name]) => el("button", { type: "button", "data-range": name,
          onclick: () => { state.view.range = name; refresh(); } }, t(`range.${name}`))),
        el("label", null, t("range.from"), " ", el("input", { type: "datetime-local", id: "range-from" })),
        el("label", null, t("range.to"), " ", el("input", { type: "datetime-local", id: "range-to" })),
        el("button", { type: "button", "data-range": "custom", onclick: () => {
          const a = $("range-from").value;
          const b = $("range-to").value;
          if (!a || !b) return toast(t("range.need"), true);
          state.view = { ...state.view, range: "custom", since: new Date(a).toISOString(), until: new Date(b).toISOString() };
          refresh();
        } }, t("range.apply")));
      body.replaceChildren(picker, el("div", { class: "two" }, chartBox("v-power"), chartBox("v-energy")),
        el("p", { class: "note", id: "meter-curve-note" }));
    }
    for (const b of body.querySelectorAll("[data-range]")) b.classList.toggle("on", b.dataset.range === range);
    const doc = await soft(errors, `console/meters/${q(address)}/curve?since=${q(since.toISOString())}&until=${q(until.toISOString())}`);
    const power = doc ? doc.power.map((p) => ({ x: Date.parse(p.at), y: p.kw })) : [];
    const energy = doc ? doc.energy.map((p) => ({ x: Date.parse(p.at), y: Number(p.kwh) })) : [];
    const span = [since.getTime(), until.getTime()];
    timeChart("v-power", $("v-power"), [{ label: t("meter.load"), points: power }], { y: { title: "kW" } }, span);
    timeChart("v-energy", $("v-energy"), [{ label: t("meter.energy"), points: energy, bar: true, color: "#2da44e" }],
      { y: { title: "kWh" } }, span);
    document.body.dataset.curvePoints = String(power.length);
    setText("meter-curve-note", doc ? t("meter.curvenote", { from: when(doc.since), to: when(doc.until),
      step: Math.round(doc.step_seconds / 60), n: power.length }) : "");
  }

  const COMMAND_WHAT = { trip: "act.trip.what", reclose: "act.reclose.what", alarm: "act.alarm.what" };

  async function meterCommand(doc, kind) {
    const account = doc.account;
    const done = await confirmDialog({
      title: t(`act.${kind}.title`, { meter: doc.address }),
      what: t(COMMAND_WHAT[kind], { meter: doc.address,
        owner: account ? t("act.owner", { account: account.account, customer: account.customer }) : t("word.noaccount") }),
      fields: [{ name: "reason", label: t("field.reason"), required: true }],
      danger: kind === "trip", okKey: `act.${kind}`,
      run: (v) => post("commands", { meter: doc.address, kind, reason: v.reason }),
    });
    if (done) {
      toast(t("act.queued", { id: done.id, kind: word("ckind", kind), meter: doc.address }));
      refresh();
    }
  }

  async function callNow(doc) {
    const quantities = Object.keys(doc.latest).filter((x) => !x.startsWith("frozen")).slice(0, 32);
    const trace = $("trace");
    trace.replaceChildren(el("p", { class: "note" }, t("call.running")));
    try {
      const got = await post(`meters/${q(doc.address)}/read`,
        { quantities: quantities.length ? quantities : ["energy.active.import.total"] });
      state.view.trace = el("div", { class: "trace", "data-trace": "1" },
        el("h3", null, t("call.title", { n: got.readings.length, at: when(new Date().toISOString()) })),
        attemptsTable(got.attempts),
        table(["col.quantity", "#col.value", "col.unit"], got.readings.map((x) => [x.quantity, numCell(x.value), x.unit])));
      trace.replaceChildren(state.view.trace);
    } catch (exc) {
      if (exc instanceof ApiFailure && exc.status === 401) throw exc;
      state.view.trace = el("p", { class: "error" }, `${t("call.failed")}: ${exc.message}`);
      trace.replaceChildren(state.view.trace);
    }
  }

  // --- account page ----------------------------------------------------------------------------

  PAGES.account = async function (errors, r) {
    const name = r.arg;
    const main = view(r, `${t("word.account")} ${name}`);
    const doc = await get(`console/accounts/${q(name)}?days=${state.view.days || 30}`).catch((exc) => {
      if (exc.status === 404) return null;
      throw exc;
    });
    if (!doc) {
      fillPanel(panel(main, "p-missing", "page.notfound", true), t("err.noaccount", { name }));
      return;
    }
    const a = doc.account;
    setText("page-title", `${t("word.account")} ${a.account} · ${a.customer}`);
    const info = panel(main, "p-state", "account.state", false);
    fillPanel(info, el("dl", { class: "facts" },
      fact("col.state", badge("astate", a.state), a.held ? [" · ", t("account.held"), ": ", a.held] : ""),
      fact("col.balance", el("span", { id: "balance", class: Number(a.balance) < 0 ? "bad" : "" }, `¥ ${num(a.balance, 2)}`)),
      fact("account.remaining", doc.remaining_kwh === null ? "–" : `${num(doc.remaining_kwh, 2)} kWh (¥${doc.price}/kWh)`),
      fact("account.protect", el("span", { id: "protect-state" }, a.protected ? t("word.protected") : t("word.notprotected")),
        a.protected !== a.archive_protected ? ` (${t("account.override")}${doc.override ? `: ${doc.override.operator}, ${doc.override.reason}` : ""})` : ""),
      fact("col.area", areaLink(a.area)), fact("account.tariff", a.tariff),
      fact("account.opened", when(a.opened)),
      a.manual_hold_until ? fact("account.manualhold", when(a.manual_hold_until)) : null),
    el("div", { class: "actions" },
      action("operator", "act.pay", () => payDialog(a), { name: "pay" }),
      action("admin", a.protected ? "act.unprotect" : "act.protect", () => protectDialog(a, !a.protected),
        { name: a.protected ? "unprotect" : "protect" })));

    const meters = panel(main, "p-meters", "account.meters", false);
    fillPanel(meters, table(["col.meter", "meter.relay", "#col.energy"], doc.meters.map((m) => {
      const open = m.relay["relay.open"];
      return [meterLink(m.address), open ? badge("relay", truthy(open) ? "open" : "closed") : "–",
        numCell(m.energy ? `${num(m.energy.value, 2)} kWh` : "–")];
    }), "empty.meters"));

    const chartBody = panel(main, "p-balance", "account.chart", true);
    if (!chartBody.querySelector("canvas")) {
      chartBody.replaceChildren(el("div", { class: "controls range" }, [7, 30, 90].map((d) =>
        el("button", { type: "button", "data-days": d, onclick: () => { state.view.days = d; refresh(); } }, t("range.days", { n: d })))),
      chartBox("v-balance"));
    }
    for (const b of chartBody.querySelectorAll("[data-days]")) b.classList.toggle("on", Number(b.dataset.days) === (state.view.days || 30));
    const series = doc.series.map((p) => ({ x: Date.parse(p.at), balance: Number(p.balance), kwh: p.kwh === null ? null : Number(p.kwh) }));
    timeChart("v-balance", $("v-balance"), [
      { label: t("account.balanceaxis"), points: series.map((p) => ({ x: p.x, y: p.balance })), stepped: true },
      { label: t("account.kwhaxis"), axis: "y1", color: "#2da44e", stepped: true,
        points: series.filter((p) => p.kwh !== null).map((p) => ({ x: p.x, y: p.kwh })) },
    ], { y: { title: t("account.balanceaxis"), zero: false }, y1: { title: t("account.kwhaxis"), zero: false } },
    [Math.max(Date.now() - (state.view.days || 30) * 86400e3, series.length ? series[0].x : 0), Date.now()]);

    for (const [id, title, kind] of [["p-payments", "account.payments", "payment"], ["p-ledger", "account.ledger", null]]) {
      const body = panel(main, id, title, true);
      const doc2 = await soft(errors, `console/accounts/${q(a.account)}/ledger?${kind ? `kind=${kind}&` : ""}${pagerQuery(id)}`);
      fillPanel(body, table(["#col.seq", "col.time", "col.kind", "#col.amount", "#col.balanceafter", "col.actor", "col.detail"],
        (doc2 ? doc2.entries : []).map((e) => [numCell(e.seq), when(e.at), word("lkind", e.kind),
          numCell(num(e.amount, 2), Number(e.amount) < 0 ? "" : "good"), numCell(num(e.balance, 2)), e.actor,
          el("td", { class: "reason" }, e.detail || e.key)]), "empty.ledger"), pagerControls(id, doc2 && doc2.next));
    }
    const cmdBody = panel(main, "p-commands", "meter.commands", true);
    const cmds = await soft(errors, `console/commands?account=${q(a.account)}&${pagerQuery("commands")}`);
    fillPanel(cmdBody, commandsTable(cmds ? cmds.commands : []), pagerControls("commands", cmds && cmds.next));
  };

  async function payDialog(a) {
    const ref = `console-${Date.now().toString(36)}`;
    const done = await confirmDialog({
      title: t("act.pay.title", { account: a.account }),
      what: t("act.pay.what", { account: a.account, customer: a.customer, balance: num(a.balance, 2) }),
      fields: [{ name: "amount", label: t("field.amount"), required: true, inputmode: "decimal" },
        { name: "ref", label: t("field.ref"), required: true, value: ref }],
      okKey: "act.pay",
      run: (v) => post("payments", { account: a.account, amount: v.amount, ref: v.ref }),
    });
    if (done) {
      toast(done.applied ? t("act.pay.done", { balance: num(done.balance, 2) }) : t("act.pay.dup", { reason: done.reason }));
      refresh();
    }
  }

  async function protectDialog(a, protect) {
    const done = await confirmDialog({
      title: t(protect ? "act.protect.title" : "act.unprotect.title", { account: a.account }),
      what: t(protect ? "act.protect.what" : "act.unprotect.what", { account: a.account, customer: a.customer }),
      fields: [{ name: "reason", label: t("field.reason"), required: true }],
      okKey: protect ? "act.protect" : "act.unprotect", danger: !protect,
      run: (v) => post(`accounts/${q(a.account)}/protect`, { protect, reason: v.reason }),
    });
    if (done) {
      toast(t(protect ? "act.protect.done" : "act.unprotect.done", { account: a.account }));
      refresh();
    }
  }

  // --- area page -------------------------------------------------------------------------------

  PAGES.area = async function (errors, r) {
    const unit = r.arg;
    const main = view(r, `${t("word.area")} ${unit}`);
    const doc = await get(`console/areas/${q(unit)}?days=30`).catch((exc) => {
      if (exc.status === 404) return null;
      throw exc;
    });
    if (!doc) {
      fillPanel(panel(main, "p-missing", "page.notfound", true), t("err.noarea", { unit }));
      return;
    }
    setText("page-title", `${word("unitkind", doc.kind)} ${doc.unit}`);
    // days before the first with any data (the archive does not reach back that far) are left out
    const firstData = doc.series.findIndex((x) => x.supply_with_data + x.sales_with_data > 0);
    const series = firstData < 0 ? [] : doc.series.slice(firstData);
    const chartBody = panel(main, "p-loss", "area.chart", true);
    if (!chartBody.querySelector("canvas")) chartBody.replaceChildren(chartBox("v-loss"), el("p", { class: "note", id: "area-note" }));
    const day0 = (d) => Date.parse(`${d}T00:00:00Z`) - offsetMs(Date.parse(`${d}T00:00:00Z`));
    timeChart("v-loss", $("v-loss"), [
      { label: t("col.lossrate"), points: series.filter((s) => s.rate !== null).map((s) => ({ x: day0(s.start), y: Number(s.rate) })) },
      { label: t("col.completeness"), axis: "y1", color: "#2da44e", stepped: true,
        points: series.map((s) => ({ x: day0(s.start), y: Number(s.completeness) })) },
    ], { y: { title: `${t("col.lossrate")} %` }, y1: { title: `${t("col.completeness")} %`, min: 0, max: 100 } },
    [day0(doc.first), day0(doc.last)]);
    setText("area-note", t("area.note", { first: doc.first, last: doc.last, threshold: doc.loss_threshold })
      + (firstData > 0 ? ` · ${t("area.nodatabefore", { day: series.length ? series[0].start : doc.last })}` : ""));

    const days = panel(main, "p-days", "area.days", true);
    fillPanel(days, table(["col.day", "#col.supply", "#col.sales", "#col.auxiliary", "#col.loss", "#col.lossrate", "#col.completeness", "col.flags"],
      series.slice().reverse().map((s) => [s.start, numCell(num(s.supply, 2)), numCell(num(s.sales, 2)), numCell(num(s.auxiliary, 2)),
        numCell(num(s.loss, 2)), numCell(s.rate === null ? "–" : `${s.rate} %`), numCell(`${num(s.completeness, 0)} %`),
        (s.flags || []).map((f) => badge("flag", f))]), "empty.days"));

    const points = panel(main, "p-points", "area.points", false);
    fillPanel(points, table(["col.role", "col.meter", "#col.multiplier", "col.industry"],
      doc.points.map((p) => [word("prole", p.role), meterLink(p.meter), numCell(p.multiplier), p.industry || "–"]), "empty.points"));
    const missing = panel(main, "p-missingmeters", "area.missing", false);
    fillPanel(missing, doc.missing.length ? el("p", null, t("area.missingnote", { day: doc.last }), " ",
      doc.missing.map((m) => [meterLink(m), " "])) : el("p", { class: "muted" }, t("area.nomissing")),
    doc.children.length ? el("p", null, t("area.children"), " ", doc.children.map((c) => [areaLink(c), " "])) : null);
    const outages = panel(main, "p-outages", "ov.outages", true);
    fillPanel(outages, table(["col.started", "col.ended", "#col.meters", "col.accounts"],
      doc.outages.map((o) => [when(o.started), o.ended ? when(o.ended) : badge("word", "ongoing"), numCell(o.meters.length),
        o.accounts.slice(0, 6).map((x) => [accountLink(x), " "])]), "empty.outages"));
  };

  // --- terminal page ---------------------------------------------------------------------------

  PAGES.terminal = async function (errors, r) {
    const ident = r.arg;
    const main = view(r, `${t("word.terminal")} ${ident}`);
    const doc = await get(`console/terminals/${q(ident)}?${pagerQuery("meters")}`).catch((exc) => {
      if (exc.status === 404) return null;
      throw exc;
    });
    if (!doc) {
      fillPanel(panel(main, "p-missing", "page.notfound", true), t("err.noterminal", { ident }));
      return;
    }
    const info = panel(main, "p-state", "terminal.state", false);
    fillPanel(info, el("dl", { class: "facts" },
      fact("terminal.online", badge("online", doc.online ? "online" : "offline"), doc.since ? ` ${t("terminal.since")} ${when(doc.since)}` : ""),
      fact("terminal.kind", word("tkind", doc.kind)), fact("meter.channel", doc.channel),
      fact("terminal.share", pct(doc.online_share, 1)), fact("col.meters", doc.meters)));
    const hist = panel(main, "p-online", "terminal.history", false);
    fillPanel(hist, table(["col.from", "col.to", "#col.duration"], doc.intervals.map((i) => [when(i.start),
      i.end ? when(i.end) : t("terminal.now"), numCell(duration((i.end ? Date.parse(i.end) : Date.now()) - Date.parse(i.start)))]),
    "empty.online"));
    const meters = panel(main, "p-meters", "terminal.meters", true);
    fillPanel(meters, table(["col.meter", "#col.pn", "col.name", "col.group", "col.account"], doc.meters_page.map((m) =>
      [meterLink(m.address), numCell(m.pn ?? "–"), m.name || "–", m.group, accountLink(m.account)]), "empty.meters"),
    pagerControls("meters", doc.next));
    const failures = panel(main, "p-failures", "terminal.failures", true);
    fillPanel(failures, table(["col.time", "col.meter", "col.item", "col.outcome", "col.detail"], doc.failures.map((f) =>
      [when(f.at), meterLink(f.meter), f.item, badge("outcome", f.outcome), el("td", { class: "reason" }, f.detail)]), "empty.failures"));
  };

  function duration(ms) {
    const minutes = Math.round(ms / 60e3);
    return minutes < 120 ? `${minutes} min` : `${(minutes / 60).toFixed(1)} h`;
  }

  // --- lists -----------------------------------------------------------------------------------

  PAGES.meters = async function (errors, r) {
    const main = view(r, t("nav.meters"));
    const body = panel(main, "p-list", "list.meters", true);
    const doc = await soft(errors, `console/meters?${pagerQuery("list")}`);
    fillPanel(body, table(["col.meter", "col.name", "meter.channel", "col.group", "meter.protocol", "col.account"],
      (doc ? doc.meters : []).map((m) => [meterLink(m.address), m.name || "–", m.channel, m.group, m.protocol, accountLink(m.account)]),
      "empty.meters"), pagerControls("list", doc && doc.next));
  };

  PAGES.accounts = async function (errors, r) {
    const main = view(r, t("nav.accounts"));
    const wanted = state.view.state ?? r.query.get("state") ?? "";
    const body = panel(main, "p-list", "list.accounts", true);
    const doc = await soft(errors, `console/accounts?${wanted ? `state=${q(wanted)}&` : ""}${pagerQuery(`list-${wanted}`)}`);
    const filter = el("div", { class: "controls range" }, ["", "normal", "reminded", "alarmed", "tripped", "pending"].map((s) =>
      el("button", { type: "button", class: s === wanted ? "on" : "", onclick: () => { state.view.state = s; refresh(); } },
        s ? word("astate", s) : t("word.all"))));
    fillPanel(body, filter, table(["col.account", "col.customer", "col.area", "col.state", "#col.balance", "col.held", "account.protect"],
      (doc ? doc.accounts : []).map((a) => [accountLink(a.account), a.customer, areaLink(a.area), badge("astate", a.state),
        numCell(num(a.balance, 2), Number(a.balance) < 0 ? "bad" : ""), a.held || "", a.protected ? t("word.protected") : ""]),
      "empty.accounts"), pagerControls(`list-${wanted}`, doc && doc.next));
  };

  PAGES.commands = async function (errors, r) {
    const main = view(r, t("ov.queue"));
    const wanted = state.view.state ?? r.query.get("state") ?? "";
    const body = panel(main, "p-list", "list.commands", true);
    const doc = await soft(errors, `console/commands?${wanted ? `state=${q(wanted)}&` : ""}${pagerQuery(`list-${wanted}`)}`);
    const filter = el("div", { class: "controls range" }, ["", "queued", "sent", "confirmed", "failed", "expired", "cancelled"].map((x) =>
      el("button", { type: "button", class: x === wanted ? "on" : "", onclick: () => { state.view.state = x; refresh(); } },
        x ? word("cstate", x) : t("word.all"))));
    fillPanel(body, filter, commandsTable(doc ? doc.commands : []), pagerControls(`list-${wanted}`, doc && doc.next));
  };

  PAGES.areas = async function (errors, r) {
    const main = view(r, t("nav.areas"));
    const body = panel(main, "p-list", "list.areas", true);
    const doc = await soft(errors, "console/areas");
    fillPanel(body, table(["col.unit", "col.kind", "col.parent", "#col.points"], (doc ? doc.areas : []).map((u) =>
      [areaLink(u.unit), word("unitkind", u.kind), u.parent ? areaLink(u.parent) : "–", numCell(u.points)]), "empty.topology"));
  };

  PAGES.terminals = async function (errors, r) {
    const main = view(r, t("nav.terminals"));
    const body = panel(main, "p-list", "list.terminals", true);
    const doc = await soft(errors, "terminals");
    fillPanel(body, table(["col.terminal", "terminal.kind", "meter.channel", "terminal.online", "#col.meters"],
      (doc || []).map((x) => [terminalLink(x.id), word("tkind", x.kind), x.channel,
        [badge("online", x.online ? "online" : "offline"), x.since ? ` ${when(x.since)}` : ""], numCell(x.meters)]), "empty.terminals"));
  };

  // --- alarms ----------------------------------------------------------------------------------

  const ALARM_STATES = ["open", "acknowledged", "closed", "all"];

  PAGES.alarms = async function (errors, r) {
    const main = view(r, t("nav.alarms"));
    const wanted = state.view.alarmState || r.query.get("state") || "open";
    const body = panel(main, "p-alarms", "alarms.list", true);
    let doc = null;
    try {
      doc = await get(`alarms?state=${q(wanted)}&${pagerQuery(`alarms-${wanted}`)}`);
    } catch (exc) {
      if (exc instanceof ApiFailure && exc.status === 401) throw exc;
      if (exc instanceof ApiFailure && exc.status === 404 && exc.message === "404 Not Found") {
        fillPanel(body, el("p", { class: "muted" }, t("alarms.absent")));
        return;
      }
      errors.push(`alarms: ${exc.message}`);
    }
    const counts = (doc && doc.counts) || {};
    const tabs = el("div", { class: "controls range" }, ALARM_STATES.map((s) =>
      el("button", { type: "button", class: s === wanted ? "on" : "", "data-alarm-state": s,
        onclick: () => { state.view.alarmState = s; refresh(); } },
      t(`alarmstate.${s}`) + (counts[s] !== undefined ? ` (${counts[s]})` : ""))));
    const rows = (doc ? doc.alarms : []).map((a) => [
      when(a.raised_at), badge("severity", a.severity), word("alarmkind", a.kind), subjectLink(a.kind, a.subject),
      el("td", { class: "reason" }, el("strong", null, a.title), a.detail ? el("div", { class: "muted" }, alarmDetail(a.detail)) : null,
        (a.history || []).length ? el("details", null, el("summary", null, t("alarms.history", { n: a.history.length })),
          el("ul", { class: "history" }, a.history.map((h) => el("li", null,
            `${when(h.at)} ${h.by}: ${word("alarmaction", h.action)}${h.comment ? ` — ${h.comment}` : ""}`)))) : null),
      badge("alarmstate", a.state), a.assignee || "–",
      el("td", { class: "acts" },
        a.state === "open" ? action("operator", "alarm.ack", () => alarmAction(a, "acknowledge"), { name: "acknowledge" }) : null,
        a.state !== "closed" ? action("operator", "alarm.assign", () => alarmAction(a, "assign"), { name: "assign" }) : null,
        a.state !== "closed" ? action("operator", "alarm.close", () => alarmAction(a, "close"), { name: "close" }) : null),
    ]);
    fillPanel(body, tabs, table(["col.raised", "col.severity", "col.kind", "col.subject", "col.detail", "col.state",
      "col.assignee", "col.actions"], rows, "empty.alarms"), pagerControls(`alarms-${wanted}`, doc && doc.next));
  };

  function subjectLink(kind, subject) {
    const text = String(subject || "");
    if (["anomaly", "relay_stuck", "command_failed"].includes(kind) && text) return meterLink(text);
    if (kind === "outage" && text) return areaLink(text);
    if (kind === "terminal_offline" && text) return terminalLink(text);
    if (/^\d{12}$/.test(text)) return meterLink(text);
    return text || "–";
  }

  async function alarmAction(a, verb) {
    const fields = [];
    if (verb === "assign") fields.push({ name: "to", label: t("field.assignee"), required: true, value: a.assignee || "" });
    fields.push({ name: "comment", label: t("field.comment"), required: verb === "close", type: "textarea" });
    const done = await confirmDialog({
      title: t(`alarm.${verb}.title`, { id: a.id }),
      what: t(`alarm.${verb}.what`, { id: a.id, title: a.title, subject: a.subject }),
      fields, okKey: verb === "acknowledge" ? "alarm.ack" : `alarm.${verb}`,
      run: (v) => {
        const body = {};
        if (v.to) body.to = v.to;
        if (v.comment) body.comment = v.comment;
        return post(`alarms/${q(a.id)}/${verb}`, body);
      },
    });
    if (done) {
      toast(t(`alarm.${verb}.done`, { id: a.id }));
      refresh();
    }
  }

  // --- reports ---------------------------------------------------------------------------------

  const REPORTS = ["lineloss", "energy", "quality", "balances"];

  PAGES.reports = async function (errors, r) {
    const main = view(r, t("nav.reports"));
    const body = panel(main, "p-reports", "reports.title", true);
    if (body.querySelector("form")) return;
    const month = siteDay(new Date()).slice(0, 7);
    const form = el("form", { class: "report-form", id: "report-form" },
      el("label", null, t("reports.kind"), " ", el("select", { name: "kind" }, REPORTS.map((k) => el("option", { value: k }, t(`report.${k}`))))),
      el("label", null, t("reports.period"), " ", el("input", { name: "period", value: month, size: 22 })),
      el("label", null, t("reports.base"), " ", el("select", { name: "base" },
        el("option", { value: "yoy" }, t("reports.yoy")), el("option", { value: "mom" }, t("reports.mom")))),
      el("label", null, t("reports.by"), " ", el("select", { name: "by" }, ["unit", "industry", "group"].map((b) =>
        el("option", { value: b }, t(`ov.by.${b}`))))),
      el("button", { type: "submit", class: "primary" }, t("reports.download")));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const data = new FormData(form);
      const path = `reports/${data.get("kind")}.xlsx?period=${q(data.get("period"))}&base=${q(data.get("base"))}&by=${q(data.get("by"))}`;
      try {
        await download(path, `${data.get("kind")}-${data.get("period")}.xlsx`);
      } catch (exc) {
        toast(`${t("reports.failed")}: ${exc.message}`, true);
      }
    });
    fillPanel(body, form, el("p", { class: "note" }, t("reports.note")));
  };

  async function download(path, filename) {
    const response = await fetch(API + path, { headers: { Authorization: `Bearer ${state.token}` }, credentials: "omit", cache: "no-store" });
    if (!response.ok) {
      let why = response.statusText;
      try {
        why = (await response.json()).error || why;
      } catch (exc) { /* not JSON */ }
      throw new ApiFailure(path, response.status, `${response.status} ${why}`);
    }
    const named = /filename="?([^";]+)"?/.exec(response.headers.get("Content-Disposition") || "");
    if (named) filename = named[1]; // the server's name says what it holds (period, base, by)
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: filename });
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10e3);
    toast(t("reports.done", { name: filename }));
  }

  PAGES.notfound = async function (errors, r) {
    const main = view(r, t("page.notfound"));
    fillPanel(panel(main, "p-nf", "page.notfound", true), t("page.unknown", { page: location.hash }));
  };

  // --- search ----------------------------------------------------------------------------------

  function startSearch() {
    const input = $("search");
    const box = $("search-results");
    let seq = 0;
    const go = async () => {
      const text = input.value.trim();
      const mine = ++seq;
      if (!text) {
        box.hidden = true;
        return;
      }
      let doc;
      try {
        doc = await get(`search?q=${q(text)}&limit=10`);
      } catch (exc) {
        box.replaceChildren(el("div", { class: "muted" }, exc.message));
        box.hidden = false;
        return;
      }
      if (mine !== seq) return;
      box.replaceChildren(...(doc.results.length ? doc.results.map((x) => el("a", { href: `#/${x.type}/${encodeURIComponent(x.id)}`,
        class: "hit", "data-type": x.type, onclick: () => { box.hidden = true; input.value = ""; } },
      el("span", { class: "badge" }, t(`word.${x.type}`)), " ", el("strong", null, x.label), " ", el("span", { class: "muted" }, x.detail)))
        : [el("div", { class: "muted" }, t("search.none"))]));
      box.hidden = false;
    };
    let timer = null;
    input.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(go, 200);
    });
    $("search-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      await go();
      const first = box.querySelector("a.hit");
      if (first) first.click();
    });
    document.addEventListener("click", (event) => {
      if (!$("search-form").contains(event.target)) box.hidden = true;
    });
  }

  // --- start -----------------------------------------------------------------------------------

  async function start() {
    await loadDictionary();
    applyLanguage();
    if (typeof Chart !== "undefined") {
      Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
      Chart.defaults.color = "#3b434b";
    }
    const step = params.get("step");
    if (step && [...$("curve-step").options].some((o) => o.value === step)) $("curve-step").value = step;
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token-input").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      state.token = token;
      state.role = null;
      $("token-form").hidden = true;
      showBanner([]);
      refresh();
    });
    $("change-token").addEventListener("click", () => askToken(""));
    $("pause").addEventListener("click", () => {
      state.paused = !state.paused;
      $("pause").textContent = t(state.paused ? "status.resume" : "status.pause");
      if (state.paused) stop();
      else refresh();
    });
    $("lang").addEventListener("click", () => {
      state.lang = state.lang === "zh" ? "en" : "zh";
      localStorage.setItem(LANG_KEY, state.lang);
      applyLanguage();
      if (state.role) setText("whoami", `${state.name} · ${word("role", state.role)}`);
      $("page-view").dataset.key = "";
      refresh();
    });
    for (const id of ["curve-subject", "curve-step", "energy-by"]) $(id).addEventListener("change", () => refresh());
    $("curve-meter").addEventListener("change", () => {
      const typed = $("curve-meter").value.trim();
      state.curveMeter = /^\d+$/.test(typed) ? typed.padStart(12, "0") : typed;
      $("curve-subject").dataset.key = "";
      refresh();
    });
    window.addEventListener("hashchange", () => {
      if (location.hash.includes("token=")) takeToken();
      refresh();
      window.scrollTo(0, 0);
    });
    startSearch();
    takeToken();
    if (state.token) refresh();
    else askToken("");
  }

  start();
})();
