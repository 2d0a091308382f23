// Review: pending matches confirmed or rejected with a note; the four-eyes rule shown per item;
// for supervisors, decided matches reopened with a reason.
import { api, ApiError, esc, flash, pages, seconds, seekTo } from "/static/app.js";

const queue = document.getElementById("queue");
const summary = document.getElementById("summary");
const me = queue.dataset.user;
const caseInput = document.getElementById("case");

// The four-eyes rule as it applies to this reviewer and this match (the server enforces it).
function fourEyes(m) {
  const missing = m.confirmations_missing;
  const more = `${missing} more reviewer(s) needed`;
  if (m.enrolled_by && m.enrolled_by === me) {
    return `You enrolled this subject: your confirmation cannot be the only one; ${missing} ` +
      `more reviewer(s) other than you needed.`;
  }
  if (m.reopened_by && m.reopened_by === me) {
    return `You reopened this match: your confirmation cannot be the only one; ${missing} ` +
      `more reviewer(s) other than you needed.`;
  }
  const who = m.enrolled_by ? `Enrolled by ${m.enrolled_by}` : "Enroller unknown";
  return `${who}: the enroller cannot be the only confirmer. The policy requires ` +
    `${m.reviewers_required} confirmation(s) by others than the enroller; ${more}.`;
}

function item(m, i) {
  const el = document.createElement("article");
  el.className = "card review-item";
  el.dataset.match = m.match_id;
  el.setAttribute("aria-labelledby", `h-${i}`);
  const sim = Number(m.similarity), thr = Number(m.threshold);
  const cmp = sim >= thr ? "≥" : "<";
  // The track's time counts from the video's first frame; the player's from the file's start.
  const at = Number(m.start_s) + Number(m.first_frame_s || 0);
  const reviewers = m.reviewers.length ? m.reviewers.join(", ") : "none yet";
  el.innerHTML = `
    <h2 id="h-${i}">${esc(m.subject)} <small class="muted">case ${esc(m.case)}</small></h2>
    <div class="row">
      <figure>
        <img class="thumb big" data-role="photo" alt="Enrolment photo of ${esc(m.subject)}"
             src="/api/v1/subjects/${encodeURIComponent(m.subject_id)}/photo">
        <figcaption>Enrolment photo</figcaption>
      </figure>
      <figure>
        <img class="thumb big" data-role="crop" alt="Best face crop of the track in the footage"
             src="/api/v1/tracks/${encodeURIComponent(m.track_id)}/thumbnail">
        <figcaption>Face in the footage</figcaption>
      </figure>
      <figure>
        <video controls preload="metadata" width="320" data-start="${esc(at)}"
               aria-label="Clip of the footage from ${esc(seconds(m.start_s))}"
               src="/api/v1/videos/${encodeURIComponent(m.video_id)}/original#t=${esc(at)}"></video>
        <figcaption>Clip ${esc(seconds(m.start_s))}–${esc(seconds(m.end_s))}</figcaption>
      </figure>
      <div class="facts">
        <p class="similarity"><strong>${esc(sim.toFixed(2))} ${cmp} threshold ${esc(thr.toFixed(2))}</strong>
          <span class="muted">(${esc(m.model)})</span></p>
        <div class="progress simbar" role="img"
             aria-label="similarity ${esc(sim.toFixed(2))} against threshold ${esc(thr.toFixed(2))}">
          <span></span><i class="thr"></i></div>
        <p>Reviewers so far: <span class="reviewers">${esc(reviewers)}</span></p>
        ${m.round ? `<p class="earlier">Reopened by ${esc(m.reopened_by)} (review round
          ${esc(m.round)}): “${esc(m.reopen_reason)}”. Earlier reviews, no longer counted:
          ${esc(m.earlier_reviews.join(", ") || "none")}.</p>` : ""}
        <p class="foureyes warn">${esc(fourEyes(m))}</p>
      </div>
    </div>
    <form class="decide" novalidate>
      <label for="note-${i}">Note (required): why you confirm or reject this match</label>
      <textarea id="note-${i}" name="note" rows="2" required aria-required="true"
                aria-describedby="err-${i}"></textarea>
      <p id="err-${i}" class="error" role="alert"></p>
      <button type="submit" name="decision" value="confirm">Confirm match</button>
      <button type="submit" name="decision" value="reject" class="secondary">Reject match</button>
    </form>`;
  // Sizes through the CSSOM: the page's CSP allows no inline style.
  const bar = el.querySelector(".simbar");
  Object.assign(bar.style, { position: "relative", height: "14px", maxWidth: "320px" });
  bar.querySelector("span").style.width = `${Math.max(0, Math.min(1, sim)) * 100}%`;
  Object.assign(bar.querySelector(".thr").style, {
    position: "absolute", top: "0", bottom: "0", width: "3px", background: "#1a1a1a",
    left: `${Math.max(0, Math.min(1, thr)) * 100}%` });
  for (const img of el.querySelectorAll("img.big")) {
    Object.assign(img.style, { width: "180px", height: "180px", objectFit: "contain" });
    img.addEventListener("error", () => {
      const p = document.createElement("p");
      p.className = "muted";
      p.textContent = "Image not available to your account (or removed).";
      img.replaceWith(p);
    });
  }
  const video = el.querySelector("video");
  video.addEventListener("error", () => {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "Clip not available to your account.";
    video.replaceWith(p);
  });
  video.addEventListener("loadedmetadata", () => {
    if (video.currentTime < at) seekTo(video, at);
  });
  el.querySelector(".facts").style.flex = "1";
  const form = el.querySelector("form.decide");
  if (m.reviewers.includes(me)) {
    // The server counts one decision per reviewer: say so instead of offering a second one.
    const p = document.createElement("p");
    p.className = "ok";
    p.textContent = `You confirmed this match already; it waits for ${m.confirmations_missing} ` +
      "more reviewer(s).";
    form.replaceWith(p);
  } else {
    form.addEventListener("submit", (ev) => decide(ev, m));
  }
  return el;
}

// A form whose one text field is required: refused before sending when it is empty, its
// buttons held while the server answers, a refusal shown in the form's alert.
async function sendForm(form, field, missing, send) {
  const value = form[field].value.trim();
  const err = form.querySelector(".error");
  err.textContent = "";
  if (!value) {
    err.textContent = missing;
    form[field].focus();
    return;
  }
  const buttons = form.querySelectorAll("button");
  for (const b of buttons) b.disabled = true;
  try {
    await send(value);
  } catch (exc) {
    err.textContent = exc instanceof ApiError ? `Refused by the server: ${exc.message}` : String(exc);
    for (const b of buttons) b.disabled = false;
    form[field].focus();
  }
}

function decide(ev, m) {
  ev.preventDefault();
  const decision = ev.submitter?.value;
  return sendForm(ev.target, "note",
    "Write a note first: every confirmation or rejection records why.", async (note) => {
      let out;
      try {
        out = await api("POST", `/matches/${encodeURIComponent(m.match_id)}/review`,
                        { decision, note });
      } catch (exc) {
        // Decided by another reviewer since the page loaded (or its entry ended): the queue
        // is shown as it stands now; it kept the match until a reload (bb25).
        if (!(exc instanceof ApiError) || await stillPending(m)) throw exc;
        flash(`Refused by the server: ${exc.message}. The queue is shown as it stands now.`, "warn");
        await load();
        return;
      }
      if (out.status === "pending") {
        flash(`Your confirmation of ${m.subject} is recorded; the match still needs another reviewer.`, "ok");
      } else {
        flash(`Match of ${m.subject} ${out.status}.`, "ok");
      }
      await load();
    });
}

async function stillPending(m) {
  const items = await pages("/matches", { status: "pending", case: m.case });
  return items.some((x) => x.match_id === m.match_id);
}

// Decided matches, for supervisors: each may be reopened with a reason (the server checks
// the role and records the reason; the earlier reviews stay on record).
const decided = document.getElementById("decided");

function decidedItem(m, i) {
  const el = document.createElement("article");
  el.className = "card decided-item";
  el.dataset.match = m.match_id;
  el.setAttribute("aria-labelledby", `dh-${i}`);
  const reviewers = m.reviewers.length ? m.reviewers.join(", ") : "none";
  el.innerHTML = `
    <h3 id="dh-${i}">${esc(m.subject)} <small class="muted">case ${esc(m.case)}</small>:
      <span class="status">${esc(m.status)}</span></h3>
    <p>Video ${esc(m.video_id)}, ${esc(seconds(m.start_s))}–${esc(seconds(m.end_s))};
      similarity ${esc(Number(m.similarity).toFixed(2))}; decided by ${esc(reviewers)}${
      m.round ? ` in review round ${esc(m.round)} (earlier: ${esc(m.earlier_reviews.join(", ") || "none")})` : ""}.</p>
    ${m.entry === "active" ? `<form class="reopen" novalidate>
      <label for="reason-${i}">Reason (required): why this decision is reviewed again</label>
      <textarea id="reason-${i}" name="reason" rows="2" required aria-required="true"
                aria-describedby="rerr-${i}"></textarea>
      <p id="rerr-${i}" class="error" role="alert"></p>
      <button type="submit" class="secondary">Reopen match</button>
    </form>` : `<p class="muted">Its watchlist entry ${m.entry === "removed" ? "was removed"
      : "lapsed"}: the decision stands and cannot be reopened.</p>`}`;
  el.querySelector("form.reopen")?.addEventListener("submit", (ev) => reopen(ev, m));
  return el;
}

function reopen(ev, m) {
  ev.preventDefault();
  return sendForm(ev.target, "reason",
    "Write a reason first: reopening a decision records why.", async (reason) => {
      const out = await api("POST", `/matches/${encodeURIComponent(m.match_id)}/reopen`,
                            { reason });
      flash(`Match of ${m.subject} reopened: pending again (review round ${out.round}).`, "ok");
      await load();
    });
}

async function loadDecided(wanted) {
  const text = document.getElementById("decided-summary");
  const items = await pages("/matches", { status: "decided", case: wanted });
  decided.replaceChildren(...items.map(decidedItem));
  text.textContent = items.length
    ? `${items.length} decided match(es)${wanted ? ` in case ${wanted}` : ""}.`
    : `No decided matches${wanted ? ` in case ${wanted}` : ""}.`;
}

async function load() {
  const wanted = caseInput.value.trim();
  summary.textContent = "Loading the queue…";
  try {
    const items = await pages("/matches", { status: "pending", case: wanted });
    queue.replaceChildren(...items.map(item));
    summary.textContent = items.length
      ? `${items.length} pending match(es)${wanted ? ` in case ${wanted}` : ""}.`
      : `No pending matches${wanted ? ` in case ${wanted}` : " in your cases"}.`;
    if (decided) await loadDecided(wanted);
  } catch (exc) {
    queue.replaceChildren();
    summary.textContent = "";
    flash(exc.message, "error");
  }
}

document.getElementById("filter").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const q = new URLSearchParams(caseInput.value.trim() ? { case: caseInput.value.trim() } : {});
  history.replaceState(null, "", `${location.pathname}${q.size ? `?${q}` : ""}`);
  load();
});
load();
