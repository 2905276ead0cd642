"""``python -m tlplug`` runs the command line."""

from tlplug.cli import main

main()
