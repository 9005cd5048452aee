"""The depth library's one exception type.

Raised for input the library cannot work with (wrong shapes, missing weights, no valid depth). Its message
is one line meant for a person; the application (recon) prints it as `error: ...` without a traceback.
"""


class DepthError(Exception):
    """Bad input to, or an impossible request of, the depth library; the message is one line."""
