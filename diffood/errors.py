"""The exceptions diffood raises for bad input, so callers (CLI, app) can show one clear message."""


class DiffoodError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""


class DataUnavailableError(DiffoodError):
    """A dataset is not on disk and may not be downloaded."""


class CheckpointError(DiffoodError):
    """A checkpoint folder is missing, corrupt or does not match the expected config."""


class ImageInputError(DiffoodError):
    """An uploaded file is empty, not an image, truncated or too large."""
