"""Error classes; each maps to its own process exit code in the CLI."""


class DistrecError(Exception):
    """Base class of every error distrec reports to the user instead of a traceback."""

    exit_code = 1


class DataError(DistrecError):
    """Bad input data: the message names the file, the column and how many values are wrong."""

    exit_code = 2


class ConfigError(DistrecError):
    """An unknown or ill-typed configuration key or value."""

    exit_code = 3


class CheckpointError(DistrecError):
    """A checkpoint that is missing, incomplete or does not match the model."""

    exit_code = 4
