"""Property tests (issue 6, part 4): the parsers that read untrusted input raise only their own one-line error.

Each parser is fed arbitrary input and input shaped like the real thing (so the search reaches deep code paths):
references, manifests / indexes / descriptors / configs, layer tars (the stream detection reads), archive files and
registries' ``WWW-Authenticate`` challenges.
Inputs that once broke something are kept as ``@example``s; runs are bounded (``max_examples``, ``deadline``) so
the whole file takes a few seconds. ``tests/reliability/fuzz/`` has the same targets for atheris.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from functools import partial
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ocibuild import cli
from ocibuild.errors import BadReferenceError, FormatError, OcibuildError
from ocibuild.oci import media
from ocibuild.oci.archive import ArchiveReader, open_docker_archive, open_oci_archive
from ocibuild.oci.descriptor import Descriptor, Index, Manifest, Platform, sniff_media_type
from ocibuild.oci.digest import Digest, VerifyingReader, is_digest
from ocibuild.oci.image import Image, Layer, check_config
from ocibuild.oci.name import parse_reference
from ocibuild.registry.auth import parse_challenges
from ocibuild.rootfs.pyenv import detect_target_python
from tests.reliability.hostile import canonical, gzip, image_config, python_tar, sha256, write_layout

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOWER = settings(
    max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.too_slow]
)  # bounded time
D = "sha256:" + "a" * 64

# --- JSON shaped like image documents ----------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from([D, "sha256:xyz", media.OCI_MANIFEST, media.OCI_INDEX, media.OCI_LAYER_GZIP, 2, -1]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
descriptor_like = st.fixed_dictionaries(
    {},
    optional={
        "mediaType": st.one_of(st.sampled_from(sorted(media.LAYER_TO_OCI) + [media.OCI_CONFIG]), json_values),
        "digest": st.one_of(st.just(D), json_values),
        "size": st.one_of(st.integers(min_value=-5, max_value=2**64), json_values),
        "annotations": json_values,
        "platform": st.one_of(
            st.fixed_dictionaries({"os": json_values, "architecture": json_values}), json_values
        ),
        "artifactType": json_values,
    },
)
document_like = st.fixed_dictionaries(
    {},
    optional={
        "schemaVersion": st.one_of(st.just(2), json_values),
        "mediaType": st.one_of(st.sampled_from([media.OCI_MANIFEST, media.OCI_INDEX]), json_values),
        "config": st.one_of(descriptor_like, json_values),
        "layers": st.one_of(st.lists(descriptor_like, max_size=3), json_values),
        "manifests": st.one_of(st.lists(descriptor_like, max_size=3), json_values),
        "annotations": json_values,
        "artifactType": json_values,
    },
)


def _encode(doc) -> bytes:
    return json.dumps(doc).encode()


@FAST
@given(st.one_of(st.binary(max_size=300), document_like.map(_encode), json_values.map(_encode)))
@example(b"[" * 50_000)
@example(b'{"schemaVersion": 2, "mediaType": "' + b"x" * 100_000 + b'"}')
@example(b'{"schemaVersion": ' + b"9" * 5000 + b"}")
@example(b'{"schemaVersion": 2, "mediaType": ["x"], "layers": []}')
@example(b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "' + D.encode() + b'", "size": 1}, '
         b'"layers": [], "annotations": ["x"]}')  # fmt: skip
def test_document_parsers_raise_only_format_error(raw):
    for parse in (Manifest.parse, Index.parse, sniff_media_type):
        try:
            result = parse(raw, "doc")
        except FormatError as e:
            assert "\n" not in str(e) and len(str(e)) < 400, str(e)[:1000]  # one line, however big the input
            continue
        if isinstance(result, Manifest):  # what parsed must be usable
            assert isinstance(result.config, Descriptor) and result.digest == Digest.of(raw)
            for d in (result.config, *result.layers):
                d.to_json()
                str(d.platform) if d.platform else None
        elif isinstance(result, Index):
            for d in result.manifests:
                d.to_json()


@FAST
@given(descriptor_like | json_values)
@example({"mediaType": "x", "digest": D + "\n", "size": 1})
@example({"mediaType": "x", "digest": D, "size": 1, "platform": {"os": "linux", "architecture": 5}})
def test_descriptor_parser_raises_only_format_error(doc):
    try:
        d = Descriptor.from_json(doc, "d")
    except FormatError as e:
        assert "\n" not in str(e) and len(str(e)) < 400, str(e)[:1000]
        return
    assert is_digest(d.digest) and isinstance(d.size, int) and d.size >= 0
    assert Descriptor.from_json(d.to_json(), "d") == d  # round trip
    if d.platform is not None:
        assert isinstance(str(d.platform), str)


@FAST
@given(st.text(max_size=80))
@example("sha256:" + "a" * 64 + "\n")
@example("sha256:" + "A" * 64)
def test_is_digest_is_exactly_sha256_and_64_lowercase_hex(text):
    assert is_digest(text) == bool(re.fullmatch(r"sha256:[0-9a-f]{64}", text, re.ASCII))


not_str = json_values.filter(lambda v: not isinstance(v, str))
config_like = st.fixed_dictionaries(
    {},
    optional={
        "os": st.one_of(st.just("linux"), not_str),
        "architecture": st.one_of(st.just("amd64"), not_str),
        "variant": st.one_of(st.sampled_from([None, "v8"]), not_str),
        "created": json_values,
        "config": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    k: json_values
                    for k in ("Env", "Entrypoint", "Cmd", "Labels", "ExposedPorts", "WorkingDir", "User", "Volumes")
                },
            ),
            json_values,
        ),
        "history": st.one_of(st.lists(st.dictionaries(st.sampled_from(["created_by", "empty_layer"]), json_values)), json_values),
    },
)  # fmt: skip


@pytest.fixture(scope="module")
def layout_dir():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@SLOWER
@given(config_like)
@example({"config": {"Env": "PATH=/bin"}})
@example({"config": {"Labels": {"a": 1}}})
@example({"history": [{"created_by": 5}]})
@example({"history": [{"created_by": None}]})  # once a traceback in inspect
@example({"variant": 8})
@example(
    {"config": {"Cmd": "python3", "Env": None, "Labels": None, "ExposedPorts": None}}
)  # Docker writes these
def test_any_config_gives_an_image_or_one_line(layout_dir, config):
    """A config either fails ``check_config`` with FormatError, or everything downstream (the platform, inspect,
    assembling a new image on it) works with it."""
    config = {**config, "rootfs": {"type": "layers", "diff_ids": [sha256(b"")]}}
    try:
        check_config(config, "c")
        ok = True
    except FormatError:
        ok = False
    root = Path(tempfile.mkdtemp(dir=layout_dir))
    built = write_layout(root, [b"" + bytes(1024)], diff_ids=[sha256(b"")], config=config)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["inspect", built.ref])
    assert code == (0 if ok else 1), err.getvalue()
    assert err.getvalue().count("ocibuild: error:") == (0 if ok else 1)
    if ok:
        from ocibuild.oci.mutate import ConfigChanges, mutate, timestamp
        from ocibuild.transports.open import open_base

        base = open_base(built.ref, Platform())
        image = mutate(base, [], ConfigChanges(env={"A": "1"}, labels={"x": "y"}), timestamp(0))  # fmt: skip
        check_config(image.config, "assembled")


# --- references ----------------------------------------------------------------------------------------------------

component = st.from_regex(r"[a-z0-9]{1,6}([._-][a-z0-9]{1,4}){0,2}", fullmatch=True)
hosts = st.sampled_from(["", "docker.io/", "index.docker.io/", "localhost/", "localhost:5000/", "reg.example.com/",
                         "Reg.Example.com:443/", "127.0.0.1:5000/", "[::1]:5000/", "docker://", "docker://ghcr.io/"])  # fmt: skip
tags = st.one_of(st.just(""), st.from_regex(r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}", fullmatch=True))
digests = st.one_of(st.just(""), st.just("@" + D))
reference_like = st.builds(
    lambda h, comps, t, d: h + "/".join(comps) + t + d,
    hosts,
    st.lists(component, min_size=1, max_size=3),
    tags,
    digests,
)


mutated = st.builds(
    lambda text, pos, insert: text[: pos % (len(text) + 1)] + insert + text[pos % (len(text) + 1) :],
    reference_like,
    st.integers(0, 100),
    st.text(max_size=2),
)


@FAST
@given(st.one_of(st.text(max_size=60), reference_like, mutated))
@example("a:b\n@" + D)
@example("python:3.11")
@example("docker.io/0.0/0")
@example("[::1]:5000/a:1@" + D)
def test_reference_parser_raises_only_bad_reference_and_round_trips(text):
    try:
        ref = parse_reference(text)
    except BadReferenceError:
        return
    again = parse_reference(str(ref))
    assert again == ref, (text, str(ref))
    # (``familiar`` does not always round-trip: Docker Hub's ``docker.io/a.b/c`` is ``a.b/c``, whose first
    # component then reads as a host; Docker's own familiar form has the same ambiguity.)


_TAG_ASCII = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_COMPONENT_ASCII = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")


@FAST
@given(st.one_of(reference_like, st.text(max_size=40)))
@example("a:b\n@" + D)
@example("a:\u00e9")
@example("reg.example.com\n/a")
def test_parsed_references_hold_only_what_the_distribution_grammar_allows(text):
    try:
        ref = parse_reference(text)
    except BadReferenceError:
        return
    assert ref.tag is None or _TAG_ASCII.fullmatch(ref.tag), ref
    assert all(_COMPONENT_ASCII.fullmatch(c) for c in ref.repository.split("/")), ref
    assert ref.registry.isascii() and "\n" not in ref.registry, ref


# --- the tar reader of detection -----------------------------------------------------------------------------------

TYPES = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE,
         tarfile.GNUTYPE_SPARSE, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, b"Z", b"\0"]  # fmt: skip
names = st.one_of(
    st.sampled_from(["usr/bin/python3", "usr/bin/python3.11", "usr/lib/x86_64-linux-gnu/libc.so.6",
                     "usr/lib/python3.11/os.py", "lib/apk/db/installed", "../../etc/passwd", "/abs", ".wh..wh..opq",
                     "usr/.wh.bin", "a/" * 60 + "long", ""]),
    st.text(max_size=30),
)  # fmt: skip
members = st.lists(
    st.tuples(names, st.sampled_from(TYPES), names, st.binary(max_size=200), st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])),
    max_size=6,
)  # fmt: skip


def _tar(entries) -> bytes:
    out = io.BytesIO()
    for name, type_, link, data, fmt in entries:
        info = tarfile.TarInfo(name)
        info.type = type_
        info.linkname = link
        info.size = len(data)
        try:
            out.write(info.tobuf(fmt, "utf-8", "surrogateescape"))
        except (ValueError, UnicodeError):
            continue  # not representable in that format
        out.write(data + bytes(-len(data) % 512))
    out.write(bytes(1024))
    return out.getvalue()


def _flip(data: bytes, flips) -> bytes:
    buf = bytearray(data)
    for pos, value in flips:
        if buf:
            buf[pos % len(buf)] = value
    return bytes(buf)


class _Blobs:
    """A blob source over bytes in memory, verified like every other source."""

    origin = None

    def __init__(self, blobs: dict[str, bytes]):
        self.blobs = blobs

    def close(self):
        pass

    def open_blob(self, desc):
        return VerifyingReader(io.BytesIO(self.blobs[desc.digest]), desc.digest, desc.size)

    def has_blob(self, desc):
        return desc.digest in self.blobs


def _image_of(layers: list[bytes]) -> Image:
    descs = [Descriptor(media.OCI_LAYER_GZIP, Digest(sha256(b)), len(b)) for b in layers]
    config = canonical(image_config([sha256(b"")] * len(layers)))
    cdesc = Descriptor(media.OCI_CONFIG, Digest(sha256(config)), len(config))
    blobs = {d.digest: b for d, b in zip(descs, layers, strict=True)} | {cdesc.digest: config}
    source = _Blobs(blobs)
    return Image(Manifest.build(cdesc, descs), config, tuple(Layer(d, None, source) for d in descs), "fuzzed")


@SLOWER
@given(
    members,
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    st.integers(0, 3),
    st.booleans(),
)
@example([], [], 0, False)
@example([("usr/bin/python3.11", tarfile.GNUTYPE_SPARSE, "", b"", tarfile.GNU_FORMAT)], [(482, 1)], 0, False)
def test_layer_tar_reader_raises_only_ocibuild_errors(entries, flips, cut, compressed):
    """Any layer — a tar of odd members, damaged at a few bytes, cut short, gzipped or not — gives a target or
    a BaseImageError/FormatError; never another exception."""
    data = _flip(python_tar().bytes(end=False) + _tar(entries), flips)
    if cut:
        data = data[: len(data) * cut // 4]
    blob = gzip(data) if compressed else data
    image = _image_of([blob])
    with contextlib.suppress(OcibuildError):
        detect_target_python([partial(image.open_uncompressed, d) for d in image.layers], "amd64")


@SLOWER
@given(st.binary(max_size=2000), st.sampled_from([b"", b"\x1f\x8b\x08\x00", b"\x28\xb5\x2f\xfd", b"ustar"]))
def test_arbitrary_bytes_as_a_layer(data, prefix):
    image = _image_of([prefix + data])
    with contextlib.suppress(OcibuildError):
        detect_target_python([partial(image.open_uncompressed, d) for d in image.layers], "amd64")


# --- the archive reader ------------------------------------------------------------------------------------------

archive_names = st.one_of(
    st.sampled_from(["manifest.json", "index.json", "oci-layout", "blobs/sha256/" + "a" * 64, "../manifest.json",
                     "/index.json", "./blobs/../index.json", "c.json", "layer.tar", "d/layer.tar"]),
    st.text(max_size=20),
)  # fmt: skip
archive_members = st.lists(
    st.tuples(archive_names, st.sampled_from([tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE]),
              archive_names, st.one_of(st.binary(max_size=100), json_values.map(_encode))),
    max_size=6,
)  # fmt: skip


@pytest.fixture(scope="module")
def archive_dir():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def _archive_bytes(entries, flips) -> bytes:
    return _flip(_tar([(n, t, link, data, tarfile.PAX_FORMAT) for n, t, link, data in entries]), flips)


@SLOWER
@given(
    archive_members,
    st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 255)), max_size=3),
    st.binary(max_size=100),
)
@example([("a", tarfile.SYMTYPE, "b", b""), ("b", tarfile.SYMTYPE, "a", b"")], [], b"")
def test_archive_reader_raises_only_ocibuild_errors(archive_dir, entries, flips, junk):
    path = archive_dir / "a.tar"
    path.write_bytes(_archive_bytes(entries, flips) if entries or flips else junk)
    try:
        reader = ArchiveReader(path)
    except OcibuildError:
        return
    for name in [*reader.members, *reader.links, "manifest.json", "missing"]:
        try:
            if reader.has(name):
                assert reader.size(name) >= 0
                with reader.open(name) as f:
                    f.read(1 << 16)
            reader.read_small(name, limit=1 << 16)
        except OcibuildError:
            pass
    with contextlib.suppress(OcibuildError):
        open_oci_archive(path, None, Platform())


@SLOWER
@given(archive_members)
@example([("manifest.json", tarfile.REGTYPE, "", b'[{"Config": "c.json", "Layers": []}]'),
          ("c.json", tarfile.REGTYPE, "", b'{"rootfs": ["x"]}')])  # fmt: skip
def test_docker_archive_reader_raises_only_ocibuild_errors(archive_dir, entries):
    path = archive_dir / "d.tar"
    path.write_bytes(_archive_bytes(entries, []))
    with contextlib.suppress(OcibuildError):
        open_docker_archive(path, None, Platform())


# --- the WWW-Authenticate challenge parser --------------------------------------------------------------------------

SEEDS = Path(__file__).resolve().parent / "fuzz" / "seeds"
auth_token = st.from_regex(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}", fullmatch=True)
param_value = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=',"\\ =;\t', max_size=10),  # what quoting must protect
    st.sampled_from(
        ["https://auth.docker.io/token", "repository:a/b:pull,push repository:c:pull", "registry.docker.io"]
    ),
)


def _random_case(draw, text: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c.lower() for c in text)


@st.composite
def challenges(draw):
    """A well-formed challenge (RFC 7235 auth-scheme and auth-params), as it should parse and as a header spells
    it: any case for the scheme and names, optional spaces, values quoted (escaping ``"`` and ``\\``) or bare."""
    scheme = draw(auth_token)
    names = draw(st.lists(auth_token, max_size=4, unique_by=str.lower))
    params, parts = {}, []
    for name in names:
        value = draw(param_value)
        params[name.lower()] = value
        bare = _TOKEN_ONLY.fullmatch(value) and draw(st.booleans())
        text = value if bare else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        eq = draw(st.sampled_from(["=", " = ", "=\t", " ="]))
        parts.append(_random_case(draw, name) + eq + text)
    sep = draw(st.sampled_from([",", ", ", " ,", " , "]))
    header = _random_case(draw, scheme) + (" " + sep.join(parts) if parts else "")
    return (scheme.lower(), params), header


_TOKEN_ONLY = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _parsed(header: str) -> list[tuple[str, dict[str, str]]]:
    return [(c.scheme, c.params) for c in parse_challenges(header)]


@FAST
@given(st.lists(challenges(), min_size=1, max_size=4), st.sampled_from([", ", ",", " , ", ",, "]))
@example([(("bearer", {"realm": 'a "quoted", comma'}), 'BEARER realm="a \\"quoted\\", comma"')], ", ")
@example([(("basic", {"realm": "x"}), "Basic realm=x"), (("negotiate", {}), "Negotiate")], ", ")
@example([(("negotiate", {}), "Negotiate"), (("basic", {"realm": "\\"}), 'basic realm="\\\\"')], ",")
def test_challenge_parser_round_trips_well_formed_headers(items, sep):
    """Several challenges in one header, each with quoted commas and escaped quotes, parse back exactly."""
    header = sep.join(h for _, h in items)
    assert _parsed(header) == [expected for expected, _ in items], header


header_like = st.one_of(
    st.text(max_size=120),
    st.text(alphabet='BbEeAaRrSsIiCc ="\\,\t=realm', max_size=60),
    st.lists(challenges(), min_size=1, max_size=3).map(lambda cs: ", ".join(h for _, h in cs)),
)
mutated_header = st.builds(
    lambda h, pos, cut, insert: (h[: pos % (len(h) + 1)] + insert + h[pos % (len(h) + 1) :])[
        : max(cut, 0) or None
    ],
    header_like,
    st.integers(0, 200),
    st.integers(-1, 200),
    st.text(alphabet='",\\= \t\x00', max_size=3),
)


@FAST
@given(st.one_of(header_like, mutated_header))
@example('Bearer realm="unterminated')
@example('Bearer realm="ends in a backslash\\')
@example("Basic realm=" + "," * 10_000)
@example('Bearer scope="' + "\\" * 5000)
@example("=x, ,=, Bearer")
@example("Negotiate YIIBhwYGKwYBBQUCoIIBezCC==, Basic realm=x")
def test_challenge_parser_takes_any_header_without_raising(header):
    """A registry's header is not ours to reject: any text parses (documented: malformed tails are skipped), into
    lower-case token schemes and names."""
    for scheme, params in _parsed(header):
        assert _TOKEN_ONLY.fullmatch(scheme) and scheme == scheme.lower(), scheme
        for name, value in params.items():
            assert name == "" or (_TOKEN_ONLY.fullmatch(name) and name == name.lower()), name
            assert isinstance(value, str)


def test_challenge_seeds_parse():
    """The atheris seeds (``fuzz/seeds/challenge``) are real registries' headers: each gives a usable challenge."""
    seeds = sorted((SEEDS / "challenge").iterdir())
    assert seeds
    for seed in seeds:
        got = _parsed(seed.read_bytes().decode("latin-1"))
        assert any(s in ("basic", "bearer") for s, _ in got), seed.name
        for scheme, params in got:
            if scheme == "bearer":
                assert params["realm"].startswith("https://"), seed.name


# --- atheris (coverage-guided), when it is installed -------------------------------------------------------------

FUZZ = Path(__file__).resolve().parent / "fuzz"


@pytest.mark.slow
@pytest.mark.parametrize("target", ["layer", "document", "archive", "challenge"])
def test_atheris_finds_no_crash_in_a_short_run(tmp_path, target):
    """A few seconds of libFuzzer from the kept seeds (``fuzz/seeds``); longer runs: see ``fuzz/targets.py``."""
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    argv = [sys.executable, FUZZ / "targets.py", target, "-max_total_time=3", "-rss_limit_mb=1024",
            f"-artifact_prefix={tmp_path}/", corpus, FUZZ / "seeds" / target]  # fmt: skip
    r = subprocess.run(list(map(str, argv)), capture_output=True, text=True, timeout=180, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "Done" in r.stderr, r.stderr[-2000:]
