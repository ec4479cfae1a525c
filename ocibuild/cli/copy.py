"""``ocibuild copy``: its arguments, and the digest printed last."""

from __future__ import annotations

import argparse

from ..settings import Settings
from .common import progress, registry_arguments, registry_options


def add_parser(sub) -> None:
    c = sub.add_parser(
        "copy",
        help="copy an image between registries, OCI layouts and archives without changing its digest",
        description="Copy SRC to each DEST, each oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG] "
        "or a registry REF (docker://HOST/REPO:TAG). Manifests and blobs travel byte for byte, verified; "
        "blobs a destination has are skipped. Prints the digest.",
    )
    c.set_defaults(handler=run)
    c.add_argument("source", metavar="SRC")
    c.add_argument("destinations", nargs="+", metavar="DEST")
    which = c.add_mutually_exclusive_group()
    which.add_argument("--all-platforms", action="store_true", help="copy a multi-platform index whole")
    which.add_argument(
        "--platform", help="from an index, copy this os/arch[/variant] only (default linux/amd64)"
    )
    c.add_argument(
        "--tag", action="append", default=[], metavar="TAG",
        help="also tag the copy: a tag in DEST's repository, or NAME:TAG in an archive (repeatable)",
    )  # fmt: skip
    c.add_argument(
        "--append",
        action="store_true",
        help="add to the archive DEST instead of replacing it (docker save a b c)",
    )
    c.add_argument("--src-creds", metavar="USER:PASSWORD", help="for a registry SRC")
    c.add_argument("--dest-creds", metavar="USER:PASSWORD", help="for the registry DESTs")
    c.add_argument(
        "--no-referrers", dest="referrers", action="store_false",
        help="leave behind what sits beside the image (its SBOM, provenance and other referrers, its cosign "
        "signature); by default they travel with it where the destination can hold them",
    )  # fmt: skip
    c.add_argument("-q", "--quiet", action="store_true", help="print only the digest")
    registry_arguments(c)


def run(args: argparse.Namespace) -> int:
    from ..copy import bind_credentials, copy

    settings = Settings.from_environ()
    source_options, dest_options = bind_credentials(
        registry_options(args, settings), args.source, args.destinations, args.src_creds, args.dest_creds
    )
    report = progress(args)
    digest = copy(
        args.source,
        args.destinations,
        platform=args.platform,
        all_platforms=args.all_platforms,
        tags=args.tag,
        append=args.append,
        source_options=source_options,
        dest_options=dest_options,
        progress=report,
        mtime=settings.source_date_epoch,
        referrers=args.referrers,
    )
    report.step(f"copied {args.source} to {', '.join(args.destinations)}")
    print(digest)
    return 0
