"""The distribution API for one repository: manifests by tag or digest, and blobs (HEAD, GET, mount, upload).

What comes back is verified: a manifest fetched by digest must hash to it (by tag, to ``Docker-Content-Digest``
when the registry sends one); a blob is a stream that raises at its end unless it hashes to its descriptor. What
goes up is streamed: a blob is never read into memory (monolithic PUT with a known Content-Length, or PATCH
chunks of ``chunk_size`` when a registry or its proxy refuses the single PUT), and a manifest is sent as the exact
bytes whose digest we computed, with its own media type.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from urllib.parse import urlencode, urljoin

import requests
import urllib3

from ..errors import DigestMismatchError, FormatError
from ..oci import media
from ..oci.descriptor import MAX_DOCUMENT_BYTES, Descriptor
from ..oci.digest import CHUNK, Digest, Stream, VerifyingReader, is_digest
from .auth import repository_scope
from .errors import AccessDeniedError, NotFoundError, RegistryError, TransientError
from .options import retry_delay
from .transport import StaleToken, Transport, reason, registry_errors, status_error

MANIFEST_ACCEPT = ", ".join(
    [media.OCI_MANIFEST, media.OCI_INDEX, media.DOCKER_MANIFEST, media.DOCKER_MANIFEST_LIST]
)
MIN_CHUNK = 5 << 20  # ECR refuses PATCH chunks under 5 MiB (except the last)

Progress = Callable[[int], None]  # bytes sent so far


class RegistryClient:
    """One repository on one registry, for pulling (``push=False``) or pushing (scope ``pull,push``)."""

    def __init__(self, transport: Transport, repository: str, push: bool = False):
        self.transport = transport
        self.repository = repository
        self.actions = "pull,push" if push else "pull"
        self.what = f"{transport.host}/{repository}"

    @property
    def scopes(self) -> tuple[str, ...]:
        return (repository_scope(self.repository, self.actions),)

    def _request(self, method: str, path: str, what: str | None = None, **kwargs) -> requests.Response:
        kwargs.setdefault("scopes", self.scopes)
        return self.transport.request(method, path, what=what or self.what, **kwargs)

    def _denied(self, what: str, doing: str) -> AccessDeniedError:
        creds = self.transport.auth.credentials
        who = f"user {creds.username}" if creds else "anonymous access"
        return AccessDeniedError(f"{what}: access denied: {who} may not {doing}")

    # ---------------------------------------------------------------- manifests

    def get_manifest(self, reference: str) -> tuple[bytes, str]:
        """The raw manifest or index tagged (or digested) ``reference``, verified, and its media type."""
        what = self.what + ("@" if is_digest(reference) else ":") + reference
        policy = self.transport.options.retry
        attempt = 0
        mt = header = ""
        while True:
            attempt += 1
            response = self._request(
                "GET", f"/v2/{self.repository}/manifests/{reference}", what,
                headers={"Accept": MANIFEST_ACCEPT}, stream=True,
            )  # fmt: skip
            with response:
                if response.status_code == 404:
                    # distribution 2.x answers MANIFEST_UNKNOWN for a missing repository too: say only what we know.
                    detail = " (no such repository)" if "NAME_UNKNOWN" in response.text else ""
                    raise NotFoundError(f"{what}: no such image{detail}")
                if response.status_code == 403:
                    raise self._denied(what, f"pull {self.repository}")
                if response.status_code != 200:
                    raise status_error(response, what, "fetching the manifest")
                try:
                    raw = _read_limited(response, MAX_DOCUMENT_BYTES, what)
                except _LOST as e:  # the body broke off or stalled: a GET can simply be sent again
                    if attempt < policy.attempts:
                        time.sleep(retry_delay(attempt, None, policy))
                        continue
                    raise TransientError(
                        f"{what}: connection lost while downloading the manifest ({reason(e)}); try again"
                    ) from None
                mt = response.headers.get("Content-Type", "").split(";")[0].strip()
                header = response.headers.get("Docker-Content-Digest", "")
            break
        got = Digest.of(raw)
        expected = reference if is_digest(reference) else (header if is_digest(header) else None)
        if expected is not None and got != expected:
            raise DigestMismatchError(
                f"{what}: the manifest hashes to {got.short}, not {Digest(expected).short}; "
                "the registry or a proxy altered it"
            )
        if mt not in media.MANIFESTS and mt not in media.INDEXES:
            mt = ""  # let the document's own mediaType decide (some registries send application/json)
        return raw, mt

    def put_manifest(self, reference: str, raw: bytes, media_type: str) -> Digest:
        """PUT the exact bytes; returns their digest after checking the registry stored them under it."""
        what = self.what + ("@" if is_digest(reference) else ":") + reference
        response = self._request(
            "PUT", f"/v2/{self.repository}/manifests/{reference}", what,
            headers={"Content-Type": media_type}, data=raw,
        )  # fmt: skip
        with response:
            if response.status_code == 403:
                raise self._denied(what, f"push to {self.repository}")
            if response.status_code not in (200, 201):
                raise status_error(response, what, "pushing the manifest")
            stored = response.headers.get("Docker-Content-Digest", "")
        digest = Digest.of(raw)
        if is_digest(stored) and stored != digest:
            raise RegistryError(f"{what}: the registry stored the manifest as {stored}, not as {digest}")
        return digest

    def has_manifest(self, digest: Digest) -> bool:
        """Whether the repository holds the manifest ``digest`` (a HEAD: nothing is downloaded)."""
        what = f"{self.what}@{digest}"
        return self._exists(f"manifests/{digest}", what, "pull", "checking for the manifest", Accept=MANIFEST_ACCEPT)

    def get_referrers(self, digest: Digest) -> bytes | None:
        """The referrers API's index of the manifests whose subject is ``digest``; None when the registry has no
        referrers API (a 404, as distribution 2.8 answers: then the referrers tag schema holds them)."""
        what = f"{self.what}@{digest} referrers"
        response = self._request(
            "GET", f"/v2/{self.repository}/referrers/{digest}", what, headers={"Accept": media.OCI_INDEX}, stream=True
        )
        with response:
            if response.status_code == 404:
                return None
            if response.status_code == 403:
                raise self._denied(what, f"pull {self.repository}")
            if response.status_code != 200:
                raise status_error(response, what, "listing the referrers")
            if response.headers.get("Content-Type", "").split(";")[0].strip() != media.OCI_INDEX:
                return None  # a catch-all route answering something else: no referrers API
            return _read_limited(response, MAX_DOCUMENT_BYTES, what)

    # ---------------------------------------------------------------- blobs

    def has_blob(self, digest: Digest) -> bool:
        return self._exists(f"blobs/{digest}", self.what, "read", f"checking blob {digest.short}")

    def _exists(self, path: str, what: str, right: str, doing: str, **headers: str) -> bool:
        """A HEAD of ``/v2/REPO/{path}``: True (200), False (404), or the error (``right``: what a 403 denies)."""
        response = self._request("HEAD", f"/v2/{self.repository}/{path}", what, headers=headers)
        with response:
            if response.status_code == 200:
                return True
            if response.status_code == 404:
                return False
            if response.status_code == 403:
                raise self._denied(what, f"{right} {self.repository}")
            raise status_error(response, what, doing)

    def open_blob(self, desc: Descriptor) -> Stream:
        """A stream of the blob (redirects followed) that raises ``DigestMismatchError`` at its end if wrong."""
        response = self._request("GET", f"/v2/{self.repository}/blobs/{desc.digest}", stream=True)
        if response.status_code != 200:
            with response:
                if response.status_code == 404:
                    raise NotFoundError(
                        f"{self.what}: blob {desc.digest.short} is in the manifest but not in the registry"
                    )
                if response.status_code == 403:
                    raise self._denied(self.what, f"pull {self.repository}")
                raise status_error(response, self.what, f"downloading blob {desc.digest.short}")
        return VerifyingReader(
            _Body(response, self.what),
            desc.digest,
            desc.size,
            what=f"blob {desc.digest.short} from {self.what}",
        )

    def mount_blob(self, digest: Digest, source_repository: str) -> str | None:
        """Cross-repository mount; None when mounted, else the upload location the registry opened instead."""
        scopes = (*self.scopes, repository_scope(source_repository, "pull"))
        query = urlencode({"mount": str(digest), "from": source_repository})
        response = self._request("POST", f"/v2/{self.repository}/blobs/uploads/?{query}", scopes=scopes)
        with response:
            if response.status_code == 201:
                return None
            if response.status_code == 202:
                return _location(response, self.what)
            if response.status_code == 403:
                raise self._denied(self.what, f"push to {self.repository}")
            raise status_error(response, self.what, f"mounting blob {digest.short}")

    def start_upload(self) -> str:
        response = self._request("POST", f"/v2/{self.repository}/blobs/uploads/")
        with response:
            if response.status_code == 202:
                return _location(response, self.what)
            if response.status_code == 403:
                raise self._denied(self.what, f"push to {self.repository}")
            if response.status_code == 404:
                raise NotFoundError(
                    f"{self.what}: the registry has no such repository and will not create it"
                )
            raise status_error(response, self.what, "starting an upload")

    def upload_blob(
        self,
        desc: Descriptor,
        open_stream: Callable[[], AbstractContextManager[Stream]],
        progress: Progress,
        location: str | None = None,
        chunk_size: int = MIN_CHUNK,
        monolithic: bool = True,
    ) -> str:
        """Upload a blob streamed from ``open_stream()``; returns how ("monolithic" or "chunked").

        A single PUT first; when the registry (or a proxy with a body-size limit) refuses it, a new session in
        PATCH chunks of ``chunk_size``. Memory holds at most one send block, or one chunk.
        """
        location = location or self.start_upload()
        if monolithic:
            refused = self._put_whole(location, desc, open_stream, progress)
            if refused is None:
                return "monolithic"
            location = self.start_upload()
        progress(0)
        with open_stream() as stream:
            offset = 0
            while chunk := _read_exactly(stream, chunk_size):
                response = self._request(
                    "PATCH", location, replayable=False, data=chunk,
                    headers={"Content-Type": "application/octet-stream",
                             "Content-Range": f"{offset}-{offset + len(chunk) - 1}"},
                )  # fmt: skip
                with response:
                    if response.status_code != 202:
                        raise status_error(
                            response, self.what, f"uploading blob {desc.digest.short} in chunks"
                        )
                    location = _location(response, self.what)
                offset += len(chunk)
                progress(offset)
        response = self._request(
            "PUT",
            _with_digest(location, desc.digest),
            data=b"",
            headers={"Content-Type": "application/octet-stream"},
        )
        with response:
            self._check_committed(response, desc)
        return "chunked"

    def _put_whole(self, location, desc, open_stream, progress) -> int | None:
        """Monolithic PUT; None when stored, else the reason (an HTTP status, 0 for a dropped connection) to
        fall back to chunks."""
        with open_stream() as stream:
            body = _Upload(stream, desc.size, progress)
            try:
                response = self._request(
                    "PUT", _with_digest(location, desc.digest), replayable=False, data=body,
                    headers={"Content-Type": "application/octet-stream"},
                    timeout=self.transport.options.retry.read_timeout * self.transport.options.retry.upload_wait,
                )  # fmt: skip
            except StaleToken:
                raise
            except TransientError:
                return 0  # e.g. a proxy closing the connection on a body over its limit
        with response:
            if response.status_code in (401, 403, 404, 408, 429) or response.status_code >= 500:
                self._check_committed(response, desc)
            if response.status_code in (200, 201, 204):
                self._check_committed(response, desc)
                return None
            return response.status_code

    def _check_committed(self, response: requests.Response, desc: Descriptor) -> None:
        if response.status_code == 403:
            raise self._denied(self.what, f"push to {self.repository}")
        if response.status_code == 404:
            raise TransientError(
                f"{self.what}: the registry lost the upload of blob {desc.digest.short}; try again"
            )
        if response.status_code == 400 and "DIGEST_INVALID" in registry_errors(response):
            raise DigestMismatchError(
                f"{self.what}: the registry found that blob {desc.digest.short} as sent does not hash to its "
                "digest; the local copy is corrupt: remove it from the cache (--cache) and build again"
            )
        if response.status_code not in (200, 201, 204):
            raise status_error(response, self.what, f"uploading blob {desc.digest.short}")
        stored = response.headers.get("Docker-Content-Digest", "")
        if is_digest(stored) and stored != desc.digest:
            raise RegistryError(f"{self.what}: the registry stored blob {desc.digest.short} as {stored}")


_LOST = (urllib3.exceptions.HTTPError, requests.RequestException, OSError)  # a body that broke off or stalled


class _Body:
    """A response body as a plain stream; a connection lost mid-way becomes a ``TransientError``."""

    def __init__(self, response: requests.Response, what: str):
        self._response = response
        self._raw = response.raw
        self._raw.decode_content = True
        self._what = what

    def read(self, n: int = -1) -> bytes:
        try:
            return self._raw.read(n if n is not None and n >= 0 else None)
        except _LOST as e:
            raise TransientError(f"{self._what}: connection lost while downloading ({reason(e)})") from None

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Upload:
    """A blob stream of known length, for requests: sent with Content-Length, in blocks, counted as it goes."""

    def __init__(self, stream: Stream, size: int, progress: Progress):
        self._stream = stream
        self._size = size
        self._progress = progress
        self.sent = 0

    def __len__(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n if n and n > 0 else CHUNK)
        self.sent += len(data)
        self._progress(self.sent)
        return data


def _read_exactly(stream: Stream, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        data = stream.read(min(n - got, CHUNK))
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def _read_limited(response: requests.Response, limit: int, what: str) -> bytes:
    parts, got = [], 0
    for data in response.iter_content(CHUNK):
        got += len(data)
        if got > limit:
            raise FormatError(f"{what}: the manifest is over {limit} bytes; refusing it")
        parts.append(data)
    return b"".join(parts)


def _location(response: requests.Response, what: str) -> str:
    loc = response.headers.get("Location")
    if not loc:
        raise RegistryError(f"{what}: the registry opened an upload but gave no Location")
    return urljoin(response.url, loc)


def _with_digest(location: str, digest: Digest) -> str:
    return location + ("&" if "?" in location else "?") + urlencode({"digest": str(digest)})
