"""Options more than one command takes: registry TLS and credentials files, named as skopeo and podman name them."""

from __future__ import annotations

from pathlib import Path


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


def registry_options(args):
    from ..registry.transport import RegistryOptions

    options = RegistryOptions(
        auth_file=args.authfile, insecure=args.insecure, ca_cert=args.ca_cert, cert_dir=args.cert_dir
    )
    options.check()
    return options
