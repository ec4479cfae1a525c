"""The ``ocibuild`` command: argument parsing and output only; all logic lives in the modules it calls.

stdout carries results (the image digest, last); progress and errors go to stderr. A user error is one line,
``ocibuild: error: …``, and a non-zero exit; never a traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .. import __version__
from ..errors import OcibuildError, UsageError
from ..events import Progress
from .common import registry_arguments, registry_options


def _package_parser(sub) -> None:
    p = sub.add_parser("package", help="package a model into a runnable scoring image")
    p.add_argument(
        "models", nargs="+", metavar="MODEL",
        help="model file(s) or folder(s), or registered models: docker://HOST/REPO:VERSION or HOST/REPO@sha256:…",
    )  # fmt: skip
    p.add_argument(
        "--entry-script", required=True, type=Path, help="score.py defining init() and run(raw_data)"
    )
    p.add_argument(
        "--source-dir", type=Path, help="folder copied as the app root; the entry script is inside it"
    )
    p.add_argument(
        "--requirements", action="append", default=[], type=Path, help="requirements.txt (repeatable)"
    )
    p.add_argument(
        "--pip", action="append", default=[], metavar="SPEC", help="extra pip requirement (repeatable)"
    )
    p.add_argument(
        "--conda-file", type=Path, help="conda environment.yml (its python version and pip: section)"
    )
    p.add_argument(
        "--base",
        help="base image: oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE, REF, scratch "
        "(default: $OCIBUILD_BASE or python:<host version>-slim)",
    )
    p.add_argument("--name", help="model name (default: the model file's name)")
    p.add_argument("--model-version", help="model version (default: 1, or a registered model's own version)")
    p.add_argument(
        "--tag", help="image name for --output/--oci-layout/--load, e.g. myimage:1 (default NAME:VERSION)"
    )
    p.add_argument("--platform", default="linux/amd64", help="os/arch[/variant] (default: linux/amd64)")
    p.add_argument(
        "--compression",
        default="gzip",
        choices=["gzip", "zstd", "none"],
        help="new layers' compression (default gzip; zstd is not readable by Docker before 23)",
    )
    p.add_argument(
        "--port", type=int, default=5001, help="port the scoring server listens on (default: 5001)"
    )
    p.add_argument(
        "--cache", type=Path, help="blob cache directory (default: $OCIBUILD_CACHE or ~/.cache/ocibuild)"
    )
    p.add_argument(
        "--no-cache", dest="use_cache", action="store_false",
        help="build every layer from its inputs again (results still go to the cache)",
    )  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="print only the digest")
    checks = p.add_argument_group("checks (that the image will start: native libraries, imports)")
    checks.add_argument(
        "--allow-import", action="append", default=[], metavar="NAME",
        help="accept this import of the entry script although the image lacks it (repeatable)",
    )  # fmt: skip
    checks.add_argument(
        "--skip-check", action="append", default=[], choices=["native", "imports"],
        help="do not run this check (repeatable)",
    )  # fmt: skip
    out = p.add_argument_group("output (exactly one)")
    out.add_argument(
        "--output", type=Path, metavar="FILE", help="tarball for docker load / podman load / skopeo"
    )
    out.add_argument(
        "--append",
        action="store_true",
        help="with --output: add the image to the tarball's images instead of replacing the file",
    )
    out.add_argument("--oci-layout", type=Path, metavar="DIR", help="OCI image layout directory")
    out.add_argument("--push", metavar="REF", help="push to a registry, e.g. registry.example.com/team/app:1")
    out.add_argument("--load", action="store_true", help="load into the local Docker or podman engine")
    out.add_argument("--dockerfile", type=Path, metavar="DIR", help="write a Dockerfile build context")
    reg = p.add_argument_group("registries (--push and a registry --base)")
    reg.add_argument(
        "--creds",
        metavar="USER:PASSWORD",
        help="for the --push registry (without --push: the --base one); default $OCIBUILD_REGISTRY_USER and "
        "$OCIBUILD_REGISTRY_PASSWORD, then what ocibuild/docker/podman login stored",
    )
    reg.add_argument(
        "--base-creds", metavar="USER:PASSWORD", help="for the --base registry when it is not the --push one"
    )
    reg.add_argument(
        "--additional-tag",
        action="append",
        default=[],
        metavar="TAG",
        help="also tag the pushed image (repeatable)",
    )
    registry_arguments(reg)


def _packageregistry_options(args):
    """Credentials bound to the registry each was given for: --creds to --push's, --base-creds to --base's."""
    from ..oci.name import parse_reference
    from ..registry.credentials import parse_creds
    from ..settings import default_base
    from ..transports.location import registry_reference

    options = registry_options(args)
    push = parse_reference(args.push) if args.push is not None else None
    base = registry_reference(args.base or default_base())
    if push is not None:
        options = options.for_target(push.registry, args.creds)
        for tag in args.additional_tag:
            parse_reference(f"{push.registry}/{push.repository}:{tag}")
    elif args.additional_tag:
        raise UsageError("--additional-tag needs --push")
    if base is not None:
        if args.base_creds:
            options = options.with_credentials(base.registry, parse_creds(args.base_creds, "--base-creds"))
        elif push is None:
            options = options.for_target(base.registry, args.creds)
    elif args.base_creds:
        raise UsageError("--base-creds is for a registry --base; this --base is not one")
    if args.creds and push is None and base is None:
        from ..models.registry import model_registries

        if not (hosts := model_registries(args.models)):
            raise UsageError(
                "--creds is for --push, a registry --base or a registered model; this command has none"
            )
        for host in hosts:  # no --push and no registry --base: the registered models' registries
            options = options.for_target(host, args.creds)
    return options


def _outputs(args) -> list[str]:
    chosen = []
    for opt in ("output", "oci_layout", "push", "dockerfile"):
        if getattr(args, opt) is not None:
            chosen.append("--" + opt.replace("_", "-"))
    if args.load:
        chosen.append("--load")
    return chosen


def cmd_package(args) -> int:
    from ..api import Environment, InferenceConfig, package

    outputs = _outputs(args)
    if len(outputs) != 1:
        raise UsageError(
            f"give exactly one output option, not {' and '.join(outputs) if outputs else 'none'}: "
            "--output FILE, --oci-layout DIR, --push REF, --load or --dockerfile DIR"
        )
    for opt in ("output", "oci_layout", "dockerfile"):
        dest = getattr(args, opt)
        if dest is not None and not dest.absolute().parent.is_dir():
            raise UsageError(
                f"--{opt.replace('_', '-')} {dest}: directory {dest.absolute().parent} does not exist; create it first"
            )
    if args.append and args.output is None:
        raise UsageError("--append adds to a tarball: use it with --output FILE")
    registry = _packageregistry_options(args)
    progress = Progress(quiet=args.quiet)
    env = Environment(pip_requirements=args.requirements, pip_packages=args.pip, conda_file=args.conda_file)
    pkg = package(
        args.models,
        InferenceConfig(args.entry_script, args.source_dir, env),
        args.base,
        name=args.name,
        version=args.model_version,
        platform=args.platform,
        compression=args.compression,
        port=args.port,
        cache=args.cache,
        use_cache=args.use_cache,
        progress=progress,
        registry=registry,
        allow_imports=args.allow_import,
        skip_checks=args.skip_check,
    )
    if args.compression == "zstd":
        progress.warn(
            "zstd layers cannot be read by Docker before 23.0 (load or pull); podman and containerd can"
        )
    if args.output is not None:
        pkg.export(args.output, args.tag, append=args.append)
        progress.step(f"wrote {args.output}; load it with: docker load -i {args.output}")
    elif args.oci_layout is not None:
        pkg.write_layout(args.oci_layout, args.tag)
        progress.step(f"wrote OCI layout {args.oci_layout}")
    elif args.dockerfile is not None:
        pkg.save(args.dockerfile)
        progress.step(f"wrote build context {args.dockerfile}; build it with: docker build {args.dockerfile}")
    elif args.load:
        progress.step(pkg.load(args.tag))
    else:
        pkg.push(args.push, args.additional_tag, registry=registry)
    print(pkg.digest)
    return 0


def cmd_inspect(args) -> int:
    from ..inspect import inspect_reference
    from ..transports.location import registry_reference

    registry = registry_options(args)
    if (ref := registry_reference(args.reference)) is not None:
        registry = registry.for_target(ref.registry, args.creds)
    elif args.creds:
        raise UsageError("--creds is for a registry reference; this one is local")
    print(inspect_reference(args.reference, args.platform, raw=args.raw, registry=registry))
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
    where = login(
        host, Credentials(user, secret, source="ocibuild login"), registry_options(args), args.authfile
    )
    print(f"Login Succeeded (credentials for {host} stored in {where})")
    return 0


def _copy_parser(sub) -> None:
    c = sub.add_parser(
        "copy",
        help="copy an image between registries, OCI layouts and archives without changing its digest",
        description="Copy SRC to DEST, each oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG] "
        "or a registry REF (docker://HOST/REPO:TAG). Manifests and blobs travel byte for byte, verified; "
        "blobs the destination has are skipped. Prints the digest.",
    )
    c.add_argument("source", metavar="SRC")
    c.add_argument("destination", metavar="DEST")
    which = c.add_mutually_exclusive_group()
    which.add_argument("--all-platforms", action="store_true", help="copy a multi-platform index whole")
    which.add_argument(
        "--platform", help="from an index, copy this os/arch[/variant] only (default linux/amd64)"
    )
    c.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="TAG",
        help="also tag the copy: a tag in DEST's repository, or NAME:TAG in an archive (repeatable)",
    )
    c.add_argument(
        "--append",
        action="store_true",
        help="add to the archive DEST instead of replacing it (docker save a b c)",
    )
    c.add_argument("--src-creds", metavar="USER:PASSWORD", help="for a registry SRC")
    c.add_argument("--dest-creds", metavar="USER:PASSWORD", help="for a registry DEST")
    c.add_argument("-q", "--quiet", action="store_true", help="print only the digest")
    registry_arguments(c)
    c.set_defaults(handler=cmd_copy)


def cmd_copy(args) -> int:
    from ..copy import copy
    from ..registry.credentials import parse_creds
    from ..transports.location import Location

    options = registry_options(args)
    src, dest = Location.parse(args.source), Location.parse(args.destination)
    source_options, dest_options = options, options
    if src.ref is not None:
        source_options = (
            options.with_credentials(src.ref.registry, parse_creds(args.src_creds, "--src-creds"))
            if args.src_creds
            else options
        )
    elif args.src_creds:
        raise UsageError("--src-creds is for a registry SRC; this one is local")
    if dest.ref is not None:
        dest_options = options.for_target(dest.ref.registry, args.dest_creds, "--dest-creds")
    elif args.dest_creds:
        raise UsageError("--dest-creds is for a registry DEST; this one is local")
    progress = Progress(quiet=args.quiet)
    digest = copy(
        args.source,
        args.destination,
        platform=args.platform,
        all_platforms=args.all_platforms,
        tags=args.tag,
        append=args.append,
        source_options=source_options,
        dest_options=dest_options,
        progress=progress,
    )
    progress.step(f"copied {args.source} to {args.destination}")
    print(digest)
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
    _package_parser(sub)
    _copy_parser(sub)
    from .model import add_parser as add_model_parser

    add_model_parser(sub)
    i = sub.add_parser("inspect", help="show an image's manifest, config, layers and history")
    i.add_argument("reference", help="oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE or a registry REF")
    i.add_argument("--platform", default="linux/amd64")
    i.add_argument("--raw", action="store_true", help="print the manifest and config JSON as they are")
    i.add_argument("--creds", metavar="USER:PASSWORD", help="for a registry REF (default: as for package)")
    registry_arguments(i)
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


class _Terminated(KeyboardInterrupt):
    """SIGTERM (what CI cancellation and ``docker stop`` send), unwound like Ctrl-C so temp files are removed."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"package": cmd_package, "inspect": cmd_inspect, "serve": cmd_serve, "login": cmd_login}
    if args.command != "serve":  # the scoring server installs its own graceful-stop handler
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return (handlers.get(args.command) or args.handler)(args)
    except OcibuildError as e:
        print(f"ocibuild: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print("ocibuild: interrupted; nothing was written at the destination", file=sys.stderr)
        return 143 if isinstance(e, _Terminated) else 130
    except OSError as e:
        # Environmental failures (disk full, permission denied) are the user's to fix: one line, no traceback.
        where = f" ({e.filename})" if e.filename else ""
        print(f"ocibuild: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
