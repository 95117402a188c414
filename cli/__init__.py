"""The ``medfair`` command: a thin Typer layer over :mod:`medfair_audit`."""
