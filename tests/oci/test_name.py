import pytest

from ocibuild.errors import BadReferenceError
from ocibuild.oci.name import parse_reference

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "text,registry,repo,tag,digest",
    [
        ("python:3.11", "docker.io", "library/python", "3.11", None),
        ("python", "docker.io", "library/python", "latest", None),
        ("docker://user/app:1", "docker.io", "user/app", "1", None),
        ("index.docker.io/library/python", "docker.io", "library/python", "latest", None),
        ("localhost:5000/a/b/c:dev", "localhost:5000", "a/b/c", "dev", None),
        ("127.0.0.1:5000/x", "127.0.0.1:5000", "x", "latest", None),
        (f"ghcr.io/org/app@{D}", "ghcr.io", "org/app", None, D),
        (f"ghcr.io/org/app:1@{D}", "ghcr.io", "org/app", "1", D),
    ],
)
def test_parse_and_normalise(text, registry, repo, tag, digest):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repo, tag, digest)


def test_familiar_and_str():
    assert parse_reference("python:3.11").familiar == "python:3.11"
    assert str(parse_reference("python:3.11")) == "docker.io/library/python:3.11"
    assert parse_reference("localhost:5000/a:1").familiar == "localhost:5000/a:1"


@pytest.mark.parametrize(
    "bad", ["", "UPPER/case", "a:b:c", "repo@sha256:short", "host:5000/a:bad tag", " x", "a//b"]
)
def test_malformed_references_are_rejected(bad):
    with pytest.raises(BadReferenceError):
        parse_reference(bad)
