"""Where wheels come from: package indexes, find-links folders, ``--no-index``, and the credentials they carry.

Owns the user's package-source options, how they reach the installers (index URLs only ever through the child's
environment, never its command line, since ``/proc/PID/cmdline`` is readable by every user), the part of them that
keys the dependencies layer (URLs without their user info, folders by their files' digests), and the redaction of
every secret an installer could be handed: user info in URLs, ``~/.netrc`` passwords and uv's
``UV_INDEX_<NAME>_PASSWORD``. Never opens a network connection and never writes a credential anywhere.
"""

from __future__ import annotations

import datetime
import hashlib
import netrc
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from ocibuild.errors import UsageError

__all__ = ["PackageSources", "parse_exclude_newer", "redact_urls"]

# Environment variables through which installers take index URLs (each may hold user info); what ocibuild strips
# from a child's environment when the user's flags replace them, and searches for secrets to redact.
PIP_INDEX_VARS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")
UV_INDEX_VARS = ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL", "UV_INDEX")
_URL_VARS = (*PIP_INDEX_VARS, *UV_INDEX_VARS, "PIP_FIND_LINKS", "UV_FIND_LINKS")
_UV_INDEX_CREDENTIAL = re.compile(r"^UV_INDEX_(?P<name>[A-Z0-9_]+)_(?P<field>USERNAME|PASSWORD)$")

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s\"'<>]+)@")
_MIN_SECRET = 3  # shorter "secrets" (a user named "a") would blank out ordinary words


def redact_urls(text: str) -> str:
    """``scheme://user:password@host`` becomes ``scheme://****@host``: a token may sit in the user name too."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}****@", text)


def strip_userinfo(url: str) -> str:
    """The URL without user info: what names an index in messages and in the cache key."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _userinfo_secrets(url: str) -> set[str]:
    parts = urlsplit(url.strip())
    if "@" not in parts.netloc:
        return set()
    userinfo = parts.netloc.rpartition("@")[0]
    out = set()
    for field in userinfo.split(":", 1):
        out |= {field, unquote(field), quote(unquote(field), safe="")}
    return out


def _netrc_secrets(env: Mapping[str, str]) -> set[str]:
    path = Path(env.get("NETRC") or Path(env.get("HOME") or Path.home()) / ".netrc")
    try:
        hosts = netrc.netrc(str(path)).hosts
    except (OSError, netrc.NetrcParseError):
        return set()
    return {secret for login, account, password in hosts.values() for secret in (password, account) if secret}


def _find_links_digest(directory: Path) -> list[list[str]]:
    """Each file pip or uv would read in a find-links folder (its top level), by name and sha256."""
    out = []
    for path in sorted(directory.iterdir()):
        if path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            out.append([path.name, digest.hexdigest()])
    return out


@dataclass(frozen=True)
class PackageSources:
    """``--index-url``, ``--extra-index-url``, ``--find-links`` and ``--no-index``, as pip and uv mean them.

    Empty by default: then each installer reads its own configuration (``PIP_*`` variables and ``pip.conf`` for
    pip, ``UV_*`` for uv), as it always has; options given here replace those.
    """

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[Path, ...] = ()
    no_index: bool = False

    @classmethod
    def create(
        cls,
        index_url: str | None = None,
        extra_index_urls: Iterable[str] = (),
        find_links: Iterable[str | os.PathLike[str]] = (),
        no_index: bool = False,
    ) -> PackageSources:
        """Checked sources: URLs that an installer can use, folders that exist, no contradiction."""
        if isinstance(extra_index_urls, str) or isinstance(find_links, (str, os.PathLike)):
            raise UsageError("extra index URLs and find-links folders are lists; pass [value]")
        urls = [("--index-url", index_url)] if index_url is not None else []
        urls += [("--extra-index-url", u) for u in extra_index_urls]
        for option, url in urls:
            parts = urlsplit(url.strip())
            if parts.scheme not in ("http", "https", "file") or not (parts.netloc or parts.scheme == "file"):
                raise UsageError(
                    f"{option} {redact_urls(url)!r} is not an index URL; give one like https://host/simple"
                )
        if no_index and urls:
            raise UsageError(f"--no-index contradicts {urls[0][0]}; give one or the other")
        folders = []
        for entry in find_links:
            path = Path(entry)
            if not path.is_dir():
                raise UsageError(
                    f"--find-links {path}: no such directory; give a folder of wheels (and source archives)"
                )
            folders.append(path.absolute())
        if no_index and not folders:
            raise UsageError("--no-index leaves nowhere to find packages; add --find-links DIR")
        return cls(
            index_url.strip() if index_url is not None else None,
            tuple(u.strip() for u in extra_index_urls),
            tuple(folders),
            no_index,
        )

    def is_default(self) -> bool:
        return self == PackageSources()

    def key_doc(self) -> dict[str, object]:
        """What keys the dependencies layer: URLs without user info (a new password builds nothing new), each
        find-links folder by its files' digests (a wheel dropped into it does)."""
        return {
            "index_url": strip_userinfo(self.index_url) if self.index_url else None,
            "extra_index_urls": [strip_userinfo(u) for u in self.extra_index_urls],
            "find_links": [_find_links_digest(p) for p in self.find_links],
            "no_index": self.no_index,
        }

    def describe(self) -> str:
        """The sources in one phrase for progress lines, without credentials."""
        parts = []
        if self.no_index:
            parts.append("no index")
        if self.index_url:
            parts.append(f"index {strip_userinfo(self.index_url)}")
        parts += [f"extra index {strip_userinfo(u)}" for u in self.extra_index_urls]
        parts += [f"find-links {p}" for p in self.find_links]
        return ", ".join(parts)

    # --- how each installer is told -------------------------------------------------------------------------

    def pip_args(self) -> list[str]:
        """pip options that carry no secret (folders and --no-index); index URLs go through ``pip_env``."""
        args = ["--no-index"] if self.no_index else []
        for path in self.find_links:
            args += ["--find-links", str(path)]
        return args

    def pip_env(self, env: dict[str, str]) -> None:
        """Put the index URLs into a pip child's environment, replacing the user's own ones when given."""
        if self.index_url is not None:
            env["PIP_INDEX_URL"] = self.index_url
        if self.extra_index_urls:
            env["PIP_EXTRA_INDEX_URL"] = " ".join(self.extra_index_urls)

    def uv_args(self) -> list[str]:
        """uv options that carry no secret. ``--no-index`` with local folders only also means ``--offline``:
        the air-gapped build must not even try the network."""
        args = ["--no-index", "--offline"] if self.no_index else []
        for path in self.find_links:
            args += ["--find-links", str(path)]
        return args

    def uv_env(self, env: dict[str, str]) -> None:
        """Put the index URLs into a uv child's environment, replacing the user's own ones when given."""
        if self.index_url is not None:
            for var in ("UV_DEFAULT_INDEX", "UV_INDEX"):
                env.pop(var, None)
            env["UV_INDEX_URL"] = self.index_url
        if self.extra_index_urls:
            env.pop("UV_INDEX", None)
            env["UV_EXTRA_INDEX_URL"] = " ".join(self.extra_index_urls)

    def pip_env_like_uv(self, env: dict[str, str]) -> None:
        """A pip child that must see the sources a uv run saw (a source build next to a uv install): uv's
        variables become pip's, pip's own configuration files are not read, and then the options apply."""
        for var in (*PIP_INDEX_VARS, "PIP_FIND_LINKS", "PIP_NO_INDEX"):
            env.pop(var, None)
        env["PIP_CONFIG_FILE"] = os.devnull
        default = env.get("UV_INDEX_URL") or env.get("UV_DEFAULT_INDEX")
        extras = env.get("UV_EXTRA_INDEX_URL", "").split()
        for entry in env.get("UV_INDEX", "").split():
            name, sep, url = entry.partition("=")
            if not sep:
                name, url = "", entry
            extras.append(_with_uv_credentials(url, name, env))
        if default:
            env["PIP_INDEX_URL"] = default
        if extras:
            env["PIP_EXTRA_INDEX_URL"] = " ".join(extras)
        if env.get("UV_FIND_LINKS"):
            env["PIP_FIND_LINKS"] = " ".join(re.split(r"[,\s]+", env["UV_FIND_LINKS"].strip()))
        if env.get("UV_OFFLINE", "").lower() in ("1", "true", "yes"):
            env["PIP_NO_INDEX"] = "1"
        self.pip_env(env)

    # --- secrets ----------------------------------------------------------------------------------------------

    def secrets(self, env: Mapping[str, str] | None = None) -> set[str]:
        """Every secret an installer run could see: in these URLs, the index variables, uv's index
        credentials and ``~/.netrc``; each as written, URL-decoded and URL-encoded."""
        env = os.environ if env is None else env
        found: set[str] = set()
        for url in [self.index_url or "", *self.extra_index_urls]:
            found |= _userinfo_secrets(url)
        for var in _URL_VARS:
            for url in env.get(var, "").split():
                found |= _userinfo_secrets(url.partition("=")[2] if var == "UV_INDEX" else url)
        for var, value in env.items():
            if _UV_INDEX_CREDENTIAL.match(var) and value:
                found |= {value, quote(value, safe="")}
        for secret in _netrc_secrets(env):
            found |= {secret, quote(secret, safe="")}
        return {s for s in found if len(s) >= _MIN_SECRET}


def _with_uv_credentials(url: str, name: str, env: Mapping[str, str]) -> str:
    """A named uv index's URL with the ``UV_INDEX_<NAME>_USERNAME``/``PASSWORD`` it takes from the environment."""
    var = re.sub(r"[^A-Z0-9]", "_", name.upper())
    user, password = env.get(f"UV_INDEX_{var}_USERNAME"), env.get(f"UV_INDEX_{var}_PASSWORD")
    parts = urlsplit(url)
    if not name or not (user or password) or "@" in parts.netloc:
        return url
    userinfo = quote(user or "", safe="") + (":" + quote(password, safe="") if password else "")
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))


class Redactor:
    """Removes credentials from installer output before it is printed, logged or put into an error."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so that a secret containing another is replaced whole.
        self._secrets = sorted(set(secrets), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = redact_urls(text)
        for secret in self._secrets:
            text = text.replace(secret, "****")
        return text


def parse_exclude_newer(value: str | datetime.date | datetime.datetime) -> str:
    """``--exclude-newer``: a date (midnight UTC: nothing uploaded on that day or later) or an ISO 8601 time,
    as the RFC 3339 UTC timestamp that both uv and pip take and the cache key holds."""
    when: datetime.datetime
    if isinstance(value, datetime.datetime):
        when = value
    elif isinstance(value, datetime.date):
        when = datetime.datetime(value.year, value.month, value.day)
    else:
        text = value.strip()
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                when = datetime.datetime.fromisoformat(text)
            else:
                when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise UsageError(
                f"--exclude-newer {value!r} is not a date; give YYYY-MM-DD or an ISO 8601 time such as "
                "2024-05-01T12:00:00Z"
            ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
