"""Exceptions whose one-line message names the file, argument or option at fault."""


class KdlabError(Exception):
    """Base class: the CLI prints these as one line and exits with status 2."""


class DataError(KdlabError, ValueError):
    """A dataset file or layout is missing or malformed."""


class ConfigError(KdlabError, ValueError):
    """A config key, value, recipe or model option is invalid."""


class CheckpointError(KdlabError, ValueError):
    """A checkpoint is unreadable or does not match the model or dataset."""


class StorageError(KdlabError):
    """A file could not be written: the disk is full, or the directory is read-only or not ours.
    Atomic writes (`kdlab.runtime.atomic_path`) leave the file they were replacing as it was."""
