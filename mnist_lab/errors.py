"""The one exception type users see.

Anything raised as `LabError` is a problem with the input or the environment
(unknown model, corrupt data, no GPU): the CLI prints its message on one line and
exits non-zero instead of showing a traceback.
"""


class LabError(Exception):
    """A user-facing error whose message says what is wrong and what to do."""
