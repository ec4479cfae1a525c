"""Conda dependencies as PyPI requirements: names through conda-forge's published mapping, versions by conda's
match-spec rules.

Owns reading the conda entries of an environment file (match specs such as ``numpy=1.26``,
``conda-forge::pytorch>=2.1``, ``mkl 2023.1 h213fc3f_46344``) and deciding what each becomes: a PEP 508
requirement, the Python version pin, a package dropped because the wheels or the base image already bring it, or a
package no wheel can stand in for (an error naming them all). Never reads the YAML (``packaging.environment``
does), never runs conda and never touches the network: the name mapping ships as ``conda_pypi.json``
(``scripts/update-conda-mapping.py`` regenerates it; its sources are recorded in the file).
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ocibuild.errors import InputError, UsageError

__all__ = ["CondaDependencies", "MatchSpec", "SpecError", "convert", "parse_conda_map", "parse_match_spec"]

_DATA = Path(__file__).with_name("conda_pypi.json")

# Conda packages that hold no Python distribution but that the image gets anyway, and why (what the manylinux
# wheels bundle or depend on, or what the base image has). docs/decisions.md says how these were checked.
_BROUGHT: dict[str, str] = {
    "the base image's Python": "python python_abi",
    "ocibuild installs the pip: section itself": "pip",
    "C/C++/Fortran runtimes and OpenMP: the wheels bundle theirs or use the base image's": (
        "_libgcc_mutex _openmp_mutex libgcc libgcc-ng libgomp libstdcxx libstdcxx-ng libgfortran* libquadmath "
        "openmp llvm-openmp intel-openmp"
    ),
    "BLAS/LAPACK: numpy's and scipy's wheels bundle OpenBLAS": (
        "mkl mkl-include mkl-devel blas blas-devel libblas libcblas liblapack liblapacke openblas libopenblas"
    ),
    "CUDA: torch's Linux wheels depend on NVIDIA's CUDA wheels, TensorFlow's come with tensorflow[and-cuda]": (
        "cuda cudatoolkit cudnn nccl cuda-* cutensor libcublas* libcufft* libcurand* libcusolver* libcusparse* "
        "libnvjitlink* libcudnn* libnccl* libcutensor* pytorch-cuda"
    ),
    "conda variant selectors, no files": "cpuonly pytorch-mutex _py-xgboost-mutex _tflow_select",
}

_CONDA_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BRACKET_PAIR = re.compile(r"\s*([A-Za-z0-9_-]+)\s*=\s*(?:'([^']*)'|\"([^\"]*)\"|([^,\s'\"]+))\s*(?:,|\s|$)")
# "version build": a build string follows a space or '=' that does not end an operator, and holds none of the
# characters of a version expression.
_VERSION_BUILD = re.compile(r"^(?P<version>.+?)(?:(?<![=!|,<>~])[ =](?P<build>[^\s=,|<>~!()-]+))?$")
_OPERATOR = re.compile(r"^(==|!=|<=|>=|~=|<|>|=)(?![=<>!~])(\S+)$")
_MAX_ALTERNATIVES = 64


class SpecError(ValueError):
    """A match spec that cannot be read or written for pip; the message says why, for the one-line error."""


@dataclass(frozen=True)
class MatchSpec:
    """One conda dependency as written, taken apart. ``version`` is conda's version expression, build removed."""

    text: str
    name: str
    channel: str | None = None
    version: str | None = None
    build: str | None = None


@dataclass(frozen=True)
class CondaDependencies:
    """What the conda entries of one file become."""

    requirements: tuple[str, ...] = ()
    python_version: tuple[int, int] | None = None
    notes: tuple[str, ...] = ()


# --- match specs --------------------------------------------------------------------------------------------------


def _brackets(inner: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    pos = 0
    while pos < len(inner):
        m = _BRACKET_PAIR.match(inner, pos)
        if m is None or m.end() == pos:
            raise SpecError(f"cannot read '[{inner}]' (expected key=value pairs such as version='>=1.2')")
        value = next(v for v in m.groups()[1:] if v is not None)
        pairs[m[1].lower()] = value
        pos = m.end()
    return pairs


def _conda_fuzzy(version: str, build: str | None) -> str:
    """conda's reading of a version written after the name: ``=1.2`` is ``1.2*``; ``==1.2`` (no build) is exact."""
    if not version.startswith("="):
        return version
    rest = version[1:]
    if version.startswith("==") and build is None:
        return version[2:]
    if not any(c in rest for c in "=,|"):
        return rest + "*" if build is None and not rest.endswith("*") else rest
    return version


def parse_match_spec(text: str) -> MatchSpec:
    """Take a conda match spec apart: ``[channel::]name[ version[ build]][[key=value, ...]]``."""
    spec = text.split("#", 1)[0].strip()
    if not spec:
        raise SpecError("is empty")
    if _URL.match(spec) or spec.endswith((".conda", ".tar.bz2")):
        raise SpecError("is a package file or URL, which PyPI cannot serve")
    brackets: dict[str, str] = {}
    if spec.endswith("]") and "[" in spec:
        start = spec.index("[")
        brackets = _brackets(spec[start + 1 : -1])
        spec = spec[:start].rstrip()
    channel = None
    if "::" in spec:
        channel, spec = spec.rsplit("::", 1)
    channel = brackets.pop("channel", channel) or None
    m = re.match(r"([^\s=<>!~]+)(.*)$", spec.strip())
    if m is None or not _CONDA_NAME.match(m[1]):
        raise SpecError("has no package name")
    name, rest = m[1], m[2].strip()
    version: str | None = None
    build: str | None = None
    if rest:
        vb = _VERSION_BUILD.match(rest)
        assert vb is not None  # the pattern matches any text that is not empty
        build = vb["build"]
        version = _conda_fuzzy(vb["version"].replace(" ", ""), build)
    if "version" in brackets:
        version = brackets["version"].replace(" ", "")
    build = brackets.get("build", build)
    return MatchSpec(
        text=text.strip(), name=name.lower(), channel=channel, version=version or None, build=build
    )


# --- versions -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Term:
    """One comparison: ``op`` is a PEP 440 operator, ``=*`` (starts with), ``!=*`` (does not) or ``*`` (any)."""

    op: str
    version: str = ""


def _checked(version: str) -> Version:
    try:
        return Version(version)
    except InvalidVersion:
        raise SpecError(f"has version '{version}', which is not a version pip understands") from None


def _term(text: str) -> _Term:
    if text == "*":
        return _Term("*")
    if text.startswith("^") or text.endswith("$"):
        raise SpecError(f"has a regular expression ('{text}') for a version, which pip cannot express")
    if text[0] in "=<>!~":
        m = _OPERATOR.match(text)
        if m is None:
            raise SpecError(f"has '{text}', which is not a version comparison")
        op, version = m[1], m[2]
        if version.endswith(".*"):
            version = version[:-2]
            if op == "~=":
                raise SpecError(f"has '{text}': '~=' does not take '.*'")
            op = {"=": "=*", "!=": "!=*"}.get(op, op)  # conda ignores '.*' after the other operators
        elif op == "=":
            op = "=*"
    elif "*" in text.rstrip("*"):
        raise SpecError(f"has a wildcard inside a version ('{text}'), which pip cannot express")
    elif text.endswith("*"):
        op, version = "=*", text.rstrip("*").rstrip(".")
    else:
        op, version = "==", text
    _checked(version)
    return _Term(op, version)


def _tokens(expr: str) -> list[str]:
    return [t for t in re.findall(r"[()|,]|[^()|,]+", expr) if t.strip()]


def _alternatives(expr: str) -> list[list[_Term]]:
    """The version expression as alternatives ('|') of conjunctions (','); ',' binds tighter, as in conda."""
    return _ExpressionParser(expr).parse()


class _ExpressionParser:
    """A recursive descent over a version expression's tokens: ``either`` of ``both`` of ``atom``s."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.tokens = _tokens(expr)
        self.pos = 0

    def parse(self) -> list[list[_Term]]:
        result = self.either()
        if self.peek() is not None:
            raise SpecError(f"has unbalanced parentheses in '{self.expr}'")
        return result

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        self.pos += 1
        return self.tokens[self.pos - 1]

    def either(self) -> list[list[_Term]]:
        out = self.both()
        while self.peek() == "|":
            self.take()
            out = out + self.both()
        return out

    def both(self) -> list[list[_Term]]:
        out = self.atom()
        while self.peek() == ",":
            self.take()
            right = self.atom()
            out = [a + b for a in out for b in right]
            if len(out) > _MAX_ALTERNATIVES:
                raise SpecError("has a version expression too large to translate")
        return out

    def atom(self) -> list[list[_Term]]:
        token = self.peek()
        if token is None or token in "|,)":
            raise SpecError(f"has an incomplete version expression ('{self.expr}')")
        self.take()
        if token == "(":
            inner = self.either()
            if self.peek() != ")":
                raise SpecError(f"has unbalanced parentheses in '{self.expr}'")
            self.take()
            return inner
        return [[_term(token.strip())]]


def _plain_release(v: Version) -> bool:
    return v.epoch == 0 and v.pre is None and v.post is None and v.dev is None and v.local is None


def _pep440(term: _Term) -> str:
    if term.op == "*":
        return ""
    if term.op in ("=*", "!=*"):
        op = term.op[:-1] if term.op == "!=*" else "=="
        # A prefix match is PEP 440's "==V.*"; a pre-, post- or dev-release cannot be a prefix there.
        return f"{op}{term.version}.*" if _plain_release(Version(term.version)) else f"{op}{term.version}"
    return f"{term.op}{term.version}"


@dataclass
class _Interval:
    lo: Version | None = None
    lo_in: bool = False
    hi: Version | None = None
    hi_in: bool = False
    texts: dict[Version, str] = field(default_factory=dict)

    def raise_lo(self, v: Version, inclusive: bool, text: str) -> None:
        if self.lo is None or v > self.lo or (v == self.lo and not inclusive):
            self.lo, self.lo_in = v, inclusive
            self.texts[v] = text

    def lower_hi(self, v: Version, inclusive: bool, text: str) -> None:
        if self.hi is None or v < self.hi or (v == self.hi and not inclusive):
            self.hi, self.hi_in = v, inclusive
            self.texts[v] = text

    def empty(self) -> bool:
        if self.lo is None or self.hi is None:
            return False
        return self.lo > self.hi or (self.lo == self.hi and not (self.lo_in and self.hi_in))

    def spec(self) -> str:
        if self.lo is not None and self.lo == self.hi:
            return f"=={self.texts[self.lo]}"
        parts = []
        if self.lo is not None:
            parts.append((">=" if self.lo_in else ">") + self.texts[self.lo])
        if self.hi is not None:
            parts.append(("<=" if self.hi_in else "<") + self.texts[self.hi])
        return ",".join(parts)


def _next_release(release: tuple[int, ...]) -> str:
    return ".".join(map(str, (*release[:-1], release[-1] + 1)))


def _interval(terms: list[_Term]) -> _Interval | None:
    """The versions a conjunction allows, as one interval; None when it has holes ('!=')."""
    span = _Interval()
    for t in terms:
        if t.op == "*":
            continue
        v = Version(t.version)
        if t.op == "==":
            span.raise_lo(v, True, t.version)
            span.lower_hi(v, True, t.version)
        elif t.op in (">=", ">"):
            span.raise_lo(v, t.op == ">=", t.version)
        elif t.op in ("<=", "<"):
            span.lower_hi(v, t.op == "<=", t.version)
        elif t.op == "=*" and _plain_release(v):
            span.raise_lo(v, True, t.version)
            upper = _next_release(v.release)
            span.lower_hi(Version(upper), False, upper)
        elif t.op == "~=" and len(v.release) >= 2 and _plain_release(v):
            span.raise_lo(v, True, t.version)
            upper = _next_release(v.release[:-1])
            span.lower_hi(Version(upper), False, upper)
        else:
            return None
    return span


def _union(spans: list[_Interval]) -> _Interval | None:
    """One interval covering exactly the union of ``spans``, or None when they leave a gap."""
    spans = sorted(spans, key=lambda s: (s.lo is not None, s.lo or Version("0"), not s.lo_in))
    merged = spans[0]
    for s in spans[1:]:
        if s.lo is not None and merged.hi is not None:
            touching = s.lo == merged.hi and (merged.hi_in or s.lo_in)
            if s.lo > merged.hi or (s.lo == merged.hi and not touching):
                return None
        merged.texts.update(s.texts)
        if merged.hi is not None and (s.hi is None or s.hi > merged.hi or (s.hi == merged.hi and s.hi_in)):
            merged.hi, merged.hi_in = s.hi, s.hi_in
    return merged


def translate_version(expr: str | None) -> str:
    """A conda version expression as a PEP 440 specifier ("" for any version); SpecError if pip cannot say it."""
    if not expr:
        return ""
    alternatives = _alternatives(expr)
    texts = [",".join(p for p in map(_pep440, conj) if p) for conj in alternatives]
    if len(set(texts)) == 1:
        return texts[0]
    if "" in texts:
        return ""  # one alternative allows any version
    spans = [_interval(conj) for conj in alternatives]
    usable = [s for s in spans if s is not None and not s.empty()]
    merged = _union(usable) if usable and None not in spans else None
    if merged is None:
        raise SpecError(
            f"asks for one of several version ranges ('{expr}'), which one pip requirement cannot express"
        )
    return merged.spec()


def _python_pin(spec: MatchSpec) -> tuple[int, int] | None:
    """The major.minor a ``python`` entry pins (``python=3.11``, ``python 3.11.4``, ``python==3.11.*``), if one."""
    if not spec.version:
        return None
    try:
        alternatives = _alternatives(spec.version)
    except SpecError:
        return None
    if len(alternatives) != 1 or len(alternatives[0]) != 1:
        return None
    term = alternatives[0][0]
    if term.op not in ("=*", "==") or len(Version(term.version).release) < 2:
        return None
    major, minor = Version(term.version).release[:2]
    return major, minor


# --- names --------------------------------------------------------------------------------------------------------


@functools.cache
def _mapping() -> tuple[dict[str, str], frozenset[str]]:
    doc = json.loads(_DATA.read_text(encoding="utf-8"))
    return dict(doc["renamed"]), frozenset(doc["not_python"])


def _brought(name: str, not_python: frozenset[str]) -> str | None:
    """Why the image needs no package for ``name``, if it does not. A pattern only ever matches a package known to
    hold no Python distribution (``cuda-*`` must not catch ``cuda-python``)."""
    for reason, patterns in _BROUGHT.items():
        for pattern in patterns.split():
            if name == pattern or (
                "*" in pattern and name in not_python and fnmatch.fnmatchcase(name, pattern)
            ):
                return reason
    return None


def _is_project(text: str) -> bool:
    """A PyPI project name, with extras or not, and nothing else (no version, marker or URL)."""
    try:
        req = Requirement(text)
    except InvalidRequirement:
        return False
    return not (req.specifier or req.marker or req.url)


def parse_conda_map(values: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``--conda-map CONDA=PYPI`` values (or the API's mapping) checked: conda name → PyPI name (extras allowed)."""
    if not values:
        return {}
    pairs = values.items() if isinstance(values, Mapping) else [v.partition("=")[::2] for v in values]
    out: dict[str, str] = {}
    for conda, pypi in pairs:
        conda, pypi = str(conda).strip().lower(), str(pypi).strip()
        if not _CONDA_NAME.match(conda) or not _is_project(pypi):
            raise UsageError(
                f"--conda-map {conda}={pypi}: expected CONDA=PYPI, a conda package name and a PyPI project "
                "name (extras allowed), e.g. --conda-map pytorch-gpu=torch"
            )
        out[conda] = pypi
    return out


def convert(
    path: Path,
    entries: Sequence[str],
    conda_map: Mapping[str, str] | None = None,
    drop: Collection[str] = (),
) -> CondaDependencies:
    """Turn the conda entries of ``path`` into requirements, the Python pin and notes, or raise one InputError.

    ``conda_map`` adds or overrides names (conda → PyPI); ``drop`` names conda packages to leave out.
    """
    where = f"conda file {path}"
    mapped = parse_conda_map(conda_map)
    renamed, not_python = _mapping()
    specs = _parse_entries(entries, where)
    dropping = {d.strip().lower() for d in drop if d.strip()}
    if unknown := sorted(dropping - {s.name for s in specs}):
        raise UsageError(f"--drop-conda {','.join(unknown)}: {path.name} lists no such conda package")

    requirements: list[str] = []
    shown: list[str] = []
    dropped: dict[str, list[str]] = {}
    missing: list[MatchSpec] = []
    python: tuple[int, int] | None = None
    for spec in specs:
        if spec.name in dropping:
            dropped.setdefault("--drop-conda", []).append(spec.name)
            continue
        if spec.name == "python":
            python = _python_pin(spec)
        pypi = mapped.get(spec.name)
        if pypi is None:
            if (reason := _brought(spec.name, not_python)) is not None:
                dropped.setdefault(reason, []).append(spec.name)
                continue
            if spec.name in not_python:
                missing.append(spec)
                continue
            # Not in the data: a Python distribution of the same name (or one conda-forge does not have).
            pypi = renamed.get(spec.name, spec.name)
        requirement = _requirement(spec, pypi, where)
        requirements.append(requirement)
        changed = canonicalize_name(Requirement(requirement).name) != canonicalize_name(spec.name)
        shown.append(f"{requirement} (from {spec.name})" if changed else requirement)
    if missing:
        raise _missing_error(where, missing)
    return CondaDependencies(tuple(requirements), python, _notes(where, shown, dropped, specs))


def _parse_entries(entries: Sequence[str], where: str) -> list[MatchSpec]:
    specs: list[MatchSpec] = []
    for entry in entries:
        try:
            specs.append(parse_match_spec(entry))
        except SpecError as e:
            raise InputError(f"{where}: dependency '{entry}' {e}; fix the entry") from None
    return specs


def _requirement(spec: MatchSpec, pypi: str, where: str) -> str:
    """The pip requirement for ``spec`` under its PyPI name ``pypi``, checked to be one."""
    try:
        version = translate_version(spec.version)
    except SpecError as e:
        raise InputError(f"{where}: dependency '{spec.text}' {e}; write one range in the file") from None
    requirement = f"{pypi}{version}"
    try:
        Requirement(requirement)
    except InvalidRequirement:
        raise InputError(
            f"{where}: dependency '{spec.text}' gives '{requirement}', which is not a pip requirement; "
            "fix the entry"
        ) from None
    return requirement


def _missing_error(where: str, missing: list[MatchSpec]) -> InputError:
    """The error for conda packages that hold no Python distribution and that nothing else brings."""
    one = len(missing) == 1
    return InputError(
        f"{where}: {', '.join(s.name for s in missing)} {'is a conda package' if one else 'are conda packages'} "
        f"with no Python distribution that no wheel brings; put {'it' if one else 'them'} in the base image "
        f"and pass --drop-conda {','.join(s.name for s in missing)}, or name a PyPI project with "
        "--conda-map NAME=PYPI"
    )


def _notes(
    where: str, shown: list[str], dropped: dict[str, list[str]], specs: list[MatchSpec]
) -> tuple[str, ...]:
    """What the conversion tells: what comes from PyPI, what is not installed, which channels are ignored."""
    notes = []
    if shown:
        notes.append(f"{where}: from PyPI: {', '.join(shown)}")
    if dropped:
        groups = "; ".join(f"{', '.join(names)} ({reason})" for reason, names in dropped.items())
        notes.append(f"{where}: not installed: {groups}")
    if channeled := [s for s in specs if s.channel]:
        listed = ", ".join(f"{s.channel}::{s.name}" for s in channeled)
        notes.append(f"{where}: channel ignored for {listed}; every package comes from PyPI")
    return tuple(notes)
