"""Command line: convert a Hugging Face checkpoint folder into a jaxgen checkpoint folder."""

from __future__ import annotations

import argparse
import sys

from jaxgen.errors import CheckpointError, ConfigError


def build_parser(prog: str = "python -m checkpoints_convert") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Convert a Hugging Face checkpoint folder (config.json + safetensors or "
                               "pytorch_model.bin) into a jaxgen checkpoint folder.")
    parser.add_argument("hf_dir", metavar="HF_DIR", help="Hugging Face checkpoint folder")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to create (must not exist)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="cast the weights (default: keep the checkpoint's dtype)")
    parser.add_argument("--max-shard-gib", type=float, default=2.0, help="largest params file, in GiB (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the converter; returns 0 on success, 2 on a user error (printed as ``error: ...``, no traceback)."""
    args = build_parser().parse_args(argv)
    # Imported here so `--help` and argument errors stay fast (conversion pulls in jax/flax for the shapes).
    from checkpoints_convert.convert import convert_checkpoint

    try:
        out = convert_checkpoint(args.hf_dir, args.out_dir, dtype=args.dtype, progress=not args.quiet,
                                 max_shard_bytes=max(1, int(args.max_shard_gib * 1024**3)))
    except (CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written.", file=sys.stderr)
        return 130
    if not args.quiet:
        print(f"wrote {out}", file=sys.stderr)
    return 0
