"""``ocibuild package``: its arguments, and the digest printed last."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..settings import Settings
from .common import progress, registry_arguments, registry_options


def add_parser(sub) -> None:
    p = sub.add_parser("package", help="package a model into a runnable scoring image")
    p.set_defaults(handler=run)
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
        "--conda-file",
        type=Path,
        help="conda environment.yml: its conda packages are installed from PyPI, its pip: section as pip reads it, "
        "and python=X.Y picks the default base",
    )
    p.add_argument(
        "--conda-map", action="append", default=[], metavar="CONDA=PYPI",
        help="install conda package CONDA as PyPI project PYPI (repeatable; adds to the shipped mapping)",
    )  # fmt: skip
    p.add_argument(
        "--drop-conda", action="append", default=[], metavar="PKG[,PKG...]",
        help="leave these conda packages out, e.g. system libraries the base image has (repeatable)",
    )  # fmt: skip
    src = p.add_argument_group("package sources (default: pip's and uv's own configuration)")
    src.add_argument(
        "--index-url", metavar="URL", help="package index, instead of PyPI (credentials: URL, ~/.netrc)"
    )
    src.add_argument(
        "--extra-index-url", action="append", default=[], metavar="URL", help="another index (repeatable)"
    )
    src.add_argument(
        "--find-links", action="append", default=[], type=Path, metavar="DIR",
        help="a folder of wheels and source archives (repeatable)",
    )  # fmt: skip
    src.add_argument("--no-index", action="store_true", help="no index at all: only --find-links folders")
    src.add_argument(
        "--exclude-newer", metavar="DATE", help="ignore files uploaded on or after DATE (YYYY-MM-DD, UTC)"
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
    p.add_argument(
        "--platform",
        default="linux/amd64",
        help="os/arch[/variant] (default: linux/amd64); several, comma-separated (linux/amd64,linux/arm64), "
        "build one image index",
    )
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
        "--user",
        default=None,
        metavar="UID[:GID]",
        help="who the image runs as (default 65532:65532, not root; --user 0 for root; names work, numbers "
        "are what Kubernetes' runAsNonRoot can check)",
    )
    p.add_argument(
        "--no-bytecode", dest="bytecode", action="store_false",
        help="ship the dependencies without compiled bytecode (default: compiled by the image's own Python, "
        "where this machine can run it, so a read-only root starts as fast as a writable one)",
    )  # fmt: skip
    p.add_argument(
        "--sbom", choices=["spdx", "cyclonedx", "none"], default="spdx",
        help="the SBOM every image carries (default spdx: SPDX 2.3 JSON; cyclonedx: CycloneDX 1.6 JSON): its OS "
        "packages, wheels with their files' sha256, model files; pushed as the image's referrer (read it back "
        "with: ocibuild sbom REF), written beside it in --oci-layout and --output",
    )  # fmt: skip
    p.add_argument(
        "--sign-key", type=Path, metavar="FILE",
        help="a PEM ECDSA P-256 private key: sign every --push as cosign does (sha256-<hex>.sig beside it), for "
        "cosign verify --key and skopeo's sigstoreSigned policy; its password from $OCIBUILD_SIGN_PASSWORD "
        "(or $COSIGN_PASSWORD) or --sign-password-file, never a flag",
    )  # fmt: skip
    p.add_argument("--sign-password-file", type=Path, metavar="FILE", help="the --sign-key's password, in a file")
    p.add_argument(
        "--no-provenance", dest="provenance", action="store_false",
        help="attach no SLSA provenance (default: an in-toto statement of who built the image from what, by digest)",
    )  # fmt: skip
    p.add_argument(
        "--cache", type=Path, help="blob cache directory (default: $OCIBUILD_CACHE or ~/.cache/ocibuild)"
    )
    p.add_argument(
        "--no-cache", dest="use_cache", action="store_false",
        help="build every layer from its inputs again (results still go to the cache)",
    )  # fmt: skip
    p.add_argument(
        "--cache-repo", metavar="REGISTRY/REPO",
        help="a registry repository that builders share as their layer cache: layers found there are not built, "
        "layers built are recorded there (default: $OCIBUILD_CACHE_REPO); credentials as for --push",
    )  # fmt: skip
    p.add_argument(
        "--cache-repo-readonly", action="store_true",
        help="read the cache repo but never write it, for untrusted builds such as pull requests "
        "(default: $OCIBUILD_CACHE_REPO_READONLY)",
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
    checks.add_argument(
        "--smoke-test", action="store_true",
        help="run the built image's server here (no engine: root, or user namespaces) and score a sample",
    )  # fmt: skip
    checks.add_argument(
        "--sample-input", type=Path, metavar="FILE",
        help="with --smoke-test: the request body to POST to /score (default: the script's own input sample)",
    )  # fmt: skip
    out = p.add_argument_group(
        "outputs (at least one; each may be repeated; one build, the same digest in all)"
    )
    out.add_argument(
        "--output", action="append", default=[], type=Path, metavar="FILE",
        help="tarball for docker load / podman load / skopeo",
    )  # fmt: skip
    out.add_argument(
        "--append", action="store_true",
        help="with --output: add the image to the tarball's images instead of replacing the file",
    )  # fmt: skip
    out.add_argument(
        "--oci-layout", action="append", default=[], type=Path, metavar="DIR", help="OCI image layout"
    )
    out.add_argument(
        "--push", action="append", default=[], metavar="REF",
        help="push to a registry, e.g. registry.example.com/team/app:1",
    )  # fmt: skip
    out.add_argument("--load", action="store_true", help="load into the local Docker or podman engine")
    out.add_argument(
        "--dockerfile",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="write a Dockerfile build context",
    )
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


def run(args: argparse.Namespace) -> int:
    from ..api import Environment, InferenceConfig, Outputs, bind_credentials, package
    from ..packaging.conda import parse_conda_map
    from ..packaging.package import DEFAULT_USER

    settings = Settings.from_environ()
    outputs = Outputs(
        archives=args.output,
        layouts=args.oci_layout,
        pushes=args.push,
        load=args.load,
        dockerfiles=args.dockerfile,
        tag=args.tag,
        additional_tags=args.additional_tag,
        append=args.append,
    )
    registry = bind_credentials(
        registry_options(args, settings),
        base=args.base or settings.default_base(),
        pushes=args.push,
        models=args.models,
        creds=args.creds,
        base_creds=args.base_creds,
        cache_repo=args.cache_repo or settings.cache_repo,
    )
    env = Environment(
        pip_requirements=args.requirements,
        pip_packages=args.pip,
        conda_file=args.conda_file,
        conda_map=parse_conda_map(args.conda_map),
        conda_drop=[n for v in args.drop_conda for n in v.split(",")],
        index_url=args.index_url,
        extra_index_urls=args.extra_index_url,
        find_links=args.find_links,
        no_index=args.no_index,
        exclude_newer=args.exclude_newer,
    )
    report = progress(args)
    if args.compression == "zstd":
        report.warn(
            "zstd layers cannot be read by Docker before 23.0 (load or pull); podman and containerd can"
        )
    pkg = package(
        args.models,
        InferenceConfig(args.entry_script, args.source_dir, env),
        args.base,
        name=args.name,
        version=args.model_version,
        platform=args.platform,
        compression=args.compression,
        port=args.port,
        user=DEFAULT_USER if args.user is None else args.user,
        bytecode=args.bytecode,
        cache=args.cache,
        use_cache=args.use_cache,
        progress=report,
        registry=registry,
        settings=settings,
        outputs=outputs,
        allow_imports=args.allow_import,
        skip_checks=args.skip_check,
        smoke_test=args.smoke_test,
        sample_input=args.sample_input,
        cache_repo=args.cache_repo,
        cache_repo_readonly=args.cache_repo_readonly or None,
        sbom=args.sbom,
        provenance=args.provenance,
        sign_key=args.sign_key,
        sign_password_file=args.sign_password_file,
    )
    if len(pkg.results) == 1:
        for path in args.output:
            report.step(f"wrote {path}; load it with: docker load -i {path}")
    print(pkg.digest)
    return 0
