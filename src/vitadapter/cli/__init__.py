"""The ``vitadapter`` command line: one module per sub-command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..backends.host_memory import keep_freed_memory
from ..errors import VitAdapterError
from . import convert, evaluate, export_onnx, presets, segment, serve, train

COMMANDS = (segment, evaluate, train, serve, convert, export_onnx, presets)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitadapter",
        description="ViT-Adapter semantic segmentation in pure PyTorch: BEiT or plain ViT "
                    "(DeiT, AugReg) backbones with Mask2Former or UperNet heads; segment, "
                    "evaluate, fine-tune, serve and export the released models.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print errors")
    parser.add_argument("--version", action="version", version=f"vitadapter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    for command_parser in sub.choices.values():  # `vitadapter segment -q` as well
        command_parser.add_argument("-q", "--quiet", action="store_true",
                                    default=argparse.SUPPRESS, help="only print errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    keep_freed_memory()  # a forward's large tensors reused, not faulted in again
    try:
        return int(args.run(args) or 0)
    except VitAdapterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
