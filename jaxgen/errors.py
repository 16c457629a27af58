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


def read_json_object(file: str, error: type[JaxgenError], what: str = "settings") -> dict:
    """``file`` parsed as a JSON object; anything else (invalid JSON, an array, a string...) raises ``error``
    naming the file."""
    import json

    try:
        with open(file, encoding="utf-8") as f:
            value = json.load(f)
    except json.JSONDecodeError as e:
        raise error(f"{file}: not valid JSON ({e}); fix or re-save it.") from e
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{file}: cannot be read ({e}).") from e
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
        raise error(f"{file}: holds {kind}, not a JSON object of {what}; fix or re-save it.")
    return value
