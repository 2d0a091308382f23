"""The web app's areas: clerk, investigate, review, govern, audit."""
