"""What every command shares: the environment read once, registry options named as skopeo and podman name them,
and progress rendered on stderr."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..events import Progress
from ..registry.options import RegistryOptions
from ..settings import Settings
from .render import Renderer


def registry_arguments(group) -> None:
    """TLS and auth-file options, named as skopeo and podman name them."""
    group.add_argument(
        "--authfile",
        type=Path,
        metavar="FILE",
        help="credentials file (default $REGISTRY_AUTH_FILE, podman's, docker's)",
    )
    group.add_argument("--ca-cert", type=Path, metavar="FILE", help="trust this CA (PEM) too")
    group.add_argument(
        "--cert-dir",
        type=Path,
        metavar="DIR",
        help="trust the *.crt CAs in DIR (and use a *.cert/*.key client pair)",
    )
    group.add_argument(
        "--insecure", action="store_true", help="allow plain HTTP and do not verify TLS certificates"
    )


def registry_options(args: argparse.Namespace, settings: Settings) -> RegistryOptions:
    options = settings.registry_options(
        auth_file=args.authfile, insecure=args.insecure, ca_cert=args.ca_cert, cert_dir=args.cert_dir
    )
    options.check()
    return options


def progress(args: argparse.Namespace) -> Progress:
    """Progress lines on stderr (only warnings with ``--quiet``)."""
    return Progress(Renderer(quiet=getattr(args, "quiet", False)))
