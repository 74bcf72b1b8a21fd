"""User-facing errors: the CLI prints their message (no traceback) and exits with code 2."""


class StatpruneError(Exception):
    """Bad input or an unusable model/data state that the user can fix."""
