"""The one error type the CLI turns into a clear message and exit code 2."""


class RwftError(Exception):
    """A user-facing error: bad input, a bad option, a missing model. The message says where and what."""
