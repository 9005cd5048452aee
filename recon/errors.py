"""User-facing errors.

`ReconError` carries a one-line message meant for the person running the tool. The CLI prints it
(without a traceback) and exits non-zero. Raise it wherever bad input is detected; never let a
library's deep traceback be the only explanation of a user mistake.
"""


class ReconError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
