// Redaction: the plan's tracks on a timeline with keep/hide toggles and thumbnails, manual
// boxes, a render through the API and its preview (contact sheet, video) and report.
import { api, ApiError, esc, flash, seconds, seekTo } from "/static/app.js";

const form = document.getElementById("pick");
const videoInput = document.getElementById("video");
const summary = document.getElementById("summary");
const planEl = document.getElementById("plan");
const tracksEl = document.getElementById("tracks");
const regionsEl = document.getElementById("regions");
const player = document.getElementById("player");
const clock = document.getElementById("clock");
const regions = [];
let plan = null;

// The plan's times count from the video's first frame; the player's clock counts from the
// file's start, which is earlier where the picture starts after the sound (a box typed from
// the player's clock landed that much late).
function videoTime() {
  return Math.max(0, player.currentTime - ((plan && plan.first_frame_s) || 0));
}

function showClock() {
  if (!plan) return;
  clock.textContent = `Video time ${videoTime().toFixed(2)} s; boxes in pixels of the ` +
    `${plan.width_px}x${plan.height_px} frame`;
}
for (const ev of ["timeupdate", "seeked", "loadedmetadata"]) player.addEventListener(ev, showClock);
for (const [button, field] of [["r-start-now", "r-start"], ["r-end-now", "r-end"]]) {
  document.getElementById(button).addEventListener("click", () => {
    document.getElementById(field).value = videoTime().toFixed(2);
  });
}

function options(select, bases, chosen) {
  const none = chosen ? "" : `<option value="" selected>choose a legal basis</option>`;
  select.innerHTML = none + bases.map((b) =>
    `<option value="${esc(b)}"${b === chosen ? " selected" : ""}>${esc(b)}</option>`).join("");
}

function row(t, i) {
  const el = document.createElement("div");
  el.className = "card track-row";
  el.setAttribute("role", "listitem");
  el.dataset.track = t.id;
  const thumb = t.db_track_ids.length
    ? `<img class="thumb" alt="Face of track ${esc(t.id)}" src="/api/v1/tracks/${encodeURIComponent(t.db_track_ids[0])}/thumbnail">`
    : `<span class="muted">no thumbnail</span>`;
  el.innerHTML = `
    <input type="checkbox" id="keep-${i}" data-track="${esc(t.id)}">
    <label for="keep-${i}">Keep ${esc(t.id)} visible</label>
    ${thumb}
    <span class="bar" role="img" aria-label="${esc(t.id)} from ${esc(seconds(t.start_s))} to ${esc(seconds(t.end_s))}"><span></span></span>
    <span class="muted">${esc(seconds(t.start_s))}–${esc(seconds(t.end_s))}, ${esc(t.detections)} detections
      (${esc((t.detectors || []).join(", "))}), ${esc(t.low_confidence_detections)} of low confidence</span>
    <button type="button" class="play">Play ${esc(t.id)}</button>`;
  el.querySelector("button.play").addEventListener("click", () => {
    seekTo(player, t.start_s + (plan.first_frame_s || 0));
  });
  const bar = el.querySelector(".bar");
  Object.assign(bar.style, { display: "inline-block", position: "relative", width: "320px",
                             height: "12px", background: "#ddd", verticalAlign: "middle" });
  const d = plan.duration_s || 1;
  Object.assign(bar.querySelector("span").style, {
    position: "absolute", top: "0", bottom: "0", background: "#b00020",
    left: `${(t.start_s / d) * 100}%`, width: `${Math.max(0.5, ((t.end_s - t.start_s) / d) * 100)}%` });
  for (const img of el.querySelectorAll("img")) {
    Object.assign(img.style, { width: "48px", height: "48px", objectFit: "cover" });
  }
  el.querySelector("input").addEventListener("change", (ev) => {
    el.querySelector(".bar span").style.background = ev.target.checked ? "#2e7d32" : "#b00020";
  });
  return el;
}

// Follow a redaction job (a worker computes it, the server records it) until it ends.
async function follow(job, say) {
  let delay = 250;
  let misses = 0;
  while (["queued", "running", "computed"].includes(job.state)) {
    say(`${job.kind === "plan" ? "Computing the plan" : "Rendering"}: ${job.state}, ` +
        `${Math.round(job.progress * 100)} %${misses ? " (the server did not answer: trying again)" : ""}…`);
    await new Promise((ok) => setTimeout(ok, delay));
    delay = Math.min(delay * 1.5, 3000);
    try {
      job = await api("GET", `/redaction-jobs/${encodeURIComponent(job.job_id)}`);
      misses = 0;
    } catch (e) {
      // The job goes on on a worker: a server restarting or a network drop is waited out;
      // a refusal (4xx) is not.
      if ((e instanceof ApiError && e.status < 500) || ++misses > 40) throw e;
    }
  }
  if (job.state !== "done") throw new ApiError(409, `The ${job.kind} job ${job.state}: ${job.error}`);
  return job;
}

// A plan's choices are its own: a new load starts with no manual box, no kept track and no
// render shown (a box drawn for one video was rendered into the next one's release: bb25).
function clearChoices() {
  regions.length = 0;
  regionsEl.replaceChildren();
  tracksEl.replaceChildren();
  planEl.hidden = true;
  document.getElementById("result").hidden = true;
}

async function load(videoId) {
  flash("");
  clearChoices();
  summary.textContent = "Loading the plan (computed once per video by a worker: this can take a while)…";
  const path = `/videos/${encodeURIComponent(videoId)}/redaction-plan`;
  try {
    plan = await api("GET", path);
    if (plan.job_id) {
      await follow(plan, (text) => { summary.textContent = text; });
      plan = await api("GET", path);
    }
  } catch (e) {
    summary.textContent = "";
    flash(e instanceof ApiError ? e.message : String(e), "error");
    return;
  }
  summary.textContent = `Plan version ${plan.version}: ${plan.tracks.length} face track(s) in ` +
    `${plan.n_frames} frames; ${plan.low_confidence_frames.length} low-confidence frame(s) to check.`;
  player.src = `/api/v1/videos/${encodeURIComponent(videoId)}/original`;
  showClock();
  tracksEl.replaceChildren(...plan.tracks.map(row));
  options(document.getElementById("keep-basis"), plan.legal_bases, "");
  options(document.getElementById("r-basis"), plan.legal_bases, plan.default_legal_basis);
  planEl.hidden = false;
}

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (videoInput.value.trim()) load(videoInput.value.trim());
});

document.getElementById("region").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const v = (id) => document.getElementById(id).value;
  const r = { box_px: [v("r-x1"), v("r-y1"), v("r-x2"), v("r-y2")].map(Number),
              start_s: Number(v("r-start")), end_s: Number(v("r-end")),
              reason: v("r-reason"), legal_basis: v("r-basis") };
  // Checked as the server checks it, before it joins the list (a bad box was listed, could
  // not be taken out, and failed every render until the page was reloaded: bb25).
  const [x1, y1, x2, y2] = r.box_px;
  if (![x1, y1, x2, y2, r.start_s, r.end_s].every(Number.isFinite) || x1 < 0 || y1 < 0 ||
      x1 >= x2 || y1 >= y2 || r.start_s < 0 || r.start_s > r.end_s) {
    flash("A box needs x1 < x2 and y1 < y2 (pixels, 0 or more) and a start no later than its end.",
          "error");
    return;
  }
  flash("");
  regions.push(r);
  const li = document.createElement("li");
  const text = document.createElement("span");
  text.textContent = `box ${r.box_px.join(",")} from ${r.start_s} s to ${r.end_s} s: ${r.reason} [${r.legal_basis}] `;
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "Remove";
  remove.setAttribute("aria-label", `Remove the box ${r.box_px.join(",")}`);
  remove.addEventListener("click", () => {
    regions.splice(regions.indexOf(r), 1);
    li.remove();
  });
  li.append(text, remove);
  regionsEl.append(li);
});

document.getElementById("render").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const kept = [...tracksEl.querySelectorAll("input[type=checkbox]:checked")].map((c) => c.dataset.track);
  const reason = document.getElementById("keep-reason").value;
  const basis = document.getElementById("keep-basis").value;
  const body = { keep_tracks: kept.map((id) => ({ id, reason, legal_basis: basis })),
                 regions, style: document.getElementById("style").value,
                 audio: document.getElementById("audio").value };
  flash("Rendering…");
  let made;
  try {
    made = await api("POST", `/videos/${encodeURIComponent(plan.video_id)}/redactions`, body);
    made = await follow(made, (text) => flash(text));
  } catch (e) {
    flash(e instanceof ApiError ? e.message : String(e), "error");
    return;
  }
  flash(`Derivative ${made.derivative_id} rendered.`);
  const base = `/api/v1/redactions/${encodeURIComponent(made.derivative_id)}`;
  const r = await api("GET", `/redactions/${encodeURIComponent(made.derivative_id)}/report`);
  const taken = r.redacted_regions.filter((x) => x.taken_over).map((x) => x.track);
  document.getElementById("result-facts").textContent =
    `SHA-256 ${made.sha256} (original ${made.original_sha256}); ` +
    `${r.redacted_regions.length} region(s) hidden; kept: ${[...new Set(r.kept_tracks.map((k) => k.track))].join(", ") || "none"}` +
    (taken.length ? `; hidden where another face took a kept track over: ${taken.join(", ")}.` : ".");
  const sheet = document.getElementById("sheet");
  sheet.src = `${base}/sheet`;
  Object.assign(sheet.style, { maxWidth: "100%" });
  document.getElementById("redacted").src = `${base}/video`;
  document.getElementById("report-json").href = `${base}/report`;
  document.getElementById("report-pdf").href = `${base}/pdf`;
  document.getElementById("result").hidden = false;
});

if (videoInput.value.trim()) load(videoInput.value.trim());
