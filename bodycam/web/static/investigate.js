// Investigator: cases, search by photo, subject or track, unknown persons, enrolment.
import { api, esc, flash } from "/static/app.js";
