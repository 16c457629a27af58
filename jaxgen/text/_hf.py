"""``import transformers`` for its tokenizers, without its advice that PyTorch is missing.

transformers logs "PyTorch was not found. Models won't be available ..." (through its own logger,
``transformers.utils.logging``) when it is first imported in an install without torch. jaxgen only uses its
tokenizers and never needs torch, so in ``jaxgen generate``'s output that line is noise. Only that one record is
dropped, only during the first import: the user's logging settings and every other message are untouched.
"""

from __future__ import annotations

import logging
import sys
import types

TORCH_ADVICE = "PyTorch was not found"


class _DropTorchAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return TORCH_ADVICE not in record.getMessage()


def import_transformers() -> types.ModuleType:
    """The ``transformers`` module, imported (first time) with its missing-PyTorch advice filtered out."""
    if "transformers" in sys.modules:  # imported before: the advice, if any, is already out
        return sys.modules["transformers"]
    # transformers logs it on its library root logger "transformers"; the standard library hands out the same
    # Logger object before transformers configures it, and a logger's filters see the records it creates.
    logger = logging.getLogger("transformers")
    advice = _DropTorchAdvice()
    logger.addFilter(advice)
    try:
        import transformers
    finally:
        logger.removeFilter(advice)
    return transformers
