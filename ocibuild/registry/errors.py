"""Registry failures, each a one-line ``OcibuildError`` that names the image or registry and says what to do.

Messages never carry a password, a token or an ``Authorization`` header: only the user name and where the
credentials came from.
"""

from __future__ import annotations

from ..errors import OcibuildError


class RegistryError(OcibuildError):
    """The registry answered with an error, or the answer was not what the distribution API promises."""


class AuthenticationError(RegistryError):
    """Credentials are missing or wrong (HTTP 401 after one fresh attempt)."""


class AccessDeniedError(RegistryError):
    """Credentials are right but do not allow this pull or push (HTTP 403)."""


class NotFoundError(RegistryError):
    """No such repository, tag or manifest."""


class TLSError(RegistryError):
    """The registry's certificate is not trusted (or TLS failed in another way)."""

    def __init__(self, message: str, verification: bool = False):
        super().__init__(message)
        self.verification = verification  # the certificate failed verification (vs. no TLS spoken at all)


class UnreachableError(RegistryError):
    """No connection could be made (refused, unknown host, timed out)."""


class TransientError(RegistryError):
    """A failure that trying again later may cure: 408/429/5xx after our retries, or a connection lost mid-way."""

    retry_after: str | None = None  # the registry's Retry-After, for a caller that starts a whole upload over
