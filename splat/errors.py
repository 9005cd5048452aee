"""The splat library's one exception type.

Raised for input the library cannot work with (empty point clouds, wrong shapes, a diverged or collapsed
training). Its message is one line meant for a person; the application (recon) prints it as `error: ...`.
"""


class SplatError(Exception):
    """Bad input to, or a failure of, the splat library; the message is one line."""
