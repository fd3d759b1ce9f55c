"""One exception type for user-facing failures, so the CLI can print them without a traceback."""


class ClipimoError(RuntimeError):
    """A problem with the user's input, files or environment, explained in the message."""


class Terminated(ClipimoError):
    """Stopped by SIGTERM after saving what is needed to resume; the CLI exits with ``exit_code``."""

    exit_code = 143
