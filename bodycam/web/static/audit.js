// Auditor: the audit log, its chain status, exports.
import { api, clean, esc, flash } from "/static/app.js";

const $ = (id) => document.getElementById(id);
const PAGE = 50;

// ---- chain status: POST /audit/verify, shown first and prominently ----
async function verifyChain() {
  const el = $("chain");
  el.className = "muted";
  el.textContent = "Checking the whole chain…";
  try {
    const v = await api("POST", "/audit/verify");
    if (v.ok) {
      el.className = "ok chain";
      el.innerHTML = `<strong>Audit log intact</strong>: every one of ${esc(v.count)} rows, seals and anchors checks out.`;
    } else {
      el.className = "error chain";
      el.setAttribute("role", "alert");
      el.innerHTML = `<strong>Audit log NOT intact</strong>: ${v.first_bad_id == null ? "" : `first bad row ${esc(v.first_bad_id)}: `}${esc(v.reason)}`;
    }
  } catch (e) {
    el.className = "error chain";
    el.textContent = `Could not verify the chain: ${e.message}`;
  }
}

// ---- rows: GET /audit with the page's filters (the query string), next/previous ----
function filters() {
  const q = new URLSearchParams(window.location.search);
  const f = {};
  for (const k of ["actor", "action", "case", "from", "to"]) f[k] = q.get(k) || "";
  return { f, offset: Math.max(0, parseInt(q.get("offset") || "0", 10) || 0) };
}

function link(f, offset) {
  return "/app/audit?" + new URLSearchParams({ ...clean(f), ...(offset ? { offset: String(offset) } : {}) });
}

function details(d) {
  const text = JSON.stringify(d ?? {});
  return text.length > 300 ? text.slice(0, 300) + "…" : text;
}

async function loadRows() {
  const { f, offset } = filters();
  const body = $("audit-rows").tBodies[0];
  const q = new URLSearchParams({ ...clean(f), limit: String(PAGE), offset: String(offset) });
  let page;
  try { page = await api("GET", `/audit?${q}`); } catch (e) {
    body.innerHTML = `<tr><td colspan="5" class="error">${esc(e.message)}</td></tr>`;
    flash(e.message, "error");
    return;
  }
  body.innerHTML = page.items.map((r) => `<tr data-action="${esc(r.action)}">
    <td>${esc(r.id)}</td><td>${esc(r.at)}</td><td>${esc(r.actor)}</td><td class="action">${esc(r.action)}</td>
    <td class="mono">${esc(details(r.details))}</td></tr>`).join("")
    || '<tr><td colspan="5" class="muted">No rows match these filters.</td></tr>';
  $("range").textContent = page.items.length ? `(${offset + 1}–${offset + page.items.length})` : "";
  // Only the links that lead somewhere (.button sets display, which would beat `hidden`).
  const more = page.next_offset !== null && page.next_offset !== undefined;
  $("pager").innerHTML = (offset > 0 ? `<a id="prev" class="button secondary" href="${esc(link(f, Math.max(0, offset - PAGE)))}">Previous page</a>` : "")
    + (more ? `<a id="next" class="button secondary" href="${esc(link(f, page.next_offset))}">Next page</a>` : "");
}

// ---- exports ----
function listExport(kind, out) {
  const m = out.manifest;
  const id = encodeURIComponent(out.export_id);
  const li = document.createElement("li");
  li.className = "card";
  li.dataset.export = out.export_id;
  li.innerHTML = `<strong>${esc(kind)}</strong>: ${esc(m.rows)} rows, ${esc(m.format)}, ${esc(m.bytes)} bytes,
    SHA-256 <span class="mono">${esc(m.sha256)}</span><br>
    <a class="button" href="/api/v1/exports/${id}" download="${esc(m.file)}">Download ${esc(kind)} file</a>
    <a class="button secondary" href="/api/v1/exports/${id}/manifest" download="${esc(m.file)}.manifest.json">Download manifest</a>`;
  $("exports").prepend(li);
  li.querySelector("a").focus();
}

function initExports() {
  $("audit-export-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const body = clean({ format: f.format.value, from: f.from.value, to: f.to.value });
    try {
      const out = await api("POST", "/exports/audit", body);
      flash(`Audit log exported: ${out.manifest.rows} rows.`, "ok");
      listExport("audit log", out);
    } catch (e) { flash(e.message, "error"); }
  });
  $("matches-export-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const body = clean({ format: f.format.value, status: f.status.value, case: f.case.value.trim() });
    try {
      const out = await api("POST", "/exports/matches", body);
      flash(`Matches exported: ${out.manifest.rows} rows.`, "ok");
      listExport("matches", out);
    } catch (e) { flash(e.message, "error"); }
  });
}

if ($("chain")) {
  $("verify").addEventListener("click", verifyChain);
  verifyChain();
  loadRows();
}
if ($("exports")) initExports();
