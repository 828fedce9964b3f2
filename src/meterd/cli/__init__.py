"""The ``meterd`` command: operators' and technicians' entry point.  Sits on top of everything.

Every subcommand that a script would call takes ``--json``.  Errors print one clear message to
stderr and exit non-zero: 2 for bad input (config, arguments, frames), 1 for a failed operation.
"""
