"""The ``raybench data`` command group: ``synth``, ``check`` and ``fetch``.

:func:`add_data_commands` plugs into the main CLI's sub-parsers; every handler takes the
parsed namespace and returns an exit code (0 ok, 1 data problem, 2 usage error).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from raybench.data.errors import DatasetOptionError, DownloadError


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value); the value is JSON when it parses (``[3,32]``, ``true``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--option expects key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def _options(items: list[str] | None) -> dict[str, Any]:
    return dict(parse_option(t) for t in items or [])


def cmd_synth(args: argparse.Namespace) -> int:
    """Write a synthetic dataset in the real on-disk format."""
    from raybench.data.synth import synthesize

    try:
        out = synthesize(
            args.name, args.dir, images=args.images, size=args.size, seed=args.seed, **_options(args.option)
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote synthetic {args.name} ({args.images} images, seed {args.seed}) to {out}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a dataset on disk; exit 1 on fatal problems."""
    from raybench.data.check import check_dataset_files, format_report
    from raybench.data.registry import dataset_class, list_datasets

    try:
        options = _options(args.option)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.name not in list_datasets():
        print(
            f"error: unknown dataset {args.name!r}; known datasets: {', '.join(list_datasets())}",
            file=sys.stderr,
        )
        return 2
    if args.max_images is not None and args.max_images < 0:
        print(
            f"error: --max-images must be >= 0 (0 = indexing checks only), got {args.max_images}",
            file=sys.stderr,
        )
        return 2
    try:  # option values first: a typo is a usage error, not a data problem
        dataset_class(args.name).validate_options(options)
    except DatasetOptionError as exc:
        print(f"error: {exc} (dataset {args.name!r}, --option)", file=sys.stderr)
        return 2
    report = check_dataset_files(args.name, args.root, options, max_images=args.max_images)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def cmd_fetch(args: argparse.Namespace) -> int:
    """Download a public dataset, or print the manual steps (exit 1) when it needs a login."""
    from raybench.data.fetch import ManualDownloadRequired, fetch

    try:
        paths = fetch(
            args.name, args.dest, base_url=args.base_url, progress=not args.quiet, extract=not args.no_extract
        )
    except ManualDownloadRequired as exc:
        print(f"{args.name} cannot be downloaded automatically. Steps:\n{exc}")
        return 1
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in paths:
        print(f"ok: {p}")
    print(f"next: raybench data check {args.name} {args.dest}")
    return 0


def add_data_commands(subparsers: Any) -> None:
    """Add ``data {synth,check,fetch}`` to an argparse sub-parsers object."""
    from raybench.data.fetch import MANUAL, SOURCES
    from raybench.data.synth import SYNTHESIZERS

    data = subparsers.add_parser("data", help="dataset tools: synthetic copies, checks, downloads")
    sub = data.add_subparsers(dest="data_command", metavar="{synth,check,fetch}")
    sub.required = True

    p = sub.add_parser("synth", help="write a small synthetic dataset in the real on-disk format")
    p.add_argument("name", choices=sorted(SYNTHESIZERS))
    p.add_argument(
        "dir", help="output folder: new, empty, or written by an earlier `data synth` (then cleared)"
    )
    p.add_argument("--images", type=int, default=8, help="number of images (default 8)")
    p.add_argument("--size", type=int, default=None, help="image height in pixels (default: the real size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="e.g. csv_format=old (severstal)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("check", help="validate a dataset on disk and summarise it")
    p.add_argument(
        "name", help="dataset format (severstal, rubber_rings, rareplanes, gdxray, coco, mask_folder)"
    )
    p.add_argument("root")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--option", action="append", metavar="KEY=VALUE", help="dataset option (value parsed as JSON)"
    )
    p.add_argument(
        "--max-images",
        type=int,
        default=None,
        help="decode at most N images per split (0: indexing checks only; default: all)",
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("fetch", help="download a dataset (or print the manual steps)")
    p.add_argument("name", choices=sorted([*SOURCES, *MANUAL]))
    p.add_argument("dest")
    p.add_argument("--base-url", default=None, help="mirror / test server instead of the public URL")
    p.add_argument("--no-extract", action="store_true", help="keep archives packed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fetch)
