// Shared helpers of every page: API calls with the session cookie and the CSRF token,
// problem documents shown as one line, safe HTML building.
const CSRF = document.querySelector('meta[name="csrf-token"]')?.content ?? "";

export class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

// Call /api/v1: JSON in (or FormData / a Blob), JSON out; errors raise ApiError(detail).
export async function api(method, path, body, opts = {}) {
  const headers = { "Accept": "application/json", ...(opts.headers || {}) };
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = CSRF;
  let payload = body;
  if (body !== undefined && !(body instanceof FormData) && !(body instanceof Blob)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const r = await fetch("/api/v1" + path, { method, headers, body: payload,
                                            credentials: "same-origin" });
  if (r.status === 401) { window.location.assign("/"); throw new ApiError(401, "signed out"); }
  const type = r.headers.get("content-type") || "";
  const data = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new ApiError(r.status, (data && data.detail) || String(data) || r.statusText);
  return data;
}

// Every item of a paginated list route.
export async function pages(path, params = {}) {
  const items = [];
  let offset = 0;
  for (;;) {
    const q = new URLSearchParams({ ...clean(params), limit: "500", offset: String(offset) });
    const page = await api("GET", `${path}?${q}`);
    items.push(...page.items);
    if (page.next_offset === null || page.next_offset === undefined) return items;
    offset = page.next_offset;
  }
}

export function clean(obj) {
  return Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== undefined && v !== null && v !== ""));
}

// Text into HTML, never markup: names, file names and notes come from users.
export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// One status line for the page (role=status, read by screen readers).
export function flash(message, kind = "") {
  const el = document.getElementById("flash");
  el.className = kind;
  el.textContent = message;
}

export function seconds(s) {
  const m = Math.floor(s / 60);
  return `${m}:${(s - m * 60).toFixed(1).padStart(4, "0")}`;
}

export const csrf = CSRF;

// Seek a player to a time in its file. Chromium first takes the duration from the file's
// header, which can end before the last frames of a video that starts late in its file, and
// clamps a seek past it; once reading the file gives the true duration, the seek is made
// again (bb21: a lead opened 2.1 s early, in another scene). A target not reached within
// 10 s is dropped, so that a later seek of the viewer's own is left alone.
export function seekTo(v, t) {
  v.dataset.seekTo = String(t);
  v.dataset.seekAt = String(Date.now());
  if (!v.dataset.seeker) {
    v.dataset.seeker = "1";
    const again = () => {
      const want = Number(v.dataset.seekTo);
      if (!v.dataset.seekTo || Date.now() - Number(v.dataset.seekAt) > 10000) return;
      if (Math.abs(v.currentTime - want) < 0.25) delete v.dataset.seekTo;
      else if (v.duration >= want) v.currentTime = want;
    };
    v.addEventListener("durationchange", again);
    v.addEventListener("seeked", again);
    v.addEventListener("loadeddata", again);
  }
  v.currentTime = t;
}
