"""Exceptions raised by jaxgen. Every message says what was wrong and what to do."""


class JaxgenError(Exception):
    """Base class of jaxgen's own errors."""


class ConfigError(JaxgenError, ValueError):
    """A model config (``config.json``) jaxgen cannot use: unknown family, bad or unsupported field."""


class CheckpointError(JaxgenError):
    """A checkpoint folder or file that cannot be read, converted or written."""


class GenerationError(JaxgenError):
    """A generation call that ran but cannot give a trustworthy answer."""


class NonFiniteLogitsError(GenerationError, FloatingPointError):
    """The model produced NaN or +inf logits (NaN weights, or a float16 overflow): ``row`` and ``step`` say where.

    ``step`` counts generated tokens: 0 is the prefill's prediction of the first new token.
    """

    def __init__(self, message: str, row: int, step: int):
        super().__init__(message)
        self.row, self.step = row, step
