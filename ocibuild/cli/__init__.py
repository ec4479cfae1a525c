"""The ``ocibuild`` command: argument parsing and output only; all logic lives in the modules it calls.

stdout carries results (the image digest, last); progress and errors go to stderr. A user error is one line,
``ocibuild: error: …``, and a non-zero exit; never a traceback.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
from pathlib import Path

from ..errors import OcibuildError, UsageError
from ..settings import Settings
from ..version import __version__
from . import cache, copy, model, package
from .common import registry_arguments, registry_options


def cmd_inspect(args) -> int:
    from ..inspect import inspect_reference

    registry = registry_options(args, Settings.from_environ())
    print(inspect_reference(args.reference, args.platform, raw=args.raw, registry=registry, creds=args.creds))
    return 0


def cmd_sbom(args) -> int:
    from ..attest.sbom import read_sbom

    registry = registry_options(args, Settings.from_environ())
    sys.stdout.buffer.write(read_sbom(args.reference, args.platform, args.format, registry, args.creds))
    sys.stdout.flush()
    return 0


def cmd_verify(args) -> int:
    from ..attest.verify import verify_reference

    registry = registry_options(args, Settings.from_environ())
    print(verify_reference(args.reference, args.key, registry, args.creds, args.signed_for))
    return 0


def cmd_login(args) -> int:
    import getpass

    from ..registry.credentials import Credentials
    from ..registry.login import login, registry_host

    host = registry_host(args.registry)
    if args.password_stdin and not args.username:
        raise UsageError("--password-stdin needs --username")
    user = args.username or input("Username: ").strip()
    secret = sys.stdin.read().rstrip("\r\n") if args.password_stdin else getpass.getpass("Password: ")
    if not user or not secret:
        raise UsageError("a user name and a password are both needed")
    settings = Settings.from_environ()
    creds = Credentials(user, secret, source="ocibuild login")
    where = login(host, creds, registry_options(args, settings), args.authfile, settings.docker_config)
    print(f"Login Succeeded (credentials for {host} stored in {where})")
    return 0


def cmd_serve(args) -> int:
    from ..serve_local import serve_locally

    return serve_locally(args.entry_script, args.model, args.port, args.source_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocibuild",
        description="Package a trained model into a runnable scoring image, and move images and registered models "
        "between registries, OCI layouts and tarballs. No Docker daemon, no root.",
    )
    parser.add_argument("--version", action="version", version=f"ocibuild {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    package.add_parser(sub)
    copy.add_parser(sub)
    model.add_parser(sub)
    cache.add_parser(sub)
    i = sub.add_parser("inspect", help="show an image's manifest, config, layers and history")
    i.add_argument("reference", help="oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE or a registry REF")
    i.add_argument(
        "--platform",
        help="os/arch[/variant]: that platform's image of an index (default: the index's platforms; "
        "linux/amd64 of a layout or archive listing one image per platform)",
    )
    i.add_argument("--raw", action="store_true", help="print the manifest and config JSON as they are")
    i.add_argument("--creds", metavar="USER:PASSWORD", help="for a registry REF (default: as for package)")
    registry_arguments(i)
    sb = sub.add_parser("sbom", help="print the SBOM attached to an image (from its referrers)")
    sb.add_argument("reference", help="a registry REF, oci:DIR[:TAG] or oci-archive:FILE[:TAG]")
    sb.add_argument("--platform", help="os/arch[/variant]: that platform's image of an index (default linux/amd64)")
    sb.add_argument("--format", choices=["spdx", "cyclonedx"], help="which SBOM, when there are both")
    sb.add_argument("--creds", metavar="USER:PASSWORD", help="for a registry REF (default: as for package)")
    registry_arguments(sb)
    vf = sub.add_parser("verify", help="check an image's cosign signature with a public key")
    vf.add_argument("reference", help="a registry REF")
    vf.add_argument("--key", required=True, type=Path, metavar="PUB", help="the PEM public key (cosign.pub)")
    vf.add_argument(
        "--signed-for", metavar="HOST/REPO",
        help="the repository the signature must name (default: the one REF is in; for a mirror, the original)",
    )  # fmt: skip
    vf.add_argument("--creds", metavar="USER:PASSWORD", help="for the registry (default: as for package)")
    registry_arguments(vf)
    lg = sub.add_parser("login", help="check and store registry credentials where docker login would")
    lg.add_argument("registry", help="registry host, e.g. registry.example.com or localhost:5000")
    lg.add_argument("-u", "--username")
    lg.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    registry_arguments(lg)
    s = sub.add_parser("serve", help="run the scoring server locally on the host, no image")
    s.add_argument("--entry-script", required=True, type=Path)
    s.add_argument(
        "--model", action="append", default=[], type=Path, help="model file or folder (repeatable)"
    )
    s.add_argument("--source-dir", type=Path)
    s.add_argument("--port", type=int, default=5001)
    return parser


INTERRUPTED = "ocibuild: interrupted; nothing was written at the destination"


class _Terminated(KeyboardInterrupt):
    """SIGTERM (what CI cancellation and ``docker stop`` send), unwound like Ctrl-C so temp files are removed."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"inspect": cmd_inspect, "serve": cmd_serve, "login": cmd_login, "sbom": cmd_sbom, "verify": cmd_verify}
    if args.command != "serve":  # the scoring server installs its own graceful-stop handler
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return (handlers.get(args.command) or args.handler)(args)
    except OcibuildError as e:
        print(f"ocibuild: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print(INTERRUPTED, file=sys.stderr)
        # CPython marks a KeyboardInterrupt that leaves an exec() of a string (dataclasses build methods so, at
        # import) as unhandled, and then dies by SIGINT at exit even though it was handled here; a clean exec
        # clears that mark, so the exit code is ours.
        exec("")
        return 143 if isinstance(e, _Terminated) else 130
    except BrokenPipeError as e:
        if _stdout_closed():  # `ocibuild inspect REF | head`: the reader has what it wanted
            return 141  # as a shell reports a death by SIGPIPE
        print(f"ocibuild: error: {e.strerror or e}", file=sys.stderr)
        return 1
    except OSError as e:
        # Environmental failures (disk full, permission denied) are the user's to fix: one line, no traceback.
        where = f" ({e.filename})" if e.filename else ""
        print(f"ocibuild: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone; if so stdout now goes nowhere, so that Python's flush at
    exit stays quiet."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError):
        return False
    if gone:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return gone


if __name__ == "__main__":
    sys.exit(main())
