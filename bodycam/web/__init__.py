"""The web app served by `bodycam serve` at `/`: server-rendered shells plus small script
modules that call the server's own /api/v1 routes (no build step)."""
