// Auditor: the audit log, its chain status, exports.
import { api, esc, flash } from "/static/app.js";
