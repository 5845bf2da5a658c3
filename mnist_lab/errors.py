"""The one exception type users see.

Anything raised as `LabError` is a problem with the input or the environment
(unknown model, corrupt data, no GPU): the CLI prints its message on one line and
exits non-zero instead of showing a traceback.
"""


class LabError(Exception):
    """A user-facing error whose message says what is wrong and what to do."""


def shortlist(items: list[str], shown: int = 3) -> list[str]:
    """The first `shown` items and "N more": a message names what changed, however much did."""
    items = list(items)
    return items if len(items) <= shown + 1 else [*items[:shown], f"{len(items) - shown} more"]
