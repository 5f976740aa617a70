"""The one exception type for mistakes a user can make."""


class UsageError(Exception):
    """A mistake in flags or data that the user can fix.

    The entry point prints it as a single `error: <message>` line and exits 1,
    without a traceback. The message should name the flag at fault and, where
    it applies, the valid choices.
    """


class NumericError(UsageError):
    """Training diverged (NaN or infinite loss): reported like a user error, nothing exported."""
