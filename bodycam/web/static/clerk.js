// Clerk: upload footage and follow its processing.
import { api, esc, flash } from "/static/app.js";
