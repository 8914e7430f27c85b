"""Command line for the data layer: ``python -m bilevel.app.data download NAME``.

The main ``bilevel`` command mounts the same commands as ``bilevel data ...``
through :func:`add_subparser`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from bilevel.app.data.fetch import DEFAULT_MAX_TIME, MIRRORS, DownloadError, download, read_sha256sums
from bilevel.app.data.sources import DATASETS, DatasetNotFoundError, find_idx_files

_NAMES = sorted(DATASETS)


def _cmd_download(args: argparse.Namespace) -> int:
    try:
        sha256 = read_sha256sums(args.sha256sums) if args.sha256sums else None
        dest = download(args.name, dest=args.dest, base_url=args.base_url, timeout=args.timeout, force=args.force,
                        sha256=sha256, max_time=args.max_time)
    except (DownloadError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.name}: files ready in {dest}")
    return 0


def _cmd_locate(args: argparse.Namespace) -> int:
    try:
        images, labels = find_idx_files(args.name, args.split, args.root)
    except DatasetNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(images.parent)
    return 0


def _add_commands(subparsers: "argparse._SubParsersAction") -> None:
    """Register ``download`` and ``locate`` on an argparse sub-parser collection."""
    p = subparsers.add_parser(
        "download",
        help="download the official IDX files of a dataset",
        description="Download the four official IDX files of NAME, verify their pinned SHA-256, size and "
        "IDX shape, and store them in DEST. Mirrors are tried in order (https first).",
    )
    p.add_argument("name", choices=_NAMES, metavar="NAME", help=f"dataset: {', '.join(_NAMES)}")
    p.add_argument("--dest", default=None, metavar="DIR", help="target directory (default: ~/.cache/bilevel/NAME)")
    defaults = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(MIRRORS.items()))
    p.add_argument("--base-url", default=None, metavar="URL",
                   help=f"URL prefix of the files, instead of the mirrors (default, in order: {defaults})")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="socket timeout in seconds (default: 30)")
    p.add_argument("--max-time", type=float, default=DEFAULT_MAX_TIME, metavar="S",
                   help=f"overall time limit of the download in seconds (default: {DEFAULT_MAX_TIME:g})")
    p.add_argument("--sha256sums", default=None, metavar="FILE",
                   help="sha256sum-style file ('HEX  NAME' lines) replacing the pinned official hashes, "
                        "for a mirror of other data (default: the official hashes)")
    p.add_argument("--force", action="store_true", help="re-download files that are already present")
    p.set_defaults(func=_cmd_download)

    p = subparsers.add_parser("locate", help="print the directory a dataset is loaded from")
    p.add_argument("name", choices=_NAMES, metavar="NAME", help=f"dataset: {', '.join(_NAMES)}")
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--root", default=None, metavar="DIR", help="directory searched first")
    p.set_defaults(func=_cmd_locate)


def add_subparser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register the ``data`` command (with ``download`` and ``locate``) on a parent CLI.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The object returned by ``parser.add_subparsers()`` of the parent CLI.

    Returns
    -------
    argparse.ArgumentParser
        The ``data`` parser.  Parsed arguments carry ``func``; call
        ``args.func(args)`` to run the command, it returns an exit code.
    """
    data = subparsers.add_parser("data", help="get and inspect datasets", description="Get and inspect datasets.")
    inner = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    _add_commands(inner)
    return data


def build_parser() -> argparse.ArgumentParser:
    """Return the stand-alone parser used by ``python -m bilevel.app.data``.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(prog="python -m bilevel.app.data", description="Get and inspect datasets.")
    _add_commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the data command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Process exit code (0 on success).
    """
    args = build_parser().parse_args(argv)
    return int(args.func(args))
