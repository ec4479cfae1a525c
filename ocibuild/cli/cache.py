"""``ocibuild cache ls|prune``: the local build cache, listed and kept under a size (the work is in ``cache.manage``).

stdout carries the listing (ls) and the summary (prune).
"""

from __future__ import annotations

import time
from pathlib import Path

from ..events import human_size
from ..settings import Settings


def add_parser(sub) -> None:
    """The ``cache`` command and its subcommands, on ``build_parser``'s subparsers."""
    c = sub.add_parser("cache", help="the local build cache: list it, prune it to a size")
    c.set_defaults(handler=run)
    csub = c.add_subparsers(dest="cache_command", required=True)
    ls = csub.add_parser("ls", help="every blob the cache holds: last use, size, what it is")
    prune = csub.add_parser(
        "prune", help="remove the least recently used blobs down to a size (safe while builds run)"
    )
    prune.add_argument("--max-size", required=True, metavar="SIZE", help="e.g. 20G, 500M (binary units)")
    for p in (ls, prune):
        p.add_argument("--cache", type=Path, help="the cache (default: $OCIBUILD_CACHE or ~/.cache/ocibuild)")


def run(args) -> int:
    from ..cache.manage import list_entries, parse_size, prune
    from ..oci.store import BlobStore

    root = args.cache or Settings.from_environ().cache_dir
    if args.cache_command == "prune":
        max_size = parse_size(args.max_size)  # a bad size fails before the cache is touched
        store = BlobStore(root)
        result = prune(store, max_size)
        print(f"removed {_blobs(len(result.removed))} ({human_size(sum(e.size for e in result.removed))}); "
              f"{root} holds {human_size(result.size)}")  # fmt: skip
        if result.kept_recent:
            print(
                f"kept {_blobs(result.kept_recent)} used in the last hour: a build is running; prune again later"
            )
        return 0
    if not (Path(root) / "blobs").is_dir():
        print(f"{root}: no cache yet")
        return 0
    entries = list_entries(BlobStore(root))
    now = time.time()
    print(f"{'LAST USED':>10}  {'SIZE':>9}  {'DIGEST':<12}  WHAT")
    for e in entries:
        print(f"{_age(now - e.last_used):>10}  {human_size(e.size):>9}  {e.digest.short:<12}  {e.what}")
    print(f"{_blobs(len(entries))}, {human_size(sum(e.size for e in entries))} in {root}")
    return 0


def _age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{int(seconds // length)} {unit} ago"
    return "just now"


def _blobs(n: int) -> str:
    return f"{n} blob" if n == 1 else f"{n} blobs"
