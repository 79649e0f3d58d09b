"""tfllm: transformer language models in TensorFlow, from raw text to production.

Example:
    >>> import tfllm
    >>> lm = tfllm.load("runs/demo")  # doctest: +SKIP
"""

from tfllm.config import PRESETS, ModelConfig, get_preset
from tfllm.errors import ConfigError, DataError, RunDirError, TfllmError, TokenizerError
from tfllm.runs import load

__version__ = "0.1.0"
__all__ = ["ModelConfig", "PRESETS", "get_preset", "load", "TfllmError", "ConfigError",
           "DataError", "RunDirError", "TokenizerError"]
