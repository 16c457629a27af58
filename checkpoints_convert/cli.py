"""Command line: convert a Hugging Face checkpoint folder into a jaxgen checkpoint folder."""

from __future__ import annotations

import argparse
import math
import sys

from jaxgen.errors import CheckpointError, ConfigError

PROG = "python -m checkpoints_convert"


def _shard_gib(text: str) -> float:
    """``--max-shard-gib``: a positive, finite number (``float`` alone would accept nan, inf and negatives)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of GiB such as 2 or 0.5, got {text!r}")
    return value


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Convert a Hugging Face checkpoint folder (config.json + safetensors or "
                               "pytorch_model.bin) into a jaxgen checkpoint folder.")
    parser.add_argument("hf_dir", metavar="HF_DIR", help="Hugging Face checkpoint folder")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to create (must not exist)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="cast the weights (default: keep the checkpoint's dtype)")
    parser.add_argument("--max-shard-gib", type=_shard_gib, default=2.0, metavar="GIB",
                        help="largest params file, in GiB (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def _error(message: object) -> None:
    # One line, whatever the message holds: scripts and log scrapers read the first line only.
    print("error: " + " ".join(str(message).split("\n")), file=sys.stderr)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Run the converter; returns 0 on success, 2 on a user error or a failed write (printed as one
    ``error: ...`` line, no traceback), 130 on Ctrl-C and 143 on SIGTERM (nothing written in either case).

    ``prog`` is the command name that usage and ``--help`` show (``jaxgen convert`` from the jaxgen CLI).
    """
    args = build_parser(prog).parse_args(argv)
    # Imported after parsing so `--help` and argument errors do not wait for numpy and the reader.
    from checkpoints_convert.atomic import Terminated
    from checkpoints_convert.convert import convert_checkpoint

    try:
        out = convert_checkpoint(args.hf_dir, args.out_dir, dtype=args.dtype, progress=not args.quiet,
                                 max_shard_bytes=max(1, int(args.max_shard_gib * 1024**3)))
    except (CheckpointError, ConfigError) as e:
        _error(e)
        return 2
    except OSError as e:  # outside the writer (which names OUT_DIR), e.g. an unreadable source file
        _error(f"{e.filename or args.hf_dir}: {e.strerror or e}; check that path and its permissions.")
        return 2
    except Terminated as e:
        _error("terminated; nothing was written.")
        return int(e.code)
    except KeyboardInterrupt:
        _error("interrupted; nothing was written.")
        return 130
    if not args.quiet:
        print(f"wrote {out}", file=sys.stderr)
    return 0
