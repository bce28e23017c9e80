// The live operator page (streams/api/ops_page.py): fetches /ops/data every few
// seconds and draws it with plain DOM and SVG (no build step, nothing fetched
// from elsewhere). The service key comes from the URL's #key=... (dropped from
// the address bar at once, kept for this tab only) or from the form.
"use strict";

const EVERY_MS = Number(new URLSearchParams(location.search).get("every") || 3000);
const SVG = "http://www.w3.org/2000/svg";
const FUNNEL_STEPS = [
  ["claimed", "claimed", "--blue"],
  ["in_progress", "in progress", "--amber"],
  ["completed_ever", "completed", "--green"],
  ["rewards_granted", "rewarded", "--green"],
  ["rewards_revoked", "revoked", "--red"],
];
const FUNNEL_NOTES = [
  ["claims_rejected", "claims rejected"],
  ["completed", "completed now"],
  ["expired", "expired"],
  ["rewards_rejected", "rewards rejected"],
];

const $ = (id) => document.getElementById(id);
const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const colour = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

function takeKeyFromHash() {
  const match = location.hash.match(/key=([^&]+)/);
  if (match) {
    sessionStorage.setItem("taskstream-service-key", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("taskstream-service-key");
}

function askForKey(message) {
  setStatus("need-key", message);
  $("key-form").setAttribute("data-open", "");
}

function setStatus(state, text) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
}

function el(tag, attrs = {}, ...children) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function figure(label, field, value) {
  return el("div", {}, label, el("b", { "data-field": field, "data-value": value ?? "" }, fmt(value)));
}

// ------------------------------------------------------------------ funnels

function drawFunnels(funnels) {
  const box = $("funnel-cards");
  box.replaceChildren();
  const templates = Object.keys(funnels);
  if (!templates.length) box.append(el("p", { class: "empty" }, "no task event read yet"));
  for (const template of templates) {
    const counts = funnels[template];
    const top = Math.max(1, ...FUNNEL_STEPS.map(([field]) => counts[field]));
    const rowHeight = 22, width = 400, labelWidth = 90;
    const svg = el("svg:svg", {
      class: "chart", "data-chart": "funnel", viewBox: `0 0 ${width} ${FUNNEL_STEPS.length * rowHeight}`,
    });
    FUNNEL_STEPS.forEach(([field, label, tone], i) => {
      const y = i * rowHeight;
      const barWidth = ((width - labelWidth - 60) * counts[field]) / top;
      svg.append(
        el("svg:text", { x: 0, y: y + 15 }, label),
        el("svg:rect", {
          x: labelWidth, y: y + 4, width: Math.max(barWidth, 1), height: rowHeight - 8,
          rx: 3, fill: colour(tone), "data-field": field, "data-value": counts[field],
        }),
        el("svg:text", { x: labelWidth + barWidth + 6, y: y + 15 }, fmt(counts[field])),
      );
    });
    svg.dataset.drawn = "1";
    const notes = el("div", { class: "figures" },
      ...FUNNEL_NOTES.map(([field, label]) => figure(label, field, counts[field])));
    box.append(el("div", { class: "card", "data-template": template }, el("h3", {}, template), svg, notes));
  }
}

// -------------------------------------------------------------------- pools

function burnDown(pool) {
  // Remaining units over event time, from the rewards log.
  const series = pool.log ? pool.log.series : [];
  const width = 400, height = 130, left = 52, bottom = 18;
  const svg = el("svg:svg", { class: "chart", "data-chart": "burndown", viewBox: `0 0 ${width} ${height}` });
  const total = pool.total || Math.max(1, ...series.map(([, issued]) => issued));
  if (!series.length) {
    svg.append(el("svg:text", { x: left, y: height / 2 }, "nothing paid yet"));
  } else {
    const first = series[0][0], last = series[series.length - 1][0];
    const span = Math.max(1, last - first);
    const x = (t) => left + ((width - left - 8) * (t - first)) / span;
    const y = (units) => 6 + ((height - bottom - 12) * (1 - units / total));
    // A step line: what remained after each slice of event time, held to the
    // right edge (the last slice is where the log ends for now).
    let path = `M ${x(first)} ${y(total)}`;
    for (const [t, issued] of series) path += ` H ${x(t)} V ${y(total - issued)}`;
    path += ` H ${width - 8}`;
    svg.append(
      el("svg:line", { x1: left, x2: width - 8, y1: y(0), y2: y(0), stroke: colour("--line") }),
      el("svg:path", { d: path, fill: "none", stroke: colour("--blue"), "stroke-width": 2 }),
      el("svg:text", { x: 0, y: y(total) + 4 }, fmt(total)),
      el("svg:text", { x: 0, y: y(0) + 4 }, "0"),
      el("svg:text", { x: left, y: height - 3 }, new Date(first / 1000).toISOString().slice(0, 19) + "Z"),
      el("svg:text", { x: width - 8, y: height - 3, "text-anchor": "end" },
        new Date(last / 1000).toISOString().slice(0, 19) + "Z"),
    );
  }
  svg.dataset.drawn = "1";
  return svg;
}

function bucketBars(pool, partitions) {
  const width = 400, height = 90, bottom = 16;
  const svg = el("svg:svg", { class: "chart", "data-chart": "buckets", viewBox: `0 0 ${width} ${height}` });
  const byPartition = Object.fromEntries((pool.buckets || []).map((b) => [b.partition, b]));
  const top = Math.max(1, ...(pool.buckets || []).map((b) => b.balance));
  const slot = width / Math.max(1, partitions);
  for (let p = 0; p < partitions; p++) {
    const bucket = byPartition[p];
    const balance = bucket ? bucket.balance : 0;
    const barHeight = ((height - bottom - 14) * balance) / top;
    const rect = el("svg:rect", {
      x: p * slot + 4, y: height - bottom - barHeight, width: slot - 8, height: Math.max(barHeight, 1),
      rx: 2, fill: colour(bucket && bucket.dry_from ? "--red" : "--green"),
      "data-partition": p, "data-value": balance,
    });
    rect.append(el("svg:title", {},
      `partition ${p}: holds ${fmt(balance)}, paid ${fmt(bucket ? bucket.issued : 0)}`));
    svg.append(
      rect,
      el("svg:text", { x: p * slot + slot / 2, y: height - 3, "text-anchor": "middle" }, `p${p}`),
      el("svg:text", { x: p * slot + slot / 2, y: height - bottom - barHeight - 3, "text-anchor": "middle" },
        fmt(balance)),
    );
  }
  svg.dataset.drawn = "1";
  return svg;
}

function drawPools(pools, partitions) {
  const box = $("pool-cards");
  box.replaceChildren();
  if (!pools.length) box.append(el("p", { class: "empty" }, "no pool in the catalog"));
  for (const pool of pools) {
    const card = el("div", { class: "card", "data-pool": pool.pool_id });
    let badge;
    if (!pool.seen) badge = el("span", { class: "badge" }, "not used yet");
    else if (pool.balanced === null) badge = el("span", { class: "badge bad" }, "partitions missing: not checked");
    else if (pool.balanced) badge = el("span", { class: "badge" }, "adds up");
    else badge = el("span", { class: "badge bad" }, "does not add up (run `pools status` once idle)");
    card.append(el("h3", {}, `${pool.pool_id} `, pool.mode ? `(${pool.mode}) ` : "", badge));
    card.append(el("div", { class: "figures" },
      figure("total", "total", pool.total),
      figure("issued", "issued", pool.issued),
      figure("remaining", "remaining", pool.remaining),
      figure("master holds", "master", pool.master),
      figure("in buckets", "in_buckets", pool.in_buckets),
      figure("in flight", "in_flight", pool.in_flight),
      figure("requests refused", "requests_refused", pool.requests_refused),
      figure("rewards rejected", "rewards_rejected", pool.log ? pool.log.rejected : 0),
    ));
    card.append(el("div", { class: "caption" }, "remaining over event time (from the rewards log)"));
    card.append(burnDown(pool));
    card.append(el("div", { class: "caption" },
      "what each partition's bucket holds now (red: told the pool is dry)"));
    card.append(bucketBars(pool, partitions));
    box.append(card);
  }
}

// ---------------------------------------------------------------------- lag

function drawLag(rows) {
  const roles = rows.length ? Object.keys(rows[0].lag) : [];
  const table = $("lag-table");
  const most = Math.max(1, ...rows.flatMap((row) => roles.map((r) => row.lag[r] || 0)));
  table.replaceChildren(el("tr", {},
    el("th", {}, "partition"), ...roles.map((r) => el("th", {}, r)), el("th", {}, "held"),
    el("th", { class: "text" }, "owner")));
  for (const row of rows) {
    const cells = roles.map((role) => {
      const lag = row.lag[role];
      const shade = lag ? `rgba(210, 63, 63, ${0.08 + (0.5 * lag) / most})` : "";
      return el("td", { class: lag === null ? "unknown" : "", style: shade ? `background:${shade}` : null,
        "data-role": role, "data-value": lag ?? "" }, lag === null ? "?" : fmt(lag));
    });
    table.append(el("tr", { "data-partition": row.partition },
      el("td", {}, String(row.partition)), ...cells, el("td", {}, fmt(row.held)),
      el("td", { class: "text" }, row.owner || "no owner (rebalancing)")));
  }
}

// ------------------------------------------------------------- dead letters

function drawDeadLetters(dead) {
  const table = $("dead-table");
  table.replaceChildren(el("tr", {},
    el("th", {}, "appended"), el("th", { class: "text" }, "reason"), el("th", { class: "text" }, "source"),
    el("th", { class: "text" }, "payload")));
  for (const letter of dead.latest) {
    table.append(el("tr", { "data-dead-letter": letter.offset },
      el("td", {}, letter.at_ms ? new Date(letter.at_ms).toISOString().slice(0, 19) + "Z" : "–"),
      el("td", { class: "text" }, letter.reason), el("td", { class: "text" }, letter.source),
      el("td", { class: "text" }, letter.payload)));
  }
  if (!dead.latest.length) {
    table.append(el("tr", {}, el("td", { class: "text empty", colspan: 4 }, "none")));
  }
  $("dead").querySelector("h2").textContent = `Latest dead letters (${fmt(dead.total)} in all)`;
}

// ------------------------------------------------------------------- loop

function summary(doc) {
  const parts = [`updated ${new Date().toISOString().slice(11, 19)}Z`, `generation ${doc.generation}`];
  const log = doc.log;
  parts.push(log.caught_up ? `log: ${fmt(log.records)} events` : `reading the log: ${fmt(log.read)} read, ${fmt(log.behind)} to go`);
  if (log.error) parts.push(log.error);
  for (const [url, why] of Object.entries(doc.unreachable)) parts.push(`${url} ${why}`);
  if (doc.unknown_partitions.length) parts.push(`partitions not known now: ${doc.unknown_partitions.join(", ")}`);
  return parts.join(" · ");
}

async function refresh() {
  const key = takeKeyFromHash();
  if (!key) return askForKey("enter the service key (TASKSTREAM_SERVICE_KEY)");
  let answer;
  try {
    answer = await fetch("/ops/data", { headers: { "X-Service-Key": key }, cache: "no-store" });
  } catch (error) {
    setStatus("error", `the API process did not answer (${error}); retrying`);
    return schedule();
  }
  if (answer.status === 401 || answer.status === 403) {
    sessionStorage.removeItem("taskstream-service-key");
    return askForKey("that service key was refused; enter it again");
  }
  if (!answer.ok) {
    const body = await answer.json().catch(() => ({}));
    setStatus("error", `${answer.status}: ${body.error || answer.statusText}; retrying`);
    return schedule();
  }
  const doc = await answer.json();
  drawFunnels(doc.funnels);
  drawPools(doc.pools, doc.partitions.length);
  drawLag(doc.partitions);
  drawDeadLetters(doc.dead_letters);
  const healthy = doc.log.caught_up && !doc.log.error && !Object.keys(doc.unreachable).length
    && !doc.unknown_partitions.length;
  setStatus(healthy ? "ok" : "partial", summary(doc));
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  schedule();
}

let timer = null;
function schedule() {
  clearTimeout(timer);
  timer = setTimeout(refresh, EVERY_MS);
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("taskstream-service-key", $("key").value);
  $("key-form").removeAttribute("data-open");
  setStatus("loading", "loading…");
  refresh();
});

refresh();
