"""SLSA provenance v1 for a built image, as an in-toto Statement v1 (what BuildKit attaches with
``--provenance``): who built it (ocibuild, its version), from what the user asked (the build's parameters, never a
credential) and from which resolved inputs (the base by digest, the environment files, the entry script, every
model file and registered model, every wheel), each by its sha256.

No time and no invocation id go in: the statement is a function of the build's inputs, like the image.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import InputError
from ..oci.descriptor import canonical_json
from ..packaging.package import BuildResult, PackageSpec
from ..version import __version__
from .bill import oci_purl, pypi_purl

MEDIA_TYPE = "application/vnd.in-toto+json"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
BUILD_TYPE = "urn:ocibuild:buildtype:package:v1"  # what the parameters below mean: `ocibuild package`
BUILDER_ID = "urn:ocibuild:builder"


def render(result: BuildResult, spec: PackageSpec) -> bytes:
    """The statement's canonical JSON: sorted keys, no whitespace, so the same build gives the same bytes."""
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": result.model_name, "digest": {"sha256": result.image.digest.hex}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": _external(spec),
                "internalParameters": {"SOURCE_DATE_EPOCH": spec.epoch, "bytecode": spec.bytecode},
                "resolvedDependencies": _resolved(result, spec),
            },
            "runDetails": {"builder": {"id": BUILDER_ID, "version": {"ocibuild": __version__}}},
        },
    }
    return canonical_json(statement)


def _external(spec: PackageSpec) -> dict:
    """What the user asked for, as they named it; paths reduced to file names (a builder's folders are its own),
    index URLs left out (they may carry credentials)."""
    env = spec.environment
    doc: dict = {
        "base": spec.base if not spec.base.startswith(("oci:", "oci-archive:", "docker-archive:")) else "(local)",
        "platform": str(spec.platform),
        "models": [p.name for p in spec.models] + list(spec.model_refs),
        "entryScript": spec.entry_script.name,
        "compression": spec.compression,
        "port": spec.port,
        "user": spec.user,
    }
    if env.conda_file is not None:
        doc["condaFile"] = env.conda_file.name
    elif env.requirements:
        doc["requirements"] = [p.name for p in env.requirements]
    if env.packages:
        doc["packages"] = list(env.packages)
    if env.exclude_newer:
        doc["excludeNewer"] = env.exclude_newer
    if spec.name:
        doc["name"] = spec.name
    if spec.version:
        doc["version"] = spec.version
    return doc


def _resolved(result: BuildResult, spec: PackageSpec) -> list[dict]:
    """Every input the image was made from, by digest."""
    out: list[dict] = []
    base = result.image.base
    if base is not None and base.layers:
        out.append({"uri": oci_purl(base.digest, base.reference, registry=True), "digest": {"sha256": base.digest.hex}})
    inputs = [spec.environment.conda_file] if spec.environment.conda_file else list(spec.environment.requirements)
    script = spec.entry_script if spec.source_dir is None or spec.entry_script.is_absolute() else spec.source_dir / spec.entry_script
    for path in [*inputs, script]:
        out.append({"name": path.name, "digest": {"sha256": _sha256(path)}})
    contents = result.contents
    for f in contents.model_files if contents else ():
        out.append({"name": f"/{f.path}", "digest": {"sha256": f.sha256}})
    for m in contents.registered if contents else ():
        out.append({"uri": oci_purl(m.info.digest, m.reference, registry=True), "digest": {"sha256": m.info.digest.hex}})
    for w in contents.wheels if contents else ():
        entry: dict = {"uri": pypi_purl(w.name, w.version)}
        if w.sha256:
            entry["digest"] = {"sha256": w.sha256}
        if w.filename:
            entry["name"] = w.filename
        out.append(entry)
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    return digest.hexdigest()
