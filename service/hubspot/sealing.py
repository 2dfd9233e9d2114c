"""OAuth tokens at rest: sealed with the Fernet keys of TOKEN_ENCRYPTION_KEY, so keys rotate.

A sealed value is `fernet:` + a Fernet token (AES-128-CBC and HMAC-SHA256, from the
`cryptography` package). The first key seals; every key opens (MultiFernet), so a new key is
added in front, `hubspot-webhooks rotate-token-key` re-seals every row with it, and then the old
one is removed. A value without the prefix is a token stored before encryption: it is read as it
is (oauth.py warns once per portal) until a refresh or `rotate-token-key` seals it.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

PREFIX = "fernet:"


class NoKey(Exception):
    """TOKEN_ENCRYPTION_KEY is not set, so tokens can be neither sealed nor opened."""


class WrongKey(Exception):
    """None of the configured keys opens a sealed token."""


def generate_key() -> str:
    """A new random Fernet key (32 bytes, URL-safe base64) for TOKEN_ENCRYPTION_KEY."""
    return Fernet.generate_key().decode("ascii")


def is_sealed(stored: str) -> bool:
    """Whether a stored token is sealed (else it is a plaintext token from before encryption)."""
    return stored.startswith(PREFIX)


class TokenCipher:
    """Seals with the first key, opens with any (TOKEN_ENCRYPTION_KEY, comma-separated)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._fernets = [Fernet(key) for key in keys]
        self._multi = MultiFernet(self._fernets) if self._fernets else None
        # Portals whose plaintext (pre-encryption) tokens this cipher has warned about.
        self.warned_plaintext: set[int] = set()

    @property
    def can_seal(self) -> bool:
        """Whether a key is configured."""
        return self._multi is not None

    def seal(self, token: str) -> str:
        """The token encrypted with the first key, as stored."""
        return PREFIX + self._cipher().encrypt(token.encode()).decode("ascii")

    def open(self, stored: str) -> str:
        """The token a stored value holds; a plaintext value (from before encryption) as is."""
        if not is_sealed(stored):
            return stored
        try:
            return self._cipher().decrypt(stored.removeprefix(PREFIX).encode()).decode()
        except InvalidToken:
            raise WrongKey("no TOKEN_ENCRYPTION_KEY key opens this token") from None

    def reseal(self, stored: str) -> str:
        """The stored value sealed with the first key (a plaintext value gets sealed)."""
        if not is_sealed(stored):
            return self.seal(stored)
        try:
            return PREFIX + self._cipher().rotate(stored.removeprefix(PREFIX).encode()).decode()
        except InvalidToken:
            raise WrongKey("no TOKEN_ENCRYPTION_KEY key opens this token") from None

    def key_index(self, stored: str) -> int | None:
        """Which configured key (0: the first) opens a sealed value; None when none does."""
        sealed = stored.removeprefix(PREFIX).encode()
        for index, fernet in enumerate(self._fernets):
            try:
                fernet.decrypt(sealed)
            except InvalidToken:
                continue
            return index
        return None

    def _cipher(self) -> MultiFernet:
        if self._multi is None:
            raise NoKey(
                "TOKEN_ENCRYPTION_KEY is not set: OAuth tokens are kept encrypted with it (make"
                " one with `hubspot-webhooks rotate-token-key --generate`)"
            )
        return self._multi
