/* meterd operator dashboard: polls the daemon's JSON API with a Bearer token and draws it.
 *
 * Plain script, no build step.  Everything that comes from the API reaches the page as text
 * (textContent, text nodes, Chart.js labels drawn on a canvas), never as markup to be parsed.
 *
 * Token: the URL fragment (#token=...) or the form; kept in sessionStorage for this tab only, and
 * the fragment is removed from the address bar once read.  Refresh: ?refresh=SECONDS (default 5).
 * Endpoints a daemon does not have yet (404) are replaced by what the older endpoints can tell.
 *
 * For tests, <body> carries: data-loaded="1" once a refresh has completed, data-cycles,
 * data-updated (ISO time), data-curve-points, data-energy-bars, data-success-rate, data-errors
 * ("" when the last refresh had none), data-token ("missing" / "refused" / "ok") and data-timezone
 * (the site's zone the page shows times in).
 *
 * Times: every time and day is the site's ([site] timezone, from /api/v1/overview: read before
 * the first refresh draws anything; Asia/Shanghai until then, or from a daemon without it).
 */
"use strict";

(function () {
  const TOKEN_KEY = "meterd.dashboard.token";
  const DEFAULT_ZONE = "Asia/Shanghai";
  const API = "api/v1/";
  const GAUGE_MIN = 0.8; // the success gauge shows 80 % .. 100 %
  const DEFAULT_TARGET = 0.97;
  const MAX_ROWS = 50;
  const NEAR_TRIP = ["tripped", "alarmed", "reminded"];
  const PENDING = new Set(["queued", "sent"]);

  const params = new URLSearchParams(location.search);
  const refreshSeconds = clamp(Number(params.get("refresh") || 5), 1, 3600, 5);

  const state = {
    token: null,
    timer: null,
    paused: false,
    running: false,
    again: false,
    cycles: 0,
    charts: { curve: null, energy: null },
    subjects: "",        // the curve subject options last built, to rebuild only on change
    firstToday: new Map(), // "day|meter" -> first energy register reading of the site's day
    zone: DEFAULT_ZONE,  // the site's zone, and whether the daemon has said which it is
    zoneKnown: false,
    paths: undefined,    // the daemon's API paths from its OpenAPI document, once read
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
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setText(id, text) {
    $(id).textContent = text === null || text === undefined ? "" : String(text);
  }

  function fill(tbodyId, rows, emptyText, columns) {
    const body = $(tbodyId);
    const shown = rows.slice(0, MAX_ROWS).map((row) => el("tr", null, row));
    if (!shown.length) shown.push(el("tr", { class: "empty" }, el("td", { colspan: columns }, emptyText)));
    body.replaceChildren(...shown);
  }

  function zoneFormat(zone) {
    return new Intl.DateTimeFormat("en-CA", {
      timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
    });
  }

  let siteFormat = zoneFormat(DEFAULT_ZONE);

  function siteParts(at) {
    const out = {};
    for (const p of siteFormat.formatToParts(at)) out[p.type] = p.value;
    return out;
  }

  function siteDay(at) {
    const p = siteParts(at);
    return `${p.year}-${p.month}-${p.day}`;
  }

  /* The site zone's offset from UTC at ``ms`` (epoch milliseconds), in milliseconds. */
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

  /* The site's midnight starting ``day`` (YYYY-MM-DD) as ISO 8601 with its offset. */
  function siteMidnight(day) {
    const wall = Date.parse(`${day}T00:00:00Z`);
    let at = wall - offsetMs(wall);
    at = wall - offsetMs(at); // the offset at the midnight itself (a daylight-saving day)
    return `${day}T00:00:00${offsetText(at)}`;
  }

  /* "HH:MM:SS" for today (the site's day), "YYYY-MM-DD HH:MM" before. */
  function siteWhen(iso) {
    if (!iso) return "–";
    const at = new Date(iso);
    if (Number.isNaN(at.getTime())) return String(iso);
    const p = siteParts(at);
    if (siteDay(at) === siteDay(new Date())) return `${p.hour}:${p.minute}:${p.second}`;
    return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}`;
  }

  function siteClock(ms, seconds) {
    const p = siteParts(new Date(ms));
    return seconds ? `${p.hour}:${p.minute}:${p.second}` : `${p.hour}:${p.minute}`;
  }

  /* "Asia/Shanghai (UTC+08:00)": what the page says its times are. */
  function zoneLabel() {
    return `${state.zone} (UTC${offsetText(Date.now())})`;
  }

  /* The site's zone as the overview names it (a daemon without it, or a name this browser does
   * not know: the default stays). */
  function takeZone(overview) {
    if (overview === ABSENT || overview instanceof NotFound) state.zoneKnown = true;
    if (!usable(overview) || typeof overview.timezone !== "string") return;
    state.zoneKnown = true;
    if (overview.timezone !== state.zone) {
      try {
        siteFormat = zoneFormat(overview.timezone);
        state.zone = overview.timezone;
      } catch (exc) { // RangeError: unknown to this browser
        return;
      }
    }
    for (const node of document.querySelectorAll(".tz")) node.textContent = zoneLabel();
    document.body.dataset.timezone = state.zone;
    const axis = state.charts.curve && state.charts.curve.options.scales.x;
    if (axis) axis.title.text = zoneLabel();
  }

  function num(text, places) {
    const value = Number(text);
    if (text === null || text === undefined || text === "" || !Number.isFinite(value)) return text ?? "–";
    return value.toLocaleString("en-US", { minimumFractionDigits: places, maximumFractionDigits: places });
  }

  function percent(text) {
    return text === null || text === undefined ? "–" : `${text} %`;
  }

  function badge(text, kind) {
    return el("span", { class: `badge ${kind || ""} b-${String(text).replace(/[^a-z0-9_-]/gi, "")}` }, text);
  }

  // --- the API ---------------------------------------------------------------------------------

  class ApiFailure extends Error {
    constructor(path, status, message) {
      super(message);
      this.path = path;
      this.status = status;
    }
  }

  async function api(path) {
    const controller = new AbortController();
    const timeout = setTimeout(() => controller.abort(), Math.max(10, refreshSeconds * 2) * 1000);
    let response;
    try {
      response = await fetch(API + path, {
        headers: { Authorization: `Bearer ${state.token}`, Accept: "application/json" },
        cache: "no-store", credentials: "omit", signal: controller.signal,
      });
    } catch (exc) {
      throw new ApiFailure(path, 0, controller.signal.aborted ? "no answer (timeout)" : "daemon unreachable");
    } finally {
      clearTimeout(timeout);
    }
    let doc = null;
    try {
      doc = await response.json();
    } catch (exc) {
      if (response.ok) throw new ApiFailure(path, response.status, "answer is not JSON");
    }
    if (!response.ok) {
      const why = doc && typeof doc.error === "string" ? doc.error : response.statusText;
      throw new ApiFailure(path, response.status, `${response.status} ${why}`);
    }
    return doc;
  }

  const ABSENT = Symbol("absent"); // the endpoint is not on this daemon (older than the page)
  const FAILED = Symbol("failed");

  class NotFound { // the endpoint is there, the subject is not (unknown meter, no topology)
    constructor(message) {
      this.message = message;
    }
  }

  /* The paths this daemon serves, from its OpenAPI document (no token needed); null if unknown. */
  async function loadPaths() {
    if (state.paths !== undefined) return;
    try {
      const response = await fetch(`${API}openapi.json`, { cache: "no-store", credentials: "omit" });
      if (response.ok) state.paths = new Set(Object.keys((await response.json()).paths || {}));
    } catch (exc) {
      // unknown for now: a 404 "Not Found" from the router tells an absent endpoint too
    }
  }

  /* One call of a refresh: a 401 aborts the refresh, other failures are recorded and shown.
   * optional: the endpoint may be absent from an older daemon (ABSENT, no error);
   * soft404: a 404 about the subject is an answer (NotFound), not an error; so is a 503 from an
   * optional endpoint (the server is not set up for it, e.g. an API app without the site config). */
  async function call(errors, name, path, { optional = false, soft404 = false } = {}) {
    if (optional && state.paths && !state.paths.has(`/api/v1/${path.split("?")[0]}`)) return ABSENT;
    try {
      return await api(path);
    } catch (exc) {
      if (!(exc instanceof ApiFailure)) throw exc;
      if (exc.status === 401) throw exc;
      if (exc.status === 404 && optional && exc.message === "404 Not Found") return ABSENT; // the router's
      if (exc.status === 404 && soft404) return new NotFound(exc.message.replace(/^404 /, ""));
      if (exc.status === 503 && optional) return new NotFound(exc.message.replace(/^503 /, "")); // not set up here
      errors.push(`${name}: ${exc.message}`);
      return FAILED;
    }
  }

  const usable = (doc) => doc !== ABSENT && doc !== FAILED && !(doc instanceof NotFound);

  // --- token -----------------------------------------------------------------------------------

  function takeToken() {
    const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
    const given = fragment.get("token");
    if (given) {
      sessionStorage.setItem(TOKEN_KEY, given.trim());
      history.replaceState(null, "", location.pathname + location.search); // out of the address bar
    }
    state.token = sessionStorage.getItem(TOKEN_KEY);
  }

  function askToken(message) {
    stop();
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    document.body.dataset.token = message ? "refused" : "missing";
    showBanner(message ? [message] : [], "Token needed:");
    $("token-form").hidden = false;
    $("token-input").value = "";
    $("token-input").focus();
  }

  // --- refresh ---------------------------------------------------------------------------------

  function stop() {
    if (state.timer !== null) clearTimeout(state.timer);
    state.timer = null;
  }

  function schedule() {
    stop();
    if (!state.paused && state.token) state.timer = setTimeout(refresh, refreshSeconds * 1000);
  }

  function showBanner(errors, heading = "The API did not answer everything:") {
    const banner = $("banner");
    const down = errors.filter((e) => e.endsWith("daemon unreachable"));
    if (down.length > 1 && down.length === errors.length) {
      errors = [`the daemon does not answer (${down.length} requests failed): is it running, is the network up?`];
    }
    if (!errors.length) {
      banner.hidden = true;
      banner.replaceChildren();
      return;
    }
    banner.replaceChildren(el("strong", null, heading),
      el("ul", null, errors.map((e) => el("li", null, e))));
    banner.hidden = false;
  }

  async function refresh() {
    if (!state.token) return askToken();
    if (state.running) {
      state.again = true;
      return;
    }
    state.running = true;
    stop();
    const errors = [];
    try {
      await loadPaths();
      await cycle(errors);
      document.body.dataset.token = "ok";
      state.cycles += 1;
      const now = new Date();
      if (!errors.length) { // "last updated" is the last refresh where everything answered
        setText("updated", siteWhen(now.toISOString()));
        document.body.dataset.updated = now.toISOString();
      }
      $("updated").classList.toggle("stale", errors.length > 0);
      document.body.dataset.cycles = String(state.cycles);
      document.body.dataset.loaded = "1";
      document.body.dataset.errors = errors.join(" | ");
      showBanner(errors);
    } catch (exc) {
      if (exc instanceof ApiFailure && exc.status === 401) {
        state.running = false;
        return askToken("The token was refused (401): enter a valid API token.");
      }
      errors.push(`dashboard: ${exc && exc.message ? exc.message : exc}`);
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

  async function cycle(errors) {
    if (!state.zoneKnown) takeZone(await call([], "overview", "overview", { optional: true }));
    const day = siteDay(new Date());
    const q = encodeURIComponent;
    // one batch: everything but the curve, whose subjects come from the meters and areas
    const [overview, meters, terminals, lineloss, quality, commands, anomalies, outages, ...accounts] = await Promise.all([
      call(errors, "overview", "overview", { optional: true }),
      call(errors, "meters", "meters"),
      call(errors, "terminals", "terminals", { optional: true }),
      call(errors, "lineloss", `lineloss?period=${q(day)}`, { optional: true }),
      call(errors, "quality", `quality?day=${q(day)}`, { optional: true }),
      call(errors, "commands", "commands?limit=50"),
      call(errors, "anomalies", "anomalies?state=open&limit=200"),
      call(errors, "outages", "outages?open=true&limit=200"),
      ...NEAR_TRIP.map((s) => call(errors, `accounts (${s})`, `accounts?state=${s}`)),
    ]);
    const near = accounts.every(usable) ? accounts.flat() : FAILED;
    const guard = (name, draw) => {
      try {
        draw();
      } catch (exc) {
        errors.push(`${name} panel: ${exc && exc.message ? exc.message : exc}`);
      }
    };
    takeZone(overview);
    guard("overview", () => drawOverview(day, overview, { meters, terminals, commands, anomalies, outages, near }));
    guard("areas", () => drawAreas(day, lineloss));
    guard("collection", () => drawQuality(quality));
    guard("accounts", () => drawAccounts(near));
    guard("commands", () => drawCommands(commands));
    guard("anomalies", () => drawAnomalies(anomalies));
    guard("outages", () => drawOutages(outages));
    const units = Array.isArray(lineloss) ? lineloss : [];
    await Promise.all([
      drawCurve(errors, day, units, Array.isArray(meters) ? meters : []).catch((exc) => rethrow401(exc, errors, "curve")),
      drawEnergy(errors, day, Array.isArray(meters) ? meters : []).catch((exc) => rethrow401(exc, errors, "energy")),
    ]);
  }

  function rethrow401(exc, errors, name) {
    if (exc instanceof ApiFailure && exc.status === 401) throw exc;
    errors.push(`${name} panel: ${exc && exc.message ? exc.message : exc}`);
  }

  // --- overview --------------------------------------------------------------------------------

  function drawOverview(day, overview, lists) {
    setText("overview-day", day);
    const doc = usable(overview) ? overview : fallbackOverview(day, lists);
    setText("t-meters", doc.meters ?? "–");
    setText("t-meters-detail", doc.meters_with_data_today === null || doc.meters_with_data_today === undefined
      ? "" : `${doc.meters_with_data_today} with data today`);

    const t = doc.terminals;
    if (t && t.total) {
      setText("t-terminals", `${t.online} / ${t.total}`);
      const offline = Array.isArray(lists.terminals) ? lists.terminals.filter((x) => !x.online).map((x) => x.id) : [];
      setText("t-terminals-detail", offline.length
        ? `offline: ${offline.slice(0, 5).join(", ")}${offline.length > 5 ? ` and ${offline.length - 5} more` : ""}`
        : "all online");
    } else {
      setText("t-terminals", t ? "0" : "–");
      setText("t-terminals-detail", t ? "no DTU or MQTT terminals configured" : "not reported by this daemon");
    }

    const c = doc.collection || {};
    const target = typeof c.target === "number" ? c.target : DEFAULT_TARGET;
    const rate = typeof c.success_rate === "number" ? c.success_rate : null;
    const gauge = $("gauge");
    $("gauge-target").style.left = `${gaugeAt(target)}%`;
    setText("gauge-target-label", `${(target * 100).toFixed(0)} %`);
    gauge.title = `target ${(target * 100).toFixed(0)} %; the bar shows ${GAUGE_MIN * 100} % to 100 %`;
    setText("gauge-low", `${GAUGE_MIN * 100} %`);
    if (rate === null) {
      setText("t-success", "–");
      $("gauge-fill").style.width = "0";
      gauge.className = "gauge";
      setText("t-success-detail", c.attempts === undefined ? "not reported by this daemon"
        : `no collection attempts yet today · target ${(target * 100).toFixed(0)} %`);
      document.body.dataset.successRate = "";
    } else {
      setText("t-success", `${(rate * 100).toFixed(2)} %`);
      $("gauge-fill").style.width = `${gaugeAt(rate)}%`;
      gauge.className = `gauge ${rate >= target ? "ok" : "bad"}`;
      // success = successes / attempts due: a "no record yet" answer is not due (docs/analytics.md)
      const notDue = c.no_record || 0;
      setText("t-success-detail", `${c.successes} of ${c.attempts - notDue} attempts due`
        + (notDue ? ` (${notDue} "no record yet")` : "") + ` · target ${(target * 100).toFixed(0)} %`
        + (rate >= target ? "" : " · BELOW TARGET"));
      document.body.dataset.successRate = String(rate);
    }

    const a = doc.accounts || {};
    const nearCount = (a.reminded || 0) + (a.alarmed || 0) + (a.tripped || 0);
    setText("t-accounts", doc.accounts ? nearCount : "–");
    setText("t-accounts-detail", doc.accounts
      ? `${a.tripped || 0} tripped · ${a.alarmed || 0} alarmed · ${a.reminded || 0} reminded`
        + (a.total !== undefined ? ` of ${a.total}` : "")
        + (a.pending ? ` · ${a.pending} pending activation (never tripped until activated)` : "")
      : "");

    const byState = doc.commands || {};
    const pending = Object.entries(byState).filter(([s]) => PENDING.has(s)).reduce((n, [, v]) => n + v, 0);
    setText("t-commands", doc.commands ? pending : "–");
    setText("t-commands-detail", Object.entries(byState).sort().map(([s, n]) => `${s} ${n}`).join(" · "));
    setText("t-anomalies", doc.anomalies_open ?? "–");
    setText("t-outages", doc.outages_open ?? "–");
    $("t-anomalies").parentElement.classList.toggle("alert", (doc.anomalies_open || 0) > 0);
    $("t-outages").parentElement.classList.toggle("alert", (doc.outages_open || 0) > 0);
  }

  function gaugeAt(rate) {
    return clamp(((rate - GAUGE_MIN) / (1 - GAUGE_MIN)) * 100, 0, 100, 0);
  }

  /* What the older endpoints tell when the daemon has no /overview: no collection attempts. */
  function fallbackOverview(day, lists) {
    const doc = { collection: {} };
    if (Array.isArray(lists.meters)) {
      doc.meters = lists.meters.length;
      doc.meters_with_data_today = lists.meters.filter((m) =>
        Object.values(m.latest || {}).some((r) => r && r.timestamp && siteDay(new Date(r.timestamp)) === day)).length;
    }
    if (Array.isArray(lists.terminals)) {
      doc.terminals = { total: lists.terminals.length, online: lists.terminals.filter((t) => t.online).length };
    }
    if (Array.isArray(lists.near)) {
      doc.accounts = { reminded: 0, alarmed: 0, tripped: 0 };
      for (const a of lists.near) doc.accounts[a.state] = (doc.accounts[a.state] || 0) + 1;
    }
    if (Array.isArray(lists.commands)) {
      doc.commands = {};
      for (const c of lists.commands) doc.commands[c.state] = (doc.commands[c.state] || 0) + 1;
    }
    if (Array.isArray(lists.anomalies)) doc.anomalies_open = lists.anomalies.length;
    if (Array.isArray(lists.outages)) doc.outages_open = lists.outages.length;
    return doc;
  }

  // --- tables ----------------------------------------------------------------------------------

  function drawAreas(day, lineloss) {
    setText("areas-day", day);
    if (lineloss === ABSENT) {
      fill("areas-rows", [], "This daemon does not serve /api/v1/lineloss.", 9);
      return setText("areas-note", "");
    }
    if (lineloss === FAILED) return setText("areas-note", "Line loss could not be read (see the banner).");
    if (lineloss instanceof NotFound) {
      fill("areas-rows", [], `Line loss is not available here: ${lineloss.message}.`, 9);
      return setText("areas-note", "");
    }
    fill("areas-rows", lineloss.map((u) => [
      el("td", null, u.unit), el("td", null, u.kind),
      el("td", { class: "num" }, num(u.supply, 2)), el("td", { class: "num" }, num(u.sales, 2)),
      el("td", { class: "num" }, num(u.loss, 2)),
      el("td", { class: `num ${(u.flags || []).includes("over_threshold") ? "bad" : ""}` }, percent(u.rate)),
      el("td", { class: `num ${Number(u.completeness) < 100 ? "warn" : ""}` }, percent(u.completeness)),
      el("td", null, (u.flags || []).map((f) => badge(f, "flag"))),
      el("td", null, missingText(u)),
    ]), "No topology configured: add [[topology.units]] and [[topology.points]] to the site config "
      + "to see line loss per area (docs/analytics.md).", 9);
    setText("areas-note", lineloss.length ? `${lineloss.length} units · today so far (${state.zone})` : "");
  }

  /* Today's collection per channel and topology area, against the target (the quality report). */
  function drawQuality(quality) {
    if (quality === ABSENT || quality instanceof NotFound) {
      fill("quality-rows", [], quality === ABSENT ? "This daemon does not serve /api/v1/quality."
        : `Collection quality is not available here: ${quality.message}.`, 7);
      return setText("quality-note", "");
    }
    if (!usable(quality)) return setText("quality-note", "Collection quality could not be read (see the banner).");
    const target = typeof quality.threshold === "number" ? quality.threshold : DEFAULT_TARGET;
    const rows = [...(quality.channels || []), ...(quality.areas || [])];
    fill("quality-rows", rows.map((r) => [
      el("td", null, r.level), el("td", null, r.key),
      el("td", { class: `num ${r.success_rate !== null && r.success_rate < target ? "bad" : ""}` },
        r.success_rate === null || r.success_rate === undefined ? "–" : `${(r.success_rate * 100).toFixed(2)} %`),
      el("td", { class: "num" }, `${r.ok ?? "–"} / ${r.due ?? r.attempts ?? "–"}`),
      el("td", { class: `num ${r.meters_with_data < (r.meters_due ?? r.meters) ? "warn" : ""}` },
        `${r.meters_with_data ?? "–"} / ${r.meters_due ?? r.meters ?? "–"}`),
      el("td", null, [...Object.entries(r.failures || {}).sort().map(([k, n]) => `${k} ${n}`),
        ...(r.no_record ? [`no record yet ${r.no_record} (not due)`] : [])].join(", ") || "–"),
      el("td", null, (r.no_data || []).slice(0, 4).join(", ") + ((r.no_data || []).length > 4 ? " …" : "")),
    ]), "No collection attempts today yet.", 7);
    setText("quality-note", `target ${(target * 100).toFixed(0)} % · today since 00:00 ${state.zone} · `
      + "areas are the topology's areas (台区), \"-\" the meters in none · a \"no record yet\" answer is not due");
  }

  function missingText(unit) {
    const missing = unit.missing || [];
    const estimated = unit.estimated || [];
    const parts = [];
    if (missing.length) parts.push(`${missing.length} missing: ${missing.slice(0, 3).join(", ")}${missing.length > 3 ? " …" : ""}`);
    if (estimated.length) parts.push(`${estimated.length} estimated`);
    return parts.join("; ") || "–";
  }

  function drawAccounts(near) {
    if (near === FAILED) return setText("accounts-note", "Accounts could not be read (see the banner).");
    const rank = (s) => NEAR_TRIP.indexOf(s);
    const rows = near.slice().sort((a, b) => rank(a.state) - rank(b.state) || Number(a.balance) - Number(b.balance));
    fill("accounts-rows", rows.map((a) => [
      el("td", null, badge(a.state, "state")), el("td", null, a.account),
      el("td", null, a.customer), el("td", null, a.area),
      el("td", { class: `num ${Number(a.balance) < 0 ? "bad" : ""}` }, num(a.balance, 2)),
      el("td", null, a.held || (a.protected ? "protected" : "")),
    ]), "No account is near or at trip.", 6);
    setText("accounts-note", rows.length > MAX_ROWS ? `showing ${MAX_ROWS} of ${rows.length}` : "");
  }

  function drawCommands(commands) {
    if (!usable(commands)) return setText("commands-note", "Commands could not be read (see the banner).");
    fill("commands-rows", commands.map((c) => [
      el("td", { class: "num" }, c.id), el("td", null, siteWhen(c.created)), el("td", null, c.meter),
      el("td", null, c.kind + (c.manual ? " (manual)" : "")), el("td", null, badge(c.state, "state")),
      el("td", { class: "reason" }, [c.account ? `${c.account}: ` : "", c.reason]),
    ]), "No commands yet.", 6);
    setText("commands-note", commands.length ? `the latest ${commands.length}, newest first` : "");
  }

  function drawAnomalies(anomalies) {
    if (!usable(anomalies)) return setText("anomalies-note", "Anomalies could not be read (see the banner).");
    fill("anomalies-rows", anomalies.map((e) => [
      el("td", null, siteWhen(e.opened)), el("td", null, e.meter), el("td", null, e.kind),
      el("td", null, badge(e.severity, "severity")), el("td", { class: "reason" }, e.detail),
    ]), "No open anomalies.", 5);
    setText("anomalies-note", anomalies.length > MAX_ROWS ? `showing ${MAX_ROWS} of ${anomalies.length}` : "");
  }

  function drawOutages(outages) {
    if (!usable(outages)) return setText("outages-note", "Outages could not be read (see the banner).");
    fill("outages-rows", outages.map((o) => [
      el("td", null, siteWhen(o.started)), el("td", null, o.unit),
      el("td", { class: "num" }, (o.meters || []).length),
      el("td", null, (o.accounts || []).slice(0, 5).join(", ") + ((o.accounts || []).length > 5 ? " …" : "")),
    ]), "No outage going on.", 4);
    setText("outages-note", outages.length > MAX_ROWS ? `showing ${MAX_ROWS} of ${outages.length}` : "");
  }

  // --- charts ----------------------------------------------------------------------------------

  const COLORS = { line: "#1f6feb", fill: "rgba(31, 111, 235, 0.12)", meters: "#8b949e",
    bars: ["#1f6feb", "#2da44e", "#bf8700", "#cf222e", "#8250df", "#1b7c83", "#e16f24", "#57606a"] };

  function chartOf(name, canvasId, config) {
    if (typeof Chart === "undefined") throw new Error("Chart.js did not load");
    if (!state.charts[name]) state.charts[name] = new Chart($(canvasId), config);
    return state.charts[name];
  }

  function curveSubjects(units, meters) {
    const options = [];
    for (const u of units) options.push({ value: `unit:${u.unit}`, label: `${u.kind || "unit"} ${u.unit}` });
    for (const m of meters) {
      const label = `meter ${m.address}` + (m.name ? ` ${m.name}` : "") + (m.group ? ` (${m.group})` : "");
      options.push({ value: `meter:${m.address}`, label, power: Boolean((m.latest || {})["power.active.total"]) });
    }
    return options;
  }

  function syncSubjects(options) {
    const select = $("curve-subject");
    const key = options.map((o) => o.value).join("\n");
    if (key === state.subjects) return select.value;
    const previous = select.value || params.get("curve") || "";
    select.replaceChildren(...options.map((o) => el("option", { value: o.value }, o.label)));
    state.subjects = key;
    const keep = options.find((o) => o.value === previous)
      || options.find((o) => o.value.startsWith("unit:"))
      || options.find((o) => o.power) || options[0];
    if (keep) select.value = keep.value;
    return select.value;
  }

  async function drawCurve(errors, day, units, meters) {
    setText("curve-day", day);
    const subject = syncSubjects(curveSubjects(units, meters));
    const chart = chartOf("curve", "curve-chart", curveConfig());
    if (!subject) {
      setCurve(chart, [], "No meters in the archive yet.");
      return;
    }
    const [kind, ...rest] = subject.split(":");
    const name = rest.join(":");
    const step = $("curve-step").value;
    const q = encodeURIComponent;
    let doc = await call(errors, "curve", `curve?${kind}=${q(name)}&day=${q(day)}&step=${q(step)}`,
      { optional: true, soft404: true });
    let source = `mean power per ${step} bucket, summed over meters`;
    if (doc === ABSENT && kind === "meter") { // an older daemon: the meter's own power readings
      const since = siteMidnight(day);
      const got = await call(errors, "readings", `meters/${q(name)}/readings?quantity=power.active.total`
        + `&since=${q(since)}&limit=10000`);
      doc = usable(got) ? { points: got.readings.map((r) => ({ at: r.timestamp, kw: r.value, meters: 1 })) } : got;
      source = "each power reading (this daemon has no /api/v1/curve)";
    }
    if (doc === ABSENT) return setCurve(chart, [], "This daemon does not serve /api/v1/curve.");
    if (doc instanceof NotFound) return setCurve(chart, [], `No curve for ${subject.replace(":", " ")}: ${doc.message}.`);
    if (doc === FAILED) return setCurve(chart, null, "The curve could not be read (see the banner).");
    const points = (doc.points || []).map((p) => ({ x: new Date(p.at).getTime(), y: Number(p.kw), meters: p.meters }))
      .filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
    const meterCounts = kind === "unit" ? points.map((p) => ({ x: p.x, y: p.meters })) : [];
    setCurve(chart, points, points.length
      ? `${subject.replace(":", " ")} · ${points.length} point${points.length === 1 ? "" : "s"} · ${source}`
      : `No power readings for ${subject.replace(":", " ")} today yet.`, meterCounts, (doc.step_seconds || 0) * 1000);
  }

  function curveConfig() {
    return {
      type: "line",
      data: { datasets: [
        { label: "kW", data: [], borderColor: COLORS.line, backgroundColor: COLORS.fill, fill: true,
          pointRadius: 2, borderWidth: 2, tension: 0.2, yAxisID: "y" },
        { label: "meters", data: [], borderColor: COLORS.meters, borderDash: [4, 4], pointRadius: 0,
          borderWidth: 1, stepped: true, yAxisID: "y1", hidden: true },
      ] },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false, parsing: false, normalized: true,
        interaction: { mode: "nearest", intersect: false, axis: "x" },
        scales: {
          x: { type: "linear", ticks: { callback: (v) => siteClock(v, false), maxTicksLimit: 13 },
            title: { display: true, text: zoneLabel() } },
          y: { beginAtZero: true, title: { display: true, text: "kW" } },
          y1: { position: "right", beginAtZero: true, display: "auto", grid: { drawOnChartArea: false },
            title: { display: true, text: "meters" }, ticks: { precision: 0 } },
        },
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: { title: (items) => items.length ? siteWhen(new Date(items[0].parsed.x).toISOString()) : "" } },
        },
      },
    };
  }

  /* The time axis: a bucket either side of the data, ticks on whole minutes or hours of the site's
   * clock (counted from a site midnight: the zone's offset is taken off before rounding). */
  function timeAxis(axis, points, stepMs) {
    if (!points.length) {
      axis.min = axis.max = axis.ticks.stepSize = undefined;
      return;
    }
    const pad = stepMs || 60e3;
    const first = points[0].x - pad;
    const last = points[points.length - 1].x + pad;
    const minute = 60e3;
    let tick = 480 * minute;
    for (const step of [1, 2, 5, 10, 15, 30, 60, 120, 240]) {
      if ((last - first) / (step * minute) <= 10) {
        tick = step * minute;
        break;
      }
    }
    const off = offsetMs(first);
    axis.min = Math.floor((first + off) / tick) * tick - off;
    axis.max = Math.ceil((last + off) / tick) * tick - off;
    axis.ticks.stepSize = tick;
  }

  function setCurve(chart, points, note, meterCounts, stepMs) {
    if (points !== null) {
      chart.data.datasets[0].data = points;
      chart.data.datasets[0].pointRadius = points.length < 20 ? 4 : 2; // a lone point stays visible
      chart.data.datasets[1].data = meterCounts || [];
      chart.data.datasets[1].hidden = !(meterCounts && meterCounts.length);
      timeAxis(chart.options.scales.x, points, stepMs);
      chart.update("none");
      document.body.dataset.curvePoints = String(points.length);
    }
    setText("curve-note", note);
  }

  async function drawEnergy(errors, day, meters) {
    setText("energy-day", day);
    const chart = chartOf("energy", "energy-chart", energyConfig());
    const by = $("energy-by").value;
    const q = encodeURIComponent;
    const doc = await call(errors, "energy", `energy?period=${q(day)}&by=${q(by)}`, { optional: true });
    if (doc === FAILED) return setText("energy-note", "Energy could not be read (see the banner).");
    let bars;
    let note;
    if (usable(doc) && doc.length) {
      bars = doc.map((row) => ({ key: row.key, kwh: Number(row.kwh) }));
      note = `kWh used today (${state.zone}) by ${$("energy-by").selectedOptions[0].textContent}, from the daily frozen registers`;
    } else {
      bars = await registerEnergy(errors, day, meters);
      note = (doc === ABSENT ? "This daemon does not serve /api/v1/energy"
        : doc instanceof NotFound ? `Energy statistics are not available here (${doc.message})` : "No topology configured")
        + ": kWh imported today by meter group, from the meters' energy registers (latest − first reading today).";
    }
    chart.data.labels = bars.map((b) => b.key);
    chart.data.datasets[0].data = bars.map((b) => b.kwh);
    chart.data.datasets[0].backgroundColor = bars.map((_, i) => COLORS.bars[i % COLORS.bars.length]);
    chart.update("none");
    document.body.dataset.energyBars = String(bars.length);
    setText("energy-note", bars.length ? note : `${note} Nothing read yet today.`);
  }

  /* Today's import per meter group without topology: latest register minus today's first. */
  async function registerEnergy(errors, day, meters) {
    const quantity = "energy.active.import.total";
    const since = siteMidnight(day);
    const q = encodeURIComponent;
    const withEnergy = meters.filter((m) => (m.latest || {})[quantity]);
    await Promise.all(withEnergy.map(async (m) => {
      const key = `${day}|${m.address}`;
      if (state.firstToday.has(key)) return;
      const got = await call(errors, "readings", `meters/${q(m.address)}/readings?quantity=${q(quantity)}`
        + `&since=${q(since)}&limit=1`);
      if (usable(got) && got.readings.length) state.firstToday.set(key, Number(got.readings[0].value));
    }));
    const sums = new Map();
    for (const m of withEnergy) {
      const first = state.firstToday.get(`${day}|${m.address}`);
      const latest = Number(m.latest[quantity].value);
      if (first === undefined || !Number.isFinite(latest) || siteDay(new Date(m.latest[quantity].timestamp)) !== day) continue;
      const group = m.group || "(no group)";
      sums.set(group, (sums.get(group) || 0) + Math.max(0, latest - first));
    }
    return [...sums.entries()].sort().map(([key, kwh]) => ({ key, kwh: Math.round(kwh * 1000) / 1000 }));
  }

  function energyConfig() {
    return {
      type: "bar",
      data: { labels: [], datasets: [{ label: "kWh", data: [], borderWidth: 0 }] },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        scales: { y: { beginAtZero: true, title: { display: true, text: "kWh" } } },
        plugins: { legend: { display: false } },
      },
    };
  }

  // --- start -----------------------------------------------------------------------------------

  function start() {
    if (typeof Chart !== "undefined") {
      Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
      Chart.defaults.color = "#3b434b";
    }
    const step = params.get("step");
    if (step) {
      const select = $("curve-step");
      if (![...select.options].some((o) => o.value === step)) select.appendChild(el("option", { value: step }, step));
      select.value = step;
    }
    const by = params.get("by");
    if (["unit", "group", "industry"].includes(by)) $("energy-by").value = by;
    setText("refresh-note", `refresh every ${refreshSeconds} s`);

    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token-input").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      state.token = token;
      $("token-form").hidden = true;
      showBanner([]);
      refresh();
    });
    $("change-token").addEventListener("click", () => askToken(""));
    $("pause").addEventListener("click", () => {
      state.paused = !state.paused;
      $("pause").textContent = state.paused ? "Resume" : "Pause";
      if (state.paused) stop();
      else refresh();
    });
    for (const id of ["curve-subject", "curve-step", "energy-by"]) $(id).addEventListener("change", () => refresh());

    takeToken();
    if (state.token) refresh();
    else askToken("");
  }

  start();
})();
