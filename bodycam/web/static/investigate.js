// Investigator: cases, search by photo, subject or track, unknown persons, enrolment.
import { api, flash, pages, seconds, seekTo } from "/static/app.js";

const root = document.getElementById("investigate");
const $ = (sel) => document.querySelector(sel);

// The caller's cases offered in the case field (supervisors see all: free text).
async function offerCases() {
  try {
    const me = await api("GET", "/auth/me");
    const list = $("#my-cases");
    if (list && Array.isArray(me.cases)) {
      list.replaceChildren(...me.cases.map((c) => Object.assign(document.createElement("option"), { value: c })));
      const input = $("#case");
      // Not into a field being typed in: its text and this one were run together
      // ("T-WEB-INVT-WEB-INV", a typist who began before this answer came).
      if (input && !input.value && document.activeElement !== input && me.cases.length === 1) input.value = me.cases[0];
    }
    return me;
  } catch (e) {
    flash(e.message, "error");
    return null;
  }
}

// Required fields checked before anything is sent: one clear line, focus on the first.
function required(fields) {
  for (const [el, what] of fields) {
    el.removeAttribute("aria-invalid");
  }
  for (const [el, what] of fields) {
    if (!String(el.value || "").trim() && !(el.files && el.files.length)) {
      el.setAttribute("aria-invalid", "true");
      flash(`${what} is required.`, "error");
      el.focus();
      return false;
    }
  }
  return true;
}

function thumbImg(trackId, alt) {
  const img = document.createElement("img");
  img.className = "thumb";
  img.alt = alt;
  img.src = `/api/v1/tracks/${encodeURIComponent(trackId)}/thumbnail`;
  return img;
}

function button(text, onClick, cls = "") {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  if (cls) b.className = cls;
  b.addEventListener("click", onClick);
  return b;
}

function range(a) {
  return `${seconds(a.start_s)}–${seconds(a.end_s)}`;
}

// ---------------------------------------------------------------- face picker
// The faces of a group photo (POST /photos/faces, largest first), drawn over the photo as it
// is in the browser (never sent back); choosing one calls onChoose(index). Search and
// enrolment share it: a group photo enrolled the largest face with no choice (bb25).
function facePicker(input, verb, onChoose) {
  let blobUrl = null;
  let chosen = null;
  input.addEventListener("change", () => {
    chosen = null;
    $("#picker").hidden = true;
    if (blobUrl) URL.revokeObjectURL(blobUrl);
    blobUrl = input.files.length ? URL.createObjectURL(input.files[0]) : null;
  });
  function markChosen() {
    for (const b of document.querySelectorAll("#picker-stage .face")) {
      const on = Number(b.dataset.index) === chosen;
      b.setAttribute("aria-pressed", String(on));
      b.style.borderColor = on ? "#1d6b1d" : "#f2a900";
      b.style.borderWidth = on ? "5px" : "3px";
    }
  }
  function show(found) {
    const stage = $("#picker-stage");
    const img = $("#picker-img");
    stage.style.position = "relative";
    stage.style.display = "inline-block";
    img.style.maxWidth = "100%";
    img.style.maxHeight = "480px";
    img.style.display = "block";
    img.src = blobUrl;
    for (const old of stage.querySelectorAll(".face")) old.remove();
    for (const f of found.faces) {
      const [x, y, w, h] = f.box;
      const b = button("", () => { chosen = f.index; markChosen(); onChoose(f.index); }, "face");
      b.setAttribute("aria-label", `Face ${f.index + 1} of ${found.faces.length}` +
        (f.index === 0 ? " (largest)" : ""));
      b.setAttribute("aria-pressed", "false");
      b.dataset.index = String(f.index);
      Object.assign(b.style, {
        position: "absolute", left: `${(100 * x) / found.width}%`, top: `${(100 * y) / found.height}%`,
        width: `${(100 * w) / found.width}%`, height: `${(100 * h) / found.height}%`,
        background: "transparent", border: "3px solid #f2a900", borderRadius: "4px",
        margin: "0", padding: "0", color: "#fff", fontWeight: "700",
        textShadow: "0 0 3px #000", alignItems: "flex-start", justifyContent: "flex-start",
      });
      b.textContent = String(f.index + 1);
      stage.appendChild(b);
    }
    $("#picker-help").textContent = `This photo shows ${found.faces.length} faces. ` +
      `Choose the one to ${verb} (numbered largest first); it then goes ahead.`;
    $("#picker").hidden = false;
    flash(`The photo shows ${found.faces.length} faces: choose one below.`, "warn");
    stage.querySelector(".face").focus();
  }
  return { show };
}

// The faces the server finds in a photo (largest first), for the picker.
async function facesOf(caseId, file) {
  const pf = new FormData();
  pf.append("case", caseId);
  pf.append("photo", file);
  return api("POST", "/photos/faces", pf);
}

// ---------------------------------------------------------------- search
function initSearch() {
  const form = $("#search-form");
  const photo = $("#photo");
  const subject = $("#subject");
  const caseIn = $("#case");
  let face = null; // the chosen face index of the current photo
  let durations = {}; // video id -> seconds, from the case's videos

  const by = () => form.querySelector('input[name="by"]:checked').value;
  const showProbe = () => {
    for (const div of form.querySelectorAll("[data-by]")) div.hidden = div.dataset.by !== by();
  };
  for (const r of form.querySelectorAll('input[name="by"]')) r.addEventListener("change", showProbe);
  showProbe();

  async function loadSubjects() {
    const c = caseIn.value.trim();
    if (!c) return;
    try {
      const items = await pages("/subjects", { case: c });
      const opts = [new Option(items.length ? "Choose a subject" : "No subjects in this case", "")];
      for (const s of items) opts.push(new Option(`${s.name} (${s.subject_id.slice(0, 8)})`, s.subject_id));
      subject.replaceChildren(...opts);
      if (subject.dataset.initial) subject.value = subject.dataset.initial;
    } catch (e) {
      subject.replaceChildren(new Option("Subjects unavailable: " + e.message, ""));
    }
  }
  caseIn.addEventListener("change", loadSubjects);
  offerCases().then(loadSubjects);

  const picker = facePicker(photo, "search for", (index) => { face = index; run(); });
  photo.addEventListener("change", () => { face = null; });

  async function run() {
    const fields = [[caseIn, "Case"], [$("#purpose"), "Purpose"]];
    const mode = by();
    fields.push(mode === "photo" ? [photo, "A photo"] : mode === "subject" ? [subject, "A subject"]
      : [$("#track"), "A track id"]);
    if (!required(fields)) return;
    const c = caseIn.value.trim();
    const fd = new FormData();
    fd.append("case", c);
    fd.append("purpose", $("#purpose").value.trim());
    const go = $("#search-go");
    go.disabled = true;
    try {
      if (mode === "photo") {
        if (face === null) {
          flash("Finding the faces in the photo…");
          const found = await facesOf(c, photo.files[0]);
          if (!found.faces.length) {
            flash("No face was found in this photo: use a frontal photo of the face.", "error");
            return;
          }
          if (found.faces.length > 1) {
            picker.show(found);
            return;
          }
          face = 0;
        }
        fd.append("photo", photo.files[0]);
        fd.append("face", String(face));
      } else if (mode === "subject") {
        fd.append("subject", subject.value);
      } else {
        fd.append("track", $("#track").value.trim());
      }
      flash("Searching…");
      const [result, videos] = await Promise.all([
        api("POST", "/search", fd),
        pages(`/cases/${encodeURIComponent(c)}/videos`).catch(() => []),
      ]);
      durations = Object.fromEntries(videos.map((v) => [v.video_id, v.duration_s]));
      showResults(result, c);
    } catch (e) {
      flash(e.message, "error");
    } finally {
      go.disabled = false;
    }
  }

  form.addEventListener("submit", (ev) => { ev.preventDefault(); run(); });

  function showResults(result, c) {
    const byVideo = new Map();
    for (const a of result.results) {
      if (!byVideo.has(a.video_id)) byVideo.set(a.video_id, []);
      byVideo.get(a.video_id).push(a);
    }
    const meta = `Threshold ${result.threshold} · model ${result.model} · ` +
      `${result.results.length} appearance${result.results.length === 1 ? "" : "s"} in ` +
      `${byVideo.size} video${byVideo.size === 1 ? "" : "s"} of case ${c}`;
    $("#results-meta").textContent = meta + (result.note ? ` · ${result.note}` : "");
    const cards = $("#result-cards");
    cards.replaceChildren();
    if (!result.results.length) {
      const p = document.createElement("p");
      p.textContent = `No appearance at or above the threshold ${result.threshold} (${result.model}).`;
      cards.appendChild(p);
    }
    for (const [vid, apps] of byVideo) cards.appendChild(videoCard(vid, apps, result));
    $("#results").hidden = false;
    flash(`Search recorded (${result.search_id.slice(0, 8)}): ${result.results.length} lead(s) for review.`, "ok");
  }

  function videoCard(vid, apps, result) {
    const card = document.createElement("article");
    card.className = "card result";
    card.dataset.video = vid;
    const h = document.createElement("h3");
    h.textContent = apps[0].filename;
    const sub = document.createElement("p");
    sub.className = "muted";
    const duration = durations[vid] || Math.max(...apps.map((a) => a.end_s));
    sub.textContent = `Threshold ${result.threshold} · model ${result.model} · ` +
      `${durations[vid] ? "duration " + seconds(duration) : "timeline up to the last appearance"}` +
      ` · SHA-256 ${apps[0].sha256.slice(0, 16)}…`;
    const bar = document.createElement("div");
    bar.className = "timeline";
    bar.setAttribute("role", "group");
    bar.setAttribute("aria-label", `Appearances in ${apps[0].filename}`);
    const sorted = [...apps].sort((a, b) => a.start_s - b.start_s);
    for (const a of sorted) {
      const m = button("", () => play(vid, a), "mark");
      m.setAttribute("aria-label", `Play from ${seconds(a.start_s)} (appearance ${range(a)}, similarity ${a.similarity.toFixed(3)})`);
      m.title = `${range(a)} · similarity ${a.similarity.toFixed(3)}`;
      m.dataset.start = String(a.start_s);
      m.style.left = `${Math.min(100, (100 * a.start_s) / duration)}%`;
      m.style.width = `${Math.max(0.8, (100 * (a.end_s - a.start_s)) / duration)}%`;
      bar.appendChild(m);
    }
    const list = document.createElement("ul");
    list.className = "tiles";
    for (const a of apps) {
      const li = document.createElement("li");
      li.className = "tile";
      if (a.track_ids.length) li.appendChild(thumbImg(a.track_ids[0], `Face at ${range(a)}`));
      const p = document.createElement("p");
      p.textContent = `${range(a)} · similarity ${a.similarity.toFixed(3)} (threshold ${result.threshold}) · track quality ${a.quality.toFixed(2)}`;
      li.appendChild(p);
      const t = document.createElement("p");
      t.className = "muted mono";
      t.textContent = `track ${a.track_ids.map((x) => x.slice(0, 8)).join(", ")}`;
      li.appendChild(t);
      li.appendChild(button(`Play from ${seconds(a.start_s)}`, () => play(vid, a)));
      list.appendChild(li);
    }
    card.append(h, sub, bar, list);
    return card;
  }

  // Play the stored original (Range requests, served after the case check) from a second.
  function play(vid, a) {
    const v = $("#player");
    $("#player-card").hidden = false;
    $("#player-what").textContent = `${a.filename} from ${seconds(a.start_s)} (appearance ${range(a)})`;
    const seek = () => {
      // Appearance times count from the video's first frame; the player's from the file's
      // start, where a video may begin later (after its sound; an MPEG-TS clock).
      seekTo(v, a.start_s + (a.first_frame_s || 0));
      v.play().catch(() => {});
    };
    if (v.dataset.video === vid && v.readyState >= 1) {
      seek();
    } else {
      v.dataset.video = vid;
      v.addEventListener("loadedmetadata", seek, { once: true });
      v.src = `/api/v1/videos/${encodeURIComponent(vid)}/original`;
    }
    $("#player-card").scrollIntoView({ block: "nearest" });
  }

  $("#player").addEventListener("error", () => {
    flash("The original could not be played in the browser: " + ($("#player").error?.message || "unsupported"), "error");
  });
}

// ---------------------------------------------------------------- case
async function initCase() {
  const form = $("#case-form");
  const caseIn = $("#case");
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!required([[caseIn, "Case"]])) return;
    const c = caseIn.value.trim();
    history.replaceState(null, "", `?case=${encodeURIComponent(c)}`);
    openCase(c);
  });
  const me = await offerCases();
  if (caseIn.value.trim()) openCase(caseIn.value.trim());
  else if (me && Array.isArray(me.cases) && !me.cases.length) flash("You are not assigned to any case yet.", "warn");
}

function table(headers, rows) {
  const t = document.createElement("table");
  const head = t.createTHead().insertRow();
  for (const h of headers) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = h;
    head.appendChild(th);
  }
  const body = t.createTBody();
  for (const r of rows) {
    const tr = body.insertRow();
    for (const cell of r) {
      const td = tr.insertCell();
      if (cell instanceof Node) td.appendChild(cell); else td.textContent = String(cell ?? "");
    }
  }
  return t;
}

function link(text, href) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  return a;
}

function none(text) {
  const p = document.createElement("p");
  p.className = "muted";
  p.textContent = text;
  return p;
}

async function openCase(c) {
  $("#case-body").hidden = false;
  const q = encodeURIComponent(c);
  const links = $("#case-links");
  links.replaceChildren(link("Search in this case", `/app/search?case=${q}`), " · ",
    link("Unknown persons", `/app/persons?case=${q}`), " · ", link("Enrol a subject", `/app/enrol?case=${q}`));
  const fail = (el) => (e) => { el.replaceChildren(Object.assign(none(e.message), { className: "error" })); };
  const vids = $("#case-videos");
  pages(`/cases/${q}/videos`).then((items) => {
    // Each processed video links to its redaction (the page asked for an id no page showed: bb25).
    vids.replaceChildren(items.length ? table(["File", "Status", "Duration", "Face tracks", "Recorded", "Officer", ""],
      items.map((v) => [v.filename, v.status === "done" ? "processed" : `${v.status} (${v.stage}, ${Math.round(100 * v.progress)}%)`,
        seconds(v.duration_s), v.tracks, v.recorded_at ? v.recorded_at.slice(0, 16).replace("T", " ") : "unknown",
        v.officer, v.status === "done" ? link("Redact", `/app/redact?video=${encodeURIComponent(v.video_id)}`) : ""])) :
      none("No video in this case yet."));
  }).catch(fail(vids));
  const subs = $("#case-subjects");
  pages("/subjects", { case: c }).then((items) => {
    subs.replaceChildren(items.length ? table(["Name", "Enrolled by", "Reason", "Expires", "Templates", ""],
      items.map((s) => [s.approved ? s.name : `${s.name} (awaiting a supervisor's approval)`, s.created_by, s.reason,
        s.expires_at ? s.expires_at.slice(0, 10) : "never", s.faces,
        link("Search", `/app/search?case=${q}&subject=${encodeURIComponent(s.subject_id)}`)])) : none("No subject enrolled in this case."));
  }).catch(fail(subs));
  const ms = $("#case-matches");
  pages("/matches", { case: c, status: "pending" }).then((items) => {
    ms.replaceChildren(items.length ? table(["Face", "Subject", "Appearance", "Similarity", "Threshold · model", ""],
      items.map((m) => [thumbImg(m.track_id, `Face matched to ${m.subject}`), m.subject, range(m),
        m.similarity.toFixed(3), `${m.threshold} · ${m.model}`, link("Review", "/app/review")])) : none("No match waiting for review."));
  }).catch(fail(ms));
}

// ---------------------------------------------------------------- persons
async function initPersons() {
  const form = $("#persons-form");
  const caseIn = $("#case");
  offerCases();
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!required([[caseIn, "Case"], [$("#purpose"), "Purpose"]])) return;
    const c = caseIn.value.trim();
    flash("Grouping the case's faces…");
    let items, videos;
    try {
      [items, videos] = await Promise.all([
        pages("/persons", { case: c, purpose: $("#purpose").value.trim() }),
        pages(`/cases/${encodeURIComponent(c)}/videos`).catch(() => []),
      ]);
    } catch (e) {
      flash(e.message, "error");
      return;
    }
    const names = Object.fromEntries(videos.map((v) => [v.video_id, v.filename]));
    const out = $("#person-cards");
    out.replaceChildren();
    items.forEach((p, i) => {
      const card = document.createElement("article");
      card.className = "card person";
      const h = document.createElement("h3");
      h.textContent = `Person ${i + 1} · ${p.n_tracks} track${p.n_tracks === 1 ? "" : "s"}`;
      const grid = document.createElement("div");
      grid.className = "grid";
      for (const t of p.track_ids.slice(0, 12)) grid.appendChild(thumbImg(t, `Person ${i + 1}, track ${t.slice(0, 8)}`));
      const ul = document.createElement("ul");
      for (const a of p.appearances) {
        const li = document.createElement("li");
        li.textContent = `${names[a.video_id] || a.video_id.slice(0, 8)}: ${range(a)}`;
        ul.appendChild(li);
      }
      const s = link("Search for this person", `/app/search?case=${encodeURIComponent(c)}&track=${encodeURIComponent(p.track_ids[0])}`);
      card.append(h, grid, ul, s);
      out.appendChild(card);
    });
    if (!items.length) out.appendChild(none("No unknown person in this case."));
    $("#persons").hidden = false;
    flash(`${items.length} person group${items.length === 1 ? "" : "s"} in case ${c} (viewing recorded in the audit log).`, "ok");
  });
}

// ---------------------------------------------------------------- enrol
async function initEnrol() {
  const form = $("#enrol-form");
  const photos = $("#photos");
  let face = null; // the face chosen in a group photo
  offerCases();
  const picker = facePicker(photos, "enrol", (index) => { face = index; enrol(); });
  photos.addEventListener("change", () => { face = null; });
  form.addEventListener("submit", (ev) => { ev.preventDefault(); enrol(); });

  // A photo showing several people is enrolled only once its face is chosen: the largest
  // one was taken without a word. Among several photos, each must show the person alone.
  async function chooseFace(c) {
    if (face !== null) return true;
    for (const file of photos.files) {
      flash("Finding the faces in the photos…");
      // A photo the server cannot read, or a refusal: the enrolment itself lists the reasons.
      const found = await facesOf(c, file).catch(() => null);
      if (found === null) return true;
      if (found.faces.length <= 1) continue; // none: the server says why it refuses
      if (photos.files.length === 1) {
        picker.show(found);
        return false;
      }
      flash(`${file.name} shows ${found.faces.length} faces: enrol from it alone to choose ` +
        "the face, or use photos that show only this person.", "error");
      return false;
    }
    return true;
  }

  async function enrol() {
    if (!required([[$("#name"), "Name"], [$("#case"), "Case"], [$("#reason"), "Reason"], [photos, "A photo"]])) return;
    if (!(await chooseFace($("#case").value.trim()))) return;
    const fd = new FormData();
    fd.append("name", $("#name").value.trim());
    fd.append("case", $("#case").value.trim());
    fd.append("reason", $("#reason").value.trim());
    if ($("#expires").value) fd.append("expires", $("#expires").value);
    for (const f of photos.files) fd.append("photo", f);
    if (face !== null) fd.append("face", String(face));
    const lines = $("#enrol-lines");
    const out = $("#enrol-out");
    const line = (text, cls = "") => {
      const li = document.createElement("li");
      li.textContent = text;
      if (cls) li.className = cls;
      lines.appendChild(li);
    };
    lines.replaceChildren();
    flash("Checking the photos…");
    try {
      const r = await api("POST", "/subjects", fd);
      $("#enrol-title").textContent = "Enrolled";
      line(`Subject ${r.subject_id} enrolled in case ${$("#case").value.trim()}.`, "ok");
      line(r.awaiting_approval
        ? "Awaiting a supervisor's approval: it is matched against the case's tracks once approved."
        : `${r.pending_matches} pending match${r.pending_matches === 1 ? "" : "es"} made against the case's tracks, waiting for review.`);
      for (const n of r.notes || []) line(n, "warn");
      flash("Enrolled.", "ok");
    } catch (e) {
      $("#enrol-title").textContent = "Refused";
      for (const reason of String(e.message).split("\n")) if (reason.trim()) line(reason.trim(), "error");
      flash("The enrolment was refused: nothing was stored.", "error");
    }
    out.hidden = false;
  }
}

const views = { search: initSearch, case: initCase, persons: initPersons, enrol: initEnrol };
if (root && views[root.dataset.view]) views[root.dataset.view]();
