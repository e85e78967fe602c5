// The Switchyard dashboard: one GET /v1/dashboard per refresh. Rates, the
// error ratio and p99 come from two samples of the cumulative figures the
// server sends (as Prometheus' rate() and histogram_quantile() would).
"use strict";

const REFRESH_MS = 2000;
const WINDOW_MS = 30000;
const TOKEN_KEY = "switchyard-token";
const samples = []; // [{ at: ms, traffic: { service: traffic } }], oldest first

function $(id) { return document.getElementById(id); }

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function headers() {
  const token = $("token").value;
  return token ? { "Authorization": "Bearer " + token } : {};
}

function duration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  if (d > 0) return d + "d " + h + "h";
  if (h > 0) return h + "h " + m + "m";
  if (m > 0) return m + "m " + (s % 60) + "s";
  return s + "s";
}

function millis(seconds) {
  if (seconds === null || !isFinite(seconds)) return "—";
  return seconds < 1 ? (seconds * 1000).toFixed(seconds < 0.01 ? 1 : 0) + " ms" : seconds.toFixed(2) + " s";
}

// The q-quantile of the requests between two cumulative bucket lists.
function quantile(q, now, before) {
  const buckets = now.map((b, i) => ({ le: b.le === null ? Infinity : b.le, count: b.count - (before ? before[i].count : 0) }));
  if (buckets.length === 0) return null;
  const total = buckets[buckets.length - 1].count;
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0, below = 0;
  for (const b of buckets) {
    if (b.count >= rank) {
      if (b.le === Infinity) return lower; // beyond the last finite bucket
      const inBucket = b.count - below;
      return inBucket > 0 ? lower + (b.le - lower) * (rank - below) / inBucket : b.le;
    }
    lower = b.le; below = b.count;
  }
  return null;
}

// Rate, error ratio and p99 of one service over the sample window.
function figures(name) {
  const latest = samples[samples.length - 1];
  const oldest = samples.find(s => latest.at - s.at <= WINDOW_MS && s !== latest);
  const now = latest.traffic[name];
  if (!oldest || !now) return null;
  const then = oldest.traffic[name] || { requests: 0, errors: 0, duration: { buckets: now.duration.buckets.map(b => ({ le: b.le, count: 0 })) } };
  const seconds = (latest.at - oldest.at) / 1000;
  const requests = now.requests - then.requests;
  const errors = now.errors - then.errors;
  if (requests < 0 || errors < 0) return null; // counters restarted (a new process): wait for the next sample
  const sameBuckets = then.duration.buckets.length === now.duration.buckets.length;
  return {
    seconds,
    rate: seconds > 0 ? requests / seconds : 0,
    errorRatio: requests > 0 ? errors / requests : null,
    p99: quantile(0.99, now.duration.buckets, sameBuckets ? then.duration.buckets : null),
  };
}

function healthBadge(healthy, total) {
  if (total > 0 && healthy === total) return ["ok", "healthy"];
  if (healthy > 0) return ["degraded", "degraded"];
  return ["down", total === 0 ? "no instances" : "down"];
}

function figure(value, caption) {
  const box = el("div", null, "figure");
  box.appendChild(el("b", value));
  box.appendChild(el("span", caption));
  return box;
}

function renderService(service) {
  const section = el("section");
  section.dataset.service = service.name;
  const h2 = el("h2", service.name + " ");
  const [level, word] = healthBadge(service.healthy, service.instances.length);
  const badge = el("span", word + " · " + service.healthy + "/" + service.instances.length, "badge badge-" + level);
  badge.dataset.level = level;
  h2.appendChild(badge);
  h2.appendChild(document.createTextNode(" "));
  h2.appendChild(el("span", service.balance, "tag"));
  section.appendChild(h2);

  const f = figures(service.name);
  const row = el("div", null, "figures");
  row.appendChild(figure(f ? f.rate.toFixed(1) + " req/s" : "—", "request rate"));
  row.appendChild(figure(f && f.errorRatio !== null ? (f.errorRatio * 100).toFixed(1) + " %" : "—", "5xx ratio"));
  row.appendChild(figure(f ? millis(f.p99) : "—", "p99 latency"));
  row.appendChild(figure(String(service.traffic.requests), "requests since start"));
  section.appendChild(row);

  const table = el("table");
  const head = table.createTHead().insertRow();
  for (const h of ["id", "address", "weight", "source", "health", "ejected", "draining", "active", "expires"]) head.appendChild(el("th", h));
  const body = table.createTBody();
  for (const i of service.instances) {
    const tr = body.insertRow();
    tr.dataset.instance = i.id;
    tr.appendChild(el("td", i.id));
    tr.appendChild(el("td", i.address));
    tr.appendChild(el("td", String(i.weight)));
    tr.appendChild(el("td", i.source));
    tr.appendChild(el("td", i.health, i.health));
    tr.appendChild(el("td", i.ejected ? "yes" : "no", i.ejected ? "unhealthy" : ""));
    tr.appendChild(el("td", i.draining ? "yes" : "no", i.draining ? "unknown" : ""));
    tr.appendChild(el("td", String(i.active_requests)));
    tr.appendChild(el("td", i.expires_at || "never"));
  }
  if (service.instances.length === 0) {
    const td = el("td", "no instances"); td.colSpan = 9; body.insertRow().appendChild(td);
  }
  section.appendChild(table);
  return section;
}

function renderRoutes(routes) {
  const body = $("routes").tBodies[0];
  body.replaceChildren(...routes.map(r => {
    const tr = el("tr");
    tr.appendChild(el("td", r.host || "any"));
    tr.appendChild(el("td", r.path_prefix));
    const service = el("td", r.service, r.declared ? "" : "unknown");
    if (!r.declared) service.title = "no [services." + r.service + "] table: filled by registrations only";
    tr.appendChild(service);
    tr.appendChild(el("td", r.strip_prefix ? "yes" : "no"));
    return tr;
  }));
  if (routes.length === 0) {
    const td = el("td", "no explicit routes"); td.colSpan = 4; body.insertRow().appendChild(td);
  }
}

function renderHeader(data) {
  $("version").textContent = "version " + data.version;
  $("uptime").textContent = "up " + duration(data.uptime_seconds);
  const reload = $("reload");
  if (data.last_reload) {
    const r = data.last_reload;
    reload.textContent = "last reload " + r.result + " (" + r.trigger + ", " + r.at + ")" + (r.errors.length ? ": " + r.errors.join("; ") : "");
    reload.className = "reload-" + r.result;
  } else {
    reload.textContent = "no reload since start";
    reload.className = "";
  }
  const levels = data.services.map(s => healthBadge(s.healthy, s.instances.length)[0]);
  const worst = levels.includes("down") ? "down" : levels.includes("degraded") ? "degraded" : levels.length ? "ok" : "unknown";
  const status = $("status");
  status.textContent = { ok: "all healthy", degraded: "degraded", down: "service down", unknown: "no services" }[worst];
  status.className = "badge badge-" + worst;
  status.dataset.level = worst;
}

async function refresh() {
  try {
    const resp = await fetch("/v1/dashboard", { headers: headers(), cache: "no-store" });
    const data = await resp.json();
    if (!resp.ok) throw new Error(data.error || resp.statusText);
    const traffic = {};
    for (const s of data.services) traffic[s.name] = s.traffic;
    samples.push({ at: Date.now(), traffic });
    while (samples.length > 1 && samples[samples.length - 1].at - samples[0].at > WINDOW_MS) samples.shift();
    const span = samples.length > 1 ? (samples[samples.length - 1].at - samples[0].at) / 1000 : 0;
    $("window").textContent = span > 0 ? Math.round(span) + " s" : "— (one sample so far)";
    renderHeader(data);
    const root = $("services");
    root.replaceChildren(...data.services.map(renderService));
    if (data.services.length === 0) root.textContent = "No services yet: declare them in the config or register instances.";
    renderRoutes(data.routes);
    $("error").textContent = "";
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    $("error").textContent = "Cannot load the dashboard: " + e.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const token = $("token");
  token.value = sessionStorage.getItem(TOKEN_KEY) || "";
  token.addEventListener("change", () => { sessionStorage.setItem(TOKEN_KEY, token.value); refresh(); });
  refresh();
  setInterval(refresh, REFRESH_MS);
});
