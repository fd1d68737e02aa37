"""One module per `ftlaunch` verb that needs more than a few lines (cli.py wires them)."""
