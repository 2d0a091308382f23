// Review: pending matches confirmed or rejected with a note.
import { api, esc, flash } from "/static/app.js";
