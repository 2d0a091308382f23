// Clerk: upload footage (one request per file, streamed from disk, with its own progress bar)
// and follow its processing (jobs list, refreshed while anything is running, retry).
import { api, ApiError, csrf, esc, flash, pages } from "/static/app.js";

// --- Upload ---------------------------------------------------------------------------------

// The server's custody rule (bodycam/ingest.py `_FIELD`): 1-200 letters, digits, spaces and
// `_ . : / # @ + -`. Mirrored here so a person hears about it before any byte is sent; the
// server still checks every upload.
const FIELD = /^[\p{L}\p{N}\p{M}_ .:/#@+-]{1,200}$/u;
const FIELDS = [
  ["up-case", "Case number", "every video must be bound to a case"],
  ["up-officer", "Officer", "every video must name the officer who wore the camera"],
  ["up-device", "Device", "every video must name the camera's device id"],
];

// One clean line per problem, each tied to its field (aria-invalid + aria-describedby).
export function problems(form) {
  const found = [];
  for (const [id, label, why] of FIELDS) {
    const value = form.querySelector("#" + id).value.trim();
    if (!value) found.push([id, `${label} is required: ${why}.`]);
    else if (!FIELD.test(value)) {
      found.push([id, `${label} may only use letters, digits, spaces and _ . : / # @ + - (at most 200).`]);
    }
  }
  const rec = form.querySelector("#up-recorded");
  if (rec.validity.badInput || (rec.value && Number.isNaN(new Date(rec.value).getTime()))) {
    found.push(["up-recorded", "Recorded at is not a complete date and time: fill it in or clear it."]);
  }
  const files = [...form.querySelector("#up-files").files];
  if (!files.length) found.push(["up-files", "Choose at least one video file to upload."]);
  for (const f of files) {
    if (f.size === 0) found.push(["up-files", `${f.name} is empty: there is nothing to upload.`]);
    if (f.name.length > 1000) found.push(["up-files", "A file name is longer than 1000 characters: rename the file."]);
  }
  return found;
}

function showProblems(form, found) {
  for (const el of form.querySelectorAll("[data-problem-for]")) {
    el.textContent = "";
    form.querySelector("#" + el.dataset.problemFor).removeAttribute("aria-invalid");
  }
  const box = form.querySelector("#form-problems");
  box.replaceChildren();
  for (const [id, line] of found) {
    const slot = form.querySelector(`[data-problem-for="${id}"]`);
    slot.textContent = slot.textContent ? `${slot.textContent} ${line}` : line;
    form.querySelector("#" + id).setAttribute("aria-invalid", "true");
  }
  if (found.length) {
    const list = document.createElement("ul");
    for (const [, line] of found) {
      const li = document.createElement("li");
      li.textContent = line;
      list.append(li);
    }
    box.append(list);
    form.querySelector("#" + found[0][0]).focus();
  }
}

// The recorded-at of a datetime-local field (the clerk's local time) as ISO 8601 in UTC.
function recordedAt(value) {
  return value ? new Date(value).toISOString() : "";
}

function fileRow(file) {
  const li = document.createElement("li");
  li.className = "card upload";
  li.dataset.file = file.name;
  const id = "up-" + Math.random().toString(36).slice(2);
  li.innerHTML = `<strong class="mono">${esc(file.name)}</strong>
    <span class="muted">(${esc(sizeText(file.size))})</span>
    <div><progress id="${id}" max="100" value="0" aria-label="Upload of ${esc(file.name)}"></progress>
    <span class="pct" aria-hidden="true">waiting</span></div>
    <p class="outcome" role="status" aria-live="polite">Waiting to send.</p>`;
  return li;
}

function sizeText(n) {
  const units = ["bytes", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

// Send one file as the raw request body: the browser streams the File from disk (never read
// into memory here) and upload.onprogress drives its bar. Resolves to [status, body].
function send(file, meta, onProgress) {
  return new Promise((resolve) => {
    const q = new URLSearchParams({ ...meta, filename: file.name });
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/v1/videos?" + q.toString());
    xhr.setRequestHeader("X-CSRF-Token", csrf);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded, e.total); };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { body = { detail: xhr.responseText }; }
      resolve([xhr.status, body]);
    };
    xhr.onerror = () => resolve([0, { detail: "the connection to the server failed before an answer came: check the network and upload this file again" }]);
    xhr.onabort = () => resolve([0, { detail: "the upload was cancelled: nothing was stored" }]);
    xhr.send(file);
  });
}

function showOutcome(li, status, body) {
  const out = li.querySelector(".outcome");
  const bar = li.querySelector("progress");
  const pct = li.querySelector(".pct");
  if (status === 200 || status === 201) {
    bar.value = 100;
    pct.textContent = "100%";
    li.dataset.state = "stored";
    li.dataset.videoId = body.video_id;
    li.dataset.sha256 = body.sha256;
    li.dataset.duplicate = String(Boolean(body.duplicate));
    out.className = "outcome ok";
    out.innerHTML = `${body.duplicate
      ? "Already stored in this case: the same bytes were uploaded before, nothing new was kept."
      : "Stored and queued for processing."}
      <dl class="facts">
        <dt>SHA-256</dt><dd class="mono sha256">${esc(body.sha256)}</dd>
        <dt>Video id</dt><dd class="mono video-id">${esc(body.video_id)}</dd>
        <dt>Duplicate</dt><dd class="duplicate">${body.duplicate ? "yes" : "no"}</dd>
      </dl>`;
    return;
  }
  if (status === 401) { window.location.assign("/"); return; }
  li.dataset.state = "refused";
  out.className = "outcome error";
  out.textContent = "Refused: " + (body && body.detail ? body.detail : `the server answered ${status}`);
  pct.textContent = "not stored";
}

async function uploadAll(form) {
  const found = problems(form);
  showProblems(form, found);
  if (found.length) return;
  const meta = {
    case: form.querySelector("#up-case").value.trim(),
    officer: form.querySelector("#up-officer").value.trim(),
    device: form.querySelector("#up-device").value.trim(),
  };
  const rec = recordedAt(form.querySelector("#up-recorded").value);
  if (rec) meta.recorded_at = rec;
  const files = [...form.querySelector("#up-files").files];
  const list = document.getElementById("uploads");
  document.getElementById("uploads-empty").hidden = true;
  const rows = files.map(fileRow);
  list.prepend(...rows);  // this batch on top, in the order chosen
  const submit = form.querySelector("#up-submit");
  submit.disabled = true;
  let stored = 0;
  try {
    for (let i = 0; i < files.length; i += 1) {
      const li = rows[i];
      li.querySelector(".outcome").textContent = "Sending…";
      const [status, body] = await send(files[i], meta, (loaded, total) => {
        const p = Math.floor((loaded / total) * 100);
        li.querySelector("progress").value = p;
        li.querySelector(".pct").textContent = `${p}%`;
      });
      showOutcome(li, status, body);
      if (status === 200 || status === 201) stored += 1;
    }
  } finally {
    submit.disabled = false;
  }
  flash(`${stored} of ${files.length} file${files.length === 1 ? "" : "s"} stored.`,
        stored === files.length ? "ok" : "error");
  document.getElementById("to-videos").href = "/app/videos?case=" + encodeURIComponent(meta.case);
  form.querySelector("#up-files").value = "";
}

// --- Videos ---------------------------------------------------------------------------------

const RUNNING = ["queued", "processing"];
const RETRYABLE = ["failed", "quarantined"];
const PAGE_SIZE = 50;
const POLL_MS = 2000;
let offset = 0;
let timer = null;

// The error of a job in plain words; the server's own text follows for whoever fixes it.
export function plain(job) {
  if (job.status === "quarantined") {
    return `Processing stopped after ${job.attempts} failed attempt${job.attempts === 1 ? "" : "s"}. The original is kept; retry once the cause is fixed.`;
  }
  if (job.status === "failed") return "Processing failed and will not be tried again on its own. The original is kept; retry it if the cause was temporary.";
  if (job.error && RUNNING.includes(job.status)) return "An attempt failed; it will be tried again automatically.";
  return "";
}

function jobRow(job) {
  const pct = Math.round((job.progress || 0) * 100);
  const why = plain(job);
  const detail = job.error
    ? `<details><summary>Server's message</summary><span class="mono">${esc(job.error)}</span></details>` : "";
  const retry = RETRYABLE.includes(job.status)
    ? `<button type="button" class="retry" data-video-id="${esc(job.video_id)}" aria-label="Retry ${esc(job.filename)}">Retry</button>` : "";
  return `<tr data-video-id="${esc(job.video_id)}" data-status="${esc(job.status)}">
    <td>${esc(job.case)}</td>
    <td class="mono">${esc(job.filename)}</td>
    <td class="status ${job.status === "done" ? "ok" : RETRYABLE.includes(job.status) ? "error" : ""}">${esc(job.status)}</td>
    <td class="stage">${esc(job.stage)}</td>
    <td><progress max="100" value="${pct}" aria-label="Processing of ${esc(job.filename)}"></progress> ${pct}%</td>
    <td class="attempts">${esc(job.attempts)}</td>
    <td class="problem">${why ? `<span class="error">${esc(why)}</span>` : ""}${detail}${job.notice ? `<span class="notice">Note: ${esc(job.notice)}</span>` : ""}</td>
    <td>${retry}</td></tr>`;
}

async function refresh() {
  clearTimeout(timer);
  const form = document.getElementById("jobs-filter");
  const caseWanted = form.querySelector("#f-case").value.trim();
  const status = form.querySelector("#f-status").value;
  let all;
  try {
    all = await pages("/jobs", { status });
  } catch (e) {
    flash(e instanceof ApiError ? e.message : "the server could not be reached; retrying", "error");
    timer = setTimeout(refresh, POLL_MS * 2);
    return;
  }
  const shown = caseWanted ? all.filter((j) => j.case === caseWanted) : all;
  if (offset >= shown.length) offset = Math.max(0, Math.floor((shown.length - 1) / PAGE_SIZE) * PAGE_SIZE);
  const slice = shown.slice(offset, offset + PAGE_SIZE);
  const body = document.getElementById("jobs-body");
  body.innerHTML = slice.length ? slice.map(jobRow).join("")
    : `<tr><td colspan="8" class="muted">No video matches these filters.</td></tr>`;
  const running = shown.filter((j) => RUNNING.includes(j.status)).length;
  document.getElementById("jobs-summary").textContent =
    `${shown.length} video${shown.length === 1 ? "" : "s"}` +
    (shown.length > PAGE_SIZE ? `, showing ${offset + 1}-${offset + slice.length}` : "") +
    (running ? `; ${running} still queued or processing (refreshed every ${POLL_MS / 1000} s).` : ".");
  document.getElementById("jobs-pager").hidden = shown.length <= PAGE_SIZE;
  document.getElementById("jobs-prev").disabled = offset === 0;
  document.getElementById("jobs-next").disabled = offset + PAGE_SIZE >= shown.length;
  if (running) timer = setTimeout(refresh, POLL_MS);
}

async function retry(button) {
  const vid = button.dataset.videoId;
  const name = button.closest("tr").querySelector("td.mono").textContent;
  button.disabled = true;
  try {
    const out = await api("POST", `/videos/${encodeURIComponent(vid)}/retry`);
    flash(`${name} is queued again (${out.units_queued} part${out.units_queued === 1 ? "" : "s"} to process).`, "ok");
  } catch (e) {
    flash(e instanceof ApiError ? e.message : String(e), "error");
  }
  await refresh();
}

function initVideos() {
  document.getElementById("jobs-body").addEventListener("click", (ev) => {
    const b = ev.target.closest("button.retry");
    if (b) retry(b);
  });
  document.getElementById("jobs-prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE_SIZE); refresh(); });
  document.getElementById("jobs-next").addEventListener("click", () => { offset += PAGE_SIZE; refresh(); });
  refresh();
}

function initUpload() {
  const form = document.getElementById("upload-form");
  form.addEventListener("submit", (ev) => { ev.preventDefault(); uploadAll(form); });
}

if (document.getElementById("upload-form")) initUpload();
if (document.getElementById("jobs-filter")) initVideos();
