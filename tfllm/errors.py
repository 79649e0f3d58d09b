"""Exception types tfllm owns. The CLI turns any `TfllmError` into a one-line message."""

from tfllm.config import ConfigError, TfllmError


class DataError(TfllmError, ValueError):
    """A data source is missing, empty, unknown or too short."""


class RunDirError(TfllmError):
    """A run directory is missing, incomplete or would be overwritten."""


class TokenizerError(TfllmError, ValueError):
    """A tokenizer cannot be trained or loaded."""


__all__ = ["TfllmError", "ConfigError", "DataError", "RunDirError", "TokenizerError"]
