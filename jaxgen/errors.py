"""Exceptions raised by jaxgen. Every message says what was wrong and what to do."""


class JaxgenError(Exception):
    """Base class of jaxgen's own errors."""


class ConfigError(JaxgenError, ValueError):
    """A model config (``config.json``) jaxgen cannot use: unknown family, bad or unsupported field."""


class CheckpointError(JaxgenError):
    """A checkpoint folder or file that cannot be read, converted or written."""
