// Supervisor and admin: accounts, case assignments and holds, thresholds, policy.
import { api, esc, flash } from "/static/app.js";
