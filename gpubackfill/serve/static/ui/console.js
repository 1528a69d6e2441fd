// gpubackfill console: actions with the API token, and a job page's live part.
"use strict";
const TOKEN_KEY = "gpubackfill-api-token";

function say(text, bad) {
  const el = document.getElementById("msg");
  if (!el) return;
  el.textContent = text;  // never innerHTML: messages quote user input
  el.className = bad ? "bad" : "";
}

// POST with the token kept for this tab; on a 401 ask for it once and retry.
async function post(url, body) {
  let token = sessionStorage.getItem(TOKEN_KEY);
  for (let attempt = 0; attempt < 2; attempt++) {
    const headers = {"Content-Type": "application/json"};
    if (token) headers["Authorization"] = "Bearer " + token;
    const r = await fetch(url, {method: "POST", headers: headers,
                                body: body === undefined ? "{}" : JSON.stringify(body)});
    if (r.status !== 401) return r;
    sessionStorage.removeItem(TOKEN_KEY);
    if (attempt > 0) return r;
    token = window.prompt("API token (GPUBACKFILL_API_TOKEN), kept for this tab:");
    if (!token) return r;
    sessionStorage.setItem(TOKEN_KEY, token);
  }
}

async function detail(r) {
  try {
    const body = await r.json();
    if (r.ok) return body;
    const d = body.detail;
    if (Array.isArray(d)) return d.map(e => (e.loc || []).join(".") + ": " + e.msg).join("; ");
    return String(d);
  } catch (e) {
    return r.statusText;
  }
}

function describe(url, body) {
  if (body.requeued !== undefined) {
    const jobs = Object.entries(body.requeued);
    if (!jobs.length) return "nothing to retry";
    const again = body.run_again || [];
    return jobs.map(([j, n]) => `job ${j}: ${n} chunk(s) re-queued; ` +
      (again.includes(j) ? "serve runs the job again" : `its driver picks them up, or run it with \`gpubackfill execute ${j}\``)).join("\n");
  }
  if (body.purged !== undefined) return `${body.purged} entr${body.purged === 1 ? "y" : "ies"} purged`;
  if (body.jobs !== undefined) {
    if (!body.jobs.length) return "everything is current: nothing to update";
    return body.jobs.map(j => `job ${j.job_id} queued: ${j.chunks} chunks (${j.new_chunks} new, ${j.stale_chunks} stale)`).join("\n");
  }
  if (body.status !== undefined) return `job ${body.job_id}: ${body.status.replace(/_/g, " ")}`;
  return JSON.stringify(body);
}

async function act(button) {
  if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
  const body = button.dataset.body ? JSON.parse(button.dataset.body) : undefined;
  const r = await post(button.dataset.post, body);
  const d = await detail(r);
  if (r.ok) say(describe(button.dataset.post, d), false);
  else say(`${r.status}: ${d}`, true);
  refresh();
}

document.addEventListener("click", ev => {
  const b = ev.target.closest("button[data-post]");
  if (b) { ev.preventDefault(); act(b); }
});

// The live part of a job page: re-rendered by the server every 1.5 s
// until the job is final.
let timer = null;
async function refresh() {
  const box = document.getElementById("live");
  if (!box) return;
  try {
    const r = await fetch(box.dataset.src, {cache: "no-store"});
    if (r.ok) box.innerHTML = await r.text();  // HTML rendered (and escaped) by the server
  } catch (e) { /* a restart of serve: try again at the next tick */ }
  schedule();
}
function schedule() {
  const live = document.querySelector("#live .live");
  if (timer) clearTimeout(timer);
  timer = null;
  if (live && live.dataset.final !== "1") timer = setTimeout(refresh, 1500);
}
schedule();

// The new-job form: a dry run, then queue.
function jobBody(form) {
  const f = new FormData(form);
  const list = v => v.split(",").map(s => s.trim()).filter(Boolean);
  const body = {instrument: list(f.get("instrument")), granularity: list(f.get("granularity")),
                priority: f.get("priority"), force: f.get("force") === "on"};
  for (const k of ["start_date", "end_date"]) if (f.get(k)) body[k] = f.get(k);
  for (const k of ["chunk_size", "workers"]) if (f.get(k)) body[k] = Number(f.get(k));
  if (f.get("labels")) body.labels = list(f.get("labels"));
  if (f.get("params").trim()) body.params = JSON.parse(f.get("params"));
  return body;
}
const form = document.getElementById("new-job");
if (form) {
  const fill = (id, text) => { document.getElementById(id).textContent = text; };
  document.getElementById("preview").addEventListener("click", async () => {
    let body;
    try { body = jobBody(form); } catch (e) { say("parameters: " + e.message, true); return; }
    const r = await fetch("/ui/api/preview", {method: "POST", headers: {"Content-Type": "application/json"},
                                               body: JSON.stringify(body)});
    const d = await detail(r);
    if (!r.ok) { say(`${r.status}: ${d}`, true); document.getElementById("plan").hidden = true; return; }
    say("preview: nothing queued yet", false);
    fill("plan-series", d.series.join(", "));
    fill("plan-skipped", d.skipped.length ? d.skipped.join(", ") : "none");
    fill("plan-chunks", `${d.chunks.toLocaleString("en")} chunks of up to ${d.chunk_size.toLocaleString("en")} candles`);
    fill("plan-candles", `${d.candles.toLocaleString("en")} candles`);
    fill("plan-range", `${d.start.replace("T", " ").replace("Z", " UTC")} – ${d.end.replace("T", " ").replace("Z", " UTC")}`);
    fill("plan-set", `${d.label_set} (${d.label_set_exists ? "exists already" : "new"})`);
    document.getElementById("plan").hidden = false;
  });
  document.getElementById("queue").addEventListener("click", async () => {
    let body;
    try { body = jobBody(form); } catch (e) { say("parameters: " + e.message, true); return; }
    const r = await post("/jobs", body);
    const d = await detail(r);
    if (!r.ok) { say(`${r.status}: ${d}`, true); return; }
    window.location.href = "/ui/jobs/" + encodeURIComponent(d.job_id);
  });
}
