"""SIP digest authentication (RFC 3261 §22, RFC 7616, RFC 8760), pure.

- :mod:`sbc.auth.digest`: credentials parsing, hashes, stateless nonces,
  nonce-count replay tracking.
- :mod:`sbc.auth.userdb`: the htdigest-style user database.
- :mod:`sbc.auth.authenticator`: :class:`DigestAuthenticator`, the
  :class:`sbc.interfaces.IAuthenticator` the core calls.
- :mod:`sbc.auth.passwd`: the ``sbc-passwd`` command.

docs/authentication.md describes it for operators.
"""

from sbc.auth.authenticator import (
    DEFAULT_ALGORITHMS,
    DEFAULT_NONCE_LIFETIME,
    FAILURES,
    AuthenticationError,
    DigestAuthenticator,
)
from sbc.auth.userdb import UserDatabase, UserDatabaseError, add_user, load_user_database

__all__ = [
    "DEFAULT_ALGORITHMS",
    "DEFAULT_NONCE_LIFETIME",
    "FAILURES",
    "AuthenticationError",
    "DigestAuthenticator",
    "UserDatabase",
    "UserDatabaseError",
    "add_user",
    "load_user_database",
]
