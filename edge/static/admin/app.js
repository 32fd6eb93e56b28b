// The business dashboard: signs in through the REST API, then draws the
// analytics reports. No build step and no third-party code; every value is
// written with textContent, never as HTML.
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "agora.dashboard.token";
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function call(path, options = {}) {
  const headers = { "content-type": "application/json" };
  if (token()) headers.authorization = "Bearer " + token();
  const res = await fetch(API + path, { ...options, headers });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = new Error(body.message || res.statusText);
    err.status = res.status;
    throw err;
  }
  return body;
}

function show(signedIn) {
  $("signin").hidden = signedIn;
  $("dashboard").hidden = !signedIn;
  $("signout").hidden = !signedIn;
  $("refresh").hidden = !signedIn;
}

function isoDay(d) {
  return d.toISOString().slice(0, 10);
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function svgEl(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

// A bar chart of [{date, value}], one bar per day.
function barChart(target, points, format = (v) => String(v)) {
  const box = $(target);
  box.replaceChildren();
  const width = 400, height = 160, left = 36, bottom = 18;
  const max = Math.max(1, ...points.map((p) => p.value));
  const svg = svgEl("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img" });
  const plotW = width - left, plotH = height - bottom - 6;
  svg.appendChild(svgEl("line", { x1: left, x2: width, y1: 6 + plotH, y2: 6 + plotH }));
  const top = svgEl("text", { x: 0, y: 12 });
  top.textContent = format(max);
  svg.appendChild(top);
  const step = plotW / Math.max(points.length, 1);
  points.forEach((p, i) => {
    const h = (p.value / max) * plotH;
    const bar = svgEl("rect", {
      class: "bar",
      x: left + i * step + step * 0.1,
      y: 6 + plotH - h,
      width: step * 0.8,
      height: Math.max(h, 0),
      "data-date": p.date,
      "data-value": p.value,
    });
    const title = svgEl("title", {});
    title.textContent = `${p.date}: ${format(p.value)}`;
    bar.appendChild(title);
    svg.appendChild(bar);
  });
  if (points.length) {
    for (const [i, anchor] of [[0, "start"], [points.length - 1, "end"]]) {
      const label = svgEl("text", { x: anchor === "start" ? left : width, y: height - 4, "text-anchor": anchor });
      label.textContent = points[i].date.slice(5);
      svg.appendChild(label);
    }
  }
  box.appendChild(svg);
}

async function metric(name, from, to) {
  const r = await call(`/analytics/metrics/daily?metric=${name}&from=${from}&to=${to}`);
  return r.points || [];
}

function money(minor, currency) {
  return `${(Number(minor) / 100).toFixed(2)} ${currency || ""}`.trim();
}

async function load() {
  $("load-error").textContent = "";
  const days = Number($("days").value);
  const to = new Date();
  const from = new Date(to.getTime() - (days - 1) * 86400000);
  const [a, b] = [isoDay(from), isoDay(to)];
  try {
    const [signups, revenue, views, active, top, funnel, cohorts] = await Promise.all([
      metric("signups", a, b),
      metric("revenue", a, b),
      metric("page_views", a, b),
      metric("active_users", a, b),
      call(`/analytics/reports/top-products?days=${days}&by=revenue&limit=10`),
      call(`/analytics/reports/funnel?days=${days}`),
      call(`/analytics/reports/cohorts?weeks=8`),
    ]);
    barChart("chart-signups", signups);
    barChart("chart-page_views", views);
    barChart("chart-active_users", active);
    // Revenue: the currency with the most, one series.
    const byCurrency = {};
    for (const p of revenue) {
      const c = (p.dimensions && p.dimensions.currency) || "";
      (byCurrency[c] = byCurrency[c] || []).push(p);
    }
    const currency = Object.keys(byCurrency).sort((x, y) =>
      byCurrency[y].reduce((s, p) => s + p.value, 0) - byCurrency[x].reduce((s, p) => s + p.value, 0))[0] || "";
    $("revenue-currency").textContent = currency ? `(${currency})` : "";
    barChart("chart-revenue", byCurrency[currency] || [], (v) => money(v, currency));
    drawTop(top.products || []);
    drawFunnel(funnel.steps || []);
    drawCohorts(cohorts.cohorts || []);
  } catch (e) {
    if (e.status === 401) return signOut("Your session ended; sign in again.");
    $("load-error").textContent =
      e.status === 403 ? "The dashboard is for staff and administrators." : `Cannot load the reports: ${e.message}`;
  }
}

function drawTop(products) {
  const body = $("top-products").tBodies[0];
  body.replaceChildren();
  if (!products.length) {
    const row = body.insertRow();
    const cell = row.appendChild(el("td", "No sales yet.", "empty"));
    cell.colSpan = 4;
    return;
  }
  for (const p of products) {
    const row = body.insertRow();
    const cell = row.appendChild(el("td", "", "id"));
    const name = cell.appendChild(el("span", ""));
    cell.appendChild(el("small", p.productId));
    cell.dataset.productId = p.productId;
    // The catalog names it (public); a removed product keeps its id only.
    call(`/products/${encodeURIComponent(p.productId)}`)
      .then((product) => { name.textContent = product.name || ""; })
      .catch(() => {});
    row.appendChild(el("td", String(p.views || 0)));
    row.appendChild(el("td", String(p.unitsSold || 0)));
    row.appendChild(el("td", money(p.revenueMinor || 0, p.currency)));
  }
}

function drawFunnel(steps) {
  const box = $("funnel");
  box.replaceChildren();
  for (const s of steps) {
    const row = el("div", undefined, "step");
    row.appendChild(el("span", s.name));
    const track = row.appendChild(el("div", undefined, "track"));
    const fill = track.appendChild(el("div", undefined, "fill"));
    fill.style.width = `${Math.round((s.ratio || 0) * 100)}%`;
    row.appendChild(el("span", `${s.users || 0} (${Math.round((s.ratio || 0) * 100)}%)`));
    box.appendChild(row);
  }
}

function drawCohorts(cohorts) {
  const table = $("cohorts");
  const weeks = Math.max(1, ...cohorts.map((c) => (c.active || []).length));
  const head = table.tHead;
  head.replaceChildren();
  const hr = head.insertRow();
  hr.appendChild(el("th", "Signup week"));
  hr.appendChild(el("th", "Users"));
  for (let w = 0; w < weeks; w++) hr.appendChild(el("th", `Week ${w}`));
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const c of cohorts) {
    const row = body.insertRow();
    row.appendChild(el("td", c.weekStart));
    row.appendChild(el("td", String(c.users || 0)));
    for (let w = 0; w < weeks; w++) {
      const n = Number((c.active || [])[w] || 0);
      const users = Number(c.users || 0);
      const text = w < (c.active || []).length ? (users ? `${Math.round((n / users) * 100)}%` : String(n)) : "";
      row.appendChild(el("td", text));
    }
  }
}

function signOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  $("who").textContent = "";
  $("signin-error").textContent = message;
  show(false);
}

async function signIn(event) {
  event.preventDefault();
  $("signin-error").textContent = "";
  try {
    const r = await call("/auth/login", {
      method: "POST",
      body: JSON.stringify({ email: $("email").value, password: $("password").value }),
    });
    sessionStorage.setItem(TOKEN_KEY, r.tokens.accessToken);
    $("password").value = "";
    await start();
  } catch (e) {
    $("signin-error").textContent = e.status === 401 ? "Wrong email or password." : e.message;
  }
}

async function start() {
  try {
    const me = await call("/users/me");
    $("who").textContent = me.email || "";
  } catch (e) {
    return signOut(e.status === 401 ? "" : e.message);
  }
  show(true);
  await load();
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut());
  $("refresh").addEventListener("click", load);
  $("days").addEventListener("change", load);
  if (token()) start();
  else show(false);
  // Rollups update within seconds; keep the page current.
  setInterval(() => { if (token()) load(); }, 30000);
});
