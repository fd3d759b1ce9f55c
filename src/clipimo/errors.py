"""One exception type for user-facing failures, so the CLI can print them without a traceback."""


class ClipimoError(RuntimeError):
    """A problem with the user's input, files or environment, explained in the message."""
