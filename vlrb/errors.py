"""The error a user can act on: bad input, a bad config value, a folder vlrb must not touch.

Jobs (`vlrb.jobs`) show a `VlrbError` as one line, `error: <message>`, and exit non-zero; any other exception
is a bug and keeps its traceback. Set HYDRA_FULL_ERROR=1 to see the traceback of a VlrbError too.
"""


class VlrbError(Exception):
    """Base of every error caused by the user's input or config (the message says what to do)."""


class ConfigError(VlrbError, ValueError):
    """A config value that cannot work (checked before anything heavy is loaded)."""
