"""`python -m bodycam` runs the CLI."""

from bodycam.cli import main

main()
