"""``ocibuild model push|pull|list|show``: argument parsing and output only; the work is in ``models.registry``.

stdout carries results (push: the artifact digest, last; list/show: the listing, or JSON with ``--json``);
progress goes to stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..settings import Settings
from .common import progress, registry_arguments, registry_options


def add_parser(sub) -> None:
    """The ``model`` command and its subcommands, on ``build_parser``'s subparsers."""
    m = sub.add_parser("model", help="registered models: push, pull, list, show (OCI artifacts)")
    m.set_defaults(handler=run)
    msub = m.add_subparsers(dest="model_command", required=True)

    def common(p, creds: bool = True) -> None:
        if creds:
            p.add_argument(
                "--creds", metavar="USER:PASSWORD", help="for this registry (default: as for package)"
            )
        registry_arguments(p)

    push = msub.add_parser("push", help="register a model file or folder as HOST/REPO:VERSION")
    push.add_argument("path", type=Path, metavar="PATH", help="model file or folder")
    push.add_argument(
        "reference", metavar="REF", help="HOST/REPO[:VERSION], e.g. registry.example.com/models/ridge:3"
    )
    push.add_argument("--name", help="model name (default: the repository's last part)")
    push.add_argument("--version", help="model version (default: REF's tag; also the tag when REF has none)")
    push.add_argument("--framework", default="", help="e.g. scikit-learn, onnx, pytorch")
    push.add_argument("--description", default="")
    push.add_argument("--cache", type=Path, help="blob cache (default: $OCIBUILD_CACHE or ~/.cache/ocibuild)")
    push.add_argument("-q", "--quiet", action="store_true", help="print only the digest")
    common(push)

    pull = msub.add_parser("pull", help="the registered model's files into a new folder")
    pull.add_argument("reference", metavar="REF", help="HOST/REPO:VERSION or HOST/REPO@sha256:…")
    pull.add_argument("directory", type=Path, metavar="DIR", help="new (or empty) folder")
    pull.add_argument("-q", "--quiet", action="store_true")
    common(pull)

    ls = msub.add_parser("list", help="a repository's model versions and their annotations")
    ls.add_argument("repository", metavar="REPO", help="HOST/REPO, e.g. registry.example.com/models/ridge")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    common(ls)

    show = msub.add_parser("show", help="a registered model's manifest summary")
    show.add_argument("reference", metavar="REF")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument("--raw", action="store_true", help="the manifest's exact bytes")
    common(show)


def _options(args, reference: str, settings: Settings):
    from ..models.reference import model_reference

    ref = model_reference(reference) if args.model_command != "list" else None
    host = ref.registry if ref else _repository_host(reference)
    return registry_options(args, settings).for_target(host, args.creds)


def _repository_host(repository: str) -> str:
    from ..oci.name import parse_reference

    return parse_reference(repository.removeprefix("docker://"), default_tag=None).registry


def run(args) -> int:
    from ..models import registry as models

    settings = Settings.from_environ()
    if args.model_command == "push":
        from ..oci.store import BlobStore

        pushed = models.push_model(
            args.path,
            args.reference,
            name=args.name,
            version=args.version,
            framework=args.framework,
            description=args.description,
            options=_options(args, args.reference, settings),
            store=BlobStore(args.cache or settings.cache_dir),
            epoch=settings.source_date_epoch,
            progress=progress(args),
        )
        print(pushed.digest)
    elif args.model_command == "pull":
        info = models.pull_model(
            args.reference, args.directory, _options(args, args.reference, settings), progress(args)
        )
        if not args.quiet:
            print(info.digest)
    elif args.model_command == "show":
        info = models.show_model(args.reference, _options(args, args.reference, settings))
        if args.raw:
            print(info.raw.decode())
        elif args.json:
            print(json.dumps(info.to_json(), indent=2))
        else:
            print(_describe(args.reference, info))
    else:
        listed = models.list_models(args.repository, _options(args, args.repository, settings))
        if args.json:
            print(json.dumps([{"tag": x.tag, **(x.info.to_json() if x.info else {"note": x.note})}
                              for x in listed], indent=2))  # fmt: skip
        else:
            print(_table(listed))
    return 0


def _describe(reference: str, info) -> str:
    rows = [
        ("reference", reference.removeprefix("docker://")),
        ("digest", str(info.digest)),
        ("name", info.name),
        ("version", info.version),
        ("framework", info.framework or "-"),
        ("description", info.description or "-"),
        ("created", info.created or "-"),
        ("files", ", ".join(info.files) or "-"),
        ("path in image", info.path),
        ("layer", f"{info.layer.digest} {info.layer.size} bytes {info.layer.media_type}"),
    ]
    return "\n".join(f"{k + ':':<15}{v}" for k, v in rows)


def _table(listed) -> str:
    rows = [("TAG", "NAME", "VERSION", "FRAMEWORK", "FILES", "DIGEST", "DESCRIPTION")]
    for x in listed:
        if x.info is None:
            rows.append((x.tag, "-", "-", "-", "-", "-", f"({x.note})"))
        else:
            i = x.info
            rows.append((x.tag, i.name, i.version, i.framework or "-", ",".join(i.files) or "-",
                         str(i.digest), i.description or ""))  # fmt: skip
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(r[:-1], widths, strict=True)).rstrip()
        + ("  " + r[-1] if r[-1] else "")
        for r in rows
    )
