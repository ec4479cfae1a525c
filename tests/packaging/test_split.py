"""The dependencies in layers by size: big distributions alone, the rest together, bytecode with its source, and
no layer above the bound; the same files always give the same split."""

from __future__ import annotations

from pathlib import Path

from ocibuild.oci.layer import LayerContents
from ocibuild.packaging import split
from ocibuild.packaging.split import REST, split_dependencies

SITE = "opt/ocibuild/site-packages"


def _dist(site: Path, name: str, files: dict[str, int]) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    rows = []
    for rel, size in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        rows.append(f"{rel},sha256=abc,{size}")
    (info / "METADATA").write_text(f"Name: {name}\n")
    (info / "RECORD").write_text(
        "\n".join([*rows, f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]) + "\n"
    )


def _site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    _dist(site, "torch", {"torch/__init__.py": 10, "torch/lib/libtorch.so": 3000, "bin/torchrun": 5})
    _dist(site, "nvidia_cublas", {"nvidia/cublas/lib/libcublas.so": 2000})
    _dist(site, "six", {"six.py": 50})
    (site / "torch" / "__pycache__").mkdir()
    (site / "torch" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"p" * 20)  # compiled here
    (site / "stray.pth").write_text("import x\n")  # no RECORD lists it
    (site / "empty").mkdir()
    return site


def _split(site: Path) -> dict[str, list[str]]:
    contents = LayerContents()
    contents.add_tree(site, SITE, bytecode=True)
    parts = split_dependencies(contents, site, SITE)
    return {
        p.name: [e.path[len(SITE) + 1 :] for e in p.contents.entries() if e.kind != "dir"] for p in parts
    } | {
        "dirs of " + REST: [
            e.path for p in parts if p.name == REST for e in p.contents.entries() if e.kind == "dir"
        ]
    }


def test_big_distributions_get_their_own_layers(tmp_path, monkeypatch):
    monkeypatch.setattr(split, "SPLIT_MIN", 1000)
    parts = _split(_site(tmp_path))
    assert list(parts)[:3] == ["nvidia_cublas", "torch", REST]  # big ones by name, then the rest
    assert parts["torch"] == [
        "bin/torchrun", "torch/__init__.py", "torch/__pycache__/__init__.cpython-311.pyc", "torch/lib/libtorch.so",
        "torch-1.0.dist-info/METADATA", "torch-1.0.dist-info/RECORD",
    ]  # fmt: skip
    assert parts["nvidia_cublas"][0] == "nvidia/cublas/lib/libcublas.so"
    assert parts[REST] == [
        "six-1.0.dist-info/METADATA",
        "six-1.0.dist-info/RECORD",
        "six.py",
        "stray.pth",
    ]  # fmt: skip  (in path order, components compared: "six-1.0…" before "six.py")
    assert f"{SITE}/empty" in parts["dirs of " + REST]  # an empty folder is kept, in the last layer
    assert _split(_site(tmp_path / "again")) == parts  # the same files, the same split


def test_small_sets_stay_one_layer_and_no_layer_exceeds_the_bound(tmp_path, monkeypatch):
    assert list(_split(_site(tmp_path))) == [REST, "dirs of " + REST]  # nothing reaches 64 MiB
    monkeypatch.setattr(split, "SPLIT_MIN", 1000)
    monkeypatch.setattr(split, "LAYER_MAX", 2500)
    parts = _split(_site(tmp_path / "cut"))
    assert parts["torch"] == [
        "bin/torchrun",
        "torch/__init__.py",
        "torch/__pycache__/__init__.cpython-311.pyc",
    ]
    assert parts["torch#2"] == ["torch/lib/libtorch.so"]  # bigger than the bound alone: it cannot be cut
    assert parts["torch#3"] == ["torch-1.0.dist-info/METADATA", "torch-1.0.dist-info/RECORD"]
