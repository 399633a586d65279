"""Error types. Every user-facing failure raises one of these with a one-line message;
the command-line entry point prints it as a single line and exits non-zero."""


class FragilityError(Exception):
    """Base class for errors a user can fix (bad config, bad file, bad input)."""


class ConfigError(FragilityError, ValueError):
    """An unknown name, an impossible budget, a bad parameter value."""


class InputError(FragilityError, ValueError):
    """Images or labels that do not fit the model (wrong size, range, dtype)."""


class CheckpointError(FragilityError):
    """A checkpoint that is missing, corrupt, unsafe, or does not match the architecture."""


class DataError(FragilityError):
    """A dataset that is missing or malformed."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, at most ``limit`` characters ("" for none): how a
    library's multi-line error becomes part of one of ours."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else ""
