"""One exception type for mistakes a user can make.

The CLI prints an AdambaError as a single line and exits non-zero; anything else is a bug
and keeps its traceback.
"""


class AdambaError(Exception):
    """A user-facing error: bad config, missing file, mismatched checkpoint..."""
