// Supervisor and admin: accounts, case assignments and holds, thresholds, policy.
import { api, esc, flash, pages } from "/static/app.js";

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

// Run a change; the server's refusal is shown as its one line (role=alert). While it runs, the
// flash says so (the last outcome stayed up, as if the click had done nothing) and the form's
// buttons are disabled (a second click would send it again).
async function change(fn, done, form = null, busy = "Working…") {
  const buttons = form ? [...form.querySelectorAll("button")] : [];
  for (const b of buttons) b.disabled = true;
  okFlash();
  flash(busy);
  try {
    const out = await fn();
    flash(done(out), "ok");
    return out;
  } catch (e) {
    flash(e.message, "error");
    $("flash").setAttribute("role", "alert");
    return null;
  } finally {
    for (const b of buttons) b.disabled = false;
  }
}

function okFlash() { $("flash").setAttribute("role", "status"); }

// ---- accounts (admin) ----
async function loadAccounts() {
  const body = $("accounts").tBodies[0];
  let users;
  try { users = await pages("/users"); } catch (e) { body.innerHTML = `<tr><td colspan="5" class="error">${esc(e.message)}</td></tr>`; return; }
  body.innerHTML = users.map((u) => `<tr data-user="${esc(u.name)}">
    <th scope="row">${esc(u.name)}</th><td>${esc(u.roles.join(", "))}</td>
    <td>${esc(u.cases.join(", ")) || '<span class="muted">none</span>'}</td>
    <td>${u.disabled ? '<span class="warn">disabled</span>' : "active"}</td>
    <td>${u.disabled ? "" : `<button type="button" class="secondary" data-disable="${esc(u.name)}">Disable ${esc(u.name)}</button>`}</td>
  </tr>`).join("") || '<tr><td colspan="5" class="muted">No accounts.</td></tr>';
  const sel = $("assign-user");
  const keep = sel.value;
  sel.innerHTML = users.filter((u) => !u.disabled)
    .map((u) => `<option value="${esc(u.name)}">${esc(u.name)}</option>`).join("");
  if (keep) sel.value = keep;
}

function initAccounts() {
  loadAccounts();
  $("accounts").addEventListener("click", async (ev) => {
    const name = ev.target.closest("button[data-disable]")?.dataset.disable;
    if (!name) return;
    if (!window.confirm(`Disable ${name}? Every token and session of this account stops working at once; this cannot be undone from here.`)) return;
    okFlash();
    await change(() => api("POST", `/users/${enc(name)}/disable`), () => `${name} disabled; its tokens are revoked.`);
    loadAccounts();
  });
  $("add-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    okFlash();
    // The last account's one-time token is not left beside another's outcome (a refused
    // creation showed it under the new name's form: bb25).
    $("new-token").hidden = true;
    $("new-token-value").value = "";
    const f = ev.target;
    const roles = [...f.querySelectorAll('input[name="roles"]:checked')].map((c) => c.value);
    if (!roles.length) { flash("Choose at least one role.", "error"); return; }
    const name = $("add-name").value.trim();
    const out = await change(() => api("POST", "/users", { name, roles }),
      (o) => `Account ${o.name} created with roles ${o.roles.join(", ")}. Copy its token now.`, f);
    if (!out) return;
    $("new-token-name").textContent = out.name;
    $("new-token-value").value = out.token;
    $("new-token").hidden = false;
    $("new-token-value").focus();
    $("new-token-value").select();
    f.reset();
    loadAccounts();
  });
  $("copy-token").addEventListener("click", async () => {
    const input = $("new-token-value");
    input.select();
    try { await navigator.clipboard.writeText(input.value); flash("Token copied to the clipboard.", "ok"); }
    catch { flash("Select the token and press Ctrl+C to copy it.", ""); }
  });
  $("assign-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    okFlash();
    const name = $("assign-user").value, c = $("assign-case").value.trim();
    const out = await change(() => api("POST", `/users/${enc(name)}/cases`, { case: c }),
      (o) => `${o.name} is assigned to case ${o.case}.`, ev.target);
    if (out) { ev.target.reset(); loadAccounts(); }
  });
}

// ---- cases (supervisor, admin) ----
async function loadCases() {
  const body = $("cases").tBodies[0];
  let cases;
  try { cases = await pages("/cases"); } catch (e) { body.innerHTML = `<tr><td colspan="3" class="error">${esc(e.message)}</td></tr>`; return; }
  body.innerHTML = cases.map((c) => `<tr data-case="${esc(c.case)}">
    <th scope="row">${esc(c.case)}</th>
    <td>${esc(c.users.join(", ")) || '<span class="muted">nobody</span>'}</td>
    <td>${c.held ? `<strong class="warn">held</strong> by ${esc(c.held_by)} since ${esc(c.held_at)}: ${esc(c.hold_reason)}` : '<span class="muted">not held</span>'}</td>
  </tr>`).join("") || '<tr><td colspan="3" class="muted">No cases yet.</td></tr>';
}

function initCases() {
  loadCases();
  $("case-assign-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    okFlash();
    const op = ev.submitter?.value || "assign";
    const name = $("ca-user").value.trim(), c = $("ca-case").value.trim();
    const out = op === "unassign"
      ? await change(() => api("DELETE", `/users/${enc(name)}/cases/${enc(c)}`), (o) => `${o.name} no longer sees case ${o.case}.`, ev.target)
      : await change(() => api("POST", `/users/${enc(name)}/cases`, { case: c }), (o) => `${o.name} is assigned to case ${o.case}.`, ev.target);
    if (out) loadCases();
  });
  $("hold-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    okFlash();
    const op = ev.submitter?.value === "release" ? "release" : "hold";
    const c = $("hold-case").value.trim(), reason = $("hold-reason").value.trim();
    if (!reason) { flash("Give the reason: it is recorded in the audit log.", "error"); return; }
    // Releasing a hold lets retention delete what the hold kept: asked once more (bb25).
    if (op === "release" && !window.confirm(`Release the legal hold on case ${c}? What the hold kept from retention may then be deleted when its time is up.`)) return;
    const out = await change(() => api("POST", `/cases/${enc(c)}/${op}`, { reason }),
      (o) => o.held ? `Case ${o.case} is on legal hold.${o.videos ? "" : " It holds no footage yet: the hold covers what arrives (check the case number)."}` : `The hold on case ${o.case} is released.`, ev.target);
    if (out) { ev.target.reset(); loadCases(); }
  });
}

// ---- thresholds (supervisor) ----
async function loadThresholds() {
  const body = $("thresholds").tBodies[0];
  let rows;
  try { rows = await api("GET", "/thresholds"); } catch (e) { body.innerHTML = `<tr><td colspan="5" class="error">${esc(e.message)}</td></tr>`; return; }
  const num = (v) => v === null || v === undefined ? '<span class="muted">not calibrated</span>' : esc(v);
  body.innerHTML = rows.map((t) => `<tr data-model="${esc(t.model)}">
    <th scope="row">${esc(t.model)}</th><td class="default">${num(t.default)}</td><td class="floor">${num(t.floor)}</td>
    <td>${num(t.calibrated_floor)}</td>
    <td>${t.changed_by ? `${esc(t.changed_by)}, ${esc(t.changed_at)}: ${esc(t.reason)}` : '<span class="muted">configured values</span>'}</td>
  </tr>`).join("");
  const sel = $("th-model");
  const keep = sel.value;
  sel.innerHTML = rows.map((t) => `<option value="${esc(t.model)}">${esc(t.model)}</option>`).join("");
  if (keep) sel.value = keep;
}

function initThresholds() {
  loadThresholds();
  $("thresholds-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    okFlash();
    const f = ev.target;
    const model = f.model.value;
    // Sent as typed: the server parses and judges every value (NaN, range, calibrated floor).
    const body = { default: f.default.value.trim(), floor: f.floor.value.trim(), reason: f.reason.value };
    const out = await change(() => api("PUT", `/thresholds/${enc(model)}`, body),
      (o) => `${o.model}: default ${o.default}, floor ${o.floor}.`, f);
    if (out) { f.reason.value = ""; loadThresholds(); }
  });
}

// ---- policy (admin) ----
async function loadPolicy() {
  const dl = $("policy");
  let p;
  try { p = await api("GET", "/policy"); } catch (e) { dl.innerHTML = `<dt>Policy</dt><dd class="error">${esc(e.message)}</dd>`; return; }
  dl.innerHTML = `<dt>Profile</dt><dd id="policy-profile"><strong>${esc(p.profile)}</strong></dd>
    <dt>Reviewers required to confirm a match</dt><dd>${esc(p.reviewers_required)}${p.reviewers_explicit ? " (set by an admin)" : ""}</dd>
    <dt>Enrolments approved by a supervisor</dt><dd>${p.enrolment_approval ? "yes" : "no"}</dd>
    <dt>Retention of bystander biometric data</dt><dd>${esc(p.retention_days)} days</dd>`;
  $("pol-profile").value = p.profile;
  showWarning();
}

function showWarning() {
  $("pol-warning").hidden = $("pol-profile").value !== "redact-only";
}

function initPolicy() {
  loadPolicy();
  $("pol-profile").addEventListener("change", showWarning);
  $("policy-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    okFlash();
    const f = ev.target;
    const profile = f.profile.value;
    if (profile === "redact-only" && !$("pol-confirm").checked) {
      flash("Tick the box to confirm: redact-only deletes every face template.", "error");
      $("pol-confirm").focus();
      return;
    }
    const body = { profile, reason: f.reason.value };
    if (f.reviewers.value !== "") body.reviewers = Number(f.reviewers.value);
    if (f.retention_days.value !== "") body.retention_days = Number(f.retention_days.value);
    const out = await change(() => api("PUT", "/policy", body), (o) => `Policy is now ${o.profile}.` +
      (o.settled_matches.length ? ` ${o.settled_matches.length} pending match(es) confirmed: the confirmations already given meet the new count.` : ""), f);
    if (out) { f.reason.value = ""; f.reviewers.value = ""; f.retention_days.value = ""; $("pol-confirm").checked = false; loadPolicy(); }
  });
  $("reprocess-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    okFlash();
    const out = await change(() => api("POST", "/reprocess", { reason: ev.target.reason.value }),
      (o) => `${o.videos.length} videos queued again (${o.units_queued} units); ` +
        `${o.templates_rebuilt.length} watchlist entries enrolled again from their photos` +
        (o.left_with_matches.length ? `; ${o.left_with_matches.length} videos left, their ` +
          "parts with a matched face kept as they are." : "."), ev.target,
      // Each watchlist entry without templates is enrolled again from its photos first.
      "Enrolling the watchlist again from its photos, then queuing the footage: this takes " +
        "a moment per watchlist entry…");
    if (out) ev.target.reset();
  });
}

if ($("accounts")) initAccounts();
if ($("cases")) initCases();
if ($("thresholds")) initThresholds();
if ($("policy")) initPolicy();
