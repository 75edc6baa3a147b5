"""Exit statuses of the `fluxgraph` command and the error a user can fix."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # the workflow ran and a node failed
EXIT_USAGE = 2  # bad command line or unreadable workflow file (argparse uses 2 too)
EXIT_INVALID = 3  # the workflow failed validation
EXIT_INTERRUPTED = 130

EPILOG = """exit status: 0 success, 1 a node failed, 2 bad command line or unreadable file,
3 the workflow failed validation, 130 interrupted (Ctrl-C; press twice to stop at once)"""


class CliError(Exception):
    """A problem the user can fix (bad file, bad --set); printed without a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code
