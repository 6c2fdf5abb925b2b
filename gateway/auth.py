"""Bearer tokens -> tenants. The tenant is the cache namespace of every lookup and store.

Tokens come from a file and/or a string (an environment variable in
production). File format, one pair per line, ``#`` starts a comment::

    # token                              tenant
    3f9c1d0e8a7b4c2d9e6f5a4b3c2d1e0f     team-search
    0a1b2c3d4e5f60718293a4b5c6d7e8f9     team-support

String format: ``token=tenant,token=tenant``. With no tokens configured, auth is
off and every call is tenant ``public``. Tokens are kept only as SHA-256
digests, so a lookup's timing says nothing about how close a guess was.

A tokens file is re-read when it changes (``TokenFile``; the gateway polls it),
so tokens rotate without a restart: a Kubernetes Secret volume is updated in
place. Auth that was on at start stays on: a file that empties or fails to parse
never turns it off (a broken file keeps the previous tokens, an empty one
refuses every call).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from reprise.errors import Unauthenticated

AUTH_HEADER = "authorization"
PUBLIC_TENANT = "public"
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MIN_TOKEN_CHARS = 16


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class TokenTable:
    """Which tenant each bearer token belongs to."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._tenants: dict[bytes, str] = {}
        for token, tenant in pairs:
            self.add(token, tenant)

    def add(self, token: str, tenant: str) -> None:
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"token for tenant {tenant!r} is shorter than {MIN_TOKEN_CHARS} characters")
        if not _TENANT.match(tenant):
            raise ValueError(f"tenant {tenant!r}: use 1-64 of A-Z a-z 0-9 _ . - (starting with a letter or digit)")
        digest = _digest(token)
        if self._tenants.get(digest, tenant) != tenant:
            raise ValueError(f"one token is given for two tenants ({self._tenants[digest]!r}, {tenant!r})")
        self._tenants[digest] = tenant

    def __len__(self) -> int:
        return len(self._tenants)

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(self._tenants.values())

    def tenant(self, token: str) -> str | None:
        return self._tenants.get(_digest(token))

    @classmethod
    def parse_file(cls, path: str | Path) -> TokenTable:
        pairs = []
        for n, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{path}:{n}: expected 'token tenant'")
            pairs.append((parts[0], parts[1]))
        return cls(pairs)

    @classmethod
    def parse_spec(cls, spec: str) -> TokenTable:
        pairs = []
        for item in filter(None, (s.strip() for s in spec.split(","))):
            token, sep, tenant = item.partition("=")
            if not sep:
                raise ValueError("tokens: expected token=tenant[,token=tenant...]")
            pairs.append((token.strip(), tenant.strip()))
        return cls(pairs)

    @classmethod
    def load(cls, files: Sequence[str] = (), spec: str = "") -> TokenTable:
        table = cls()
        for f in files:
            for digest, tenant in cls.parse_file(f)._tenants.items():
                table._tenants[digest] = tenant
        for digest, tenant in cls.parse_spec(spec)._tenants.items():
            table._tenants[digest] = tenant
        return table


class TokenFile:
    """A tokens file (plus the fixed ``token=tenant`` spec), re-read only when it changed on disk."""

    def __init__(self, path: str | Path, spec: str = "") -> None:
        self.path = Path(path)
        self.spec = spec
        self._seen: tuple[int, int, int] | None = None

    def _signature(self) -> tuple[int, int, int]:
        st = os.stat(self.path)  # follows the symlinks a Secret volume swaps
        return st.st_ino, st.st_mtime_ns, st.st_size

    def load(self) -> TokenTable:
        """The table now; raises OSError/ValueError for a missing or malformed file."""
        self._seen = self._signature()
        return TokenTable.load([str(self.path)], self.spec)

    def reload_if_changed(self) -> TokenTable | None:
        """The new table when the file changed since the last load, else None.

        A change that fails to parse raises once; the same broken file is not re-read until it
        changes again.
        """
        signature = self._signature()
        if signature == self._seen:
            return None
        self._seen = signature
        return TokenTable.load([str(self.path)], self.spec)


class Authenticator:
    """The tenant of a call, from its metadata; UNAUTHENTICATED when auth is on and it has none.

    ``required`` keeps auth on even when the table is empty (a tokens file is configured).
    """

    def __init__(
        self, tokens: TokenTable | None = None, *, required: bool = False, operator_tokens: Iterable[str] = ()
    ) -> None:
        self._enabled = required or (tokens is not None and len(tokens) > 0)
        self._tokens = tokens if tokens is not None else TokenTable()
        self._operators = frozenset(_digest(t) for t in operator_tokens)
        for token in operator_tokens:
            if len(token) < MIN_TOKEN_CHARS:
                raise ValueError(f"operator token is shorter than {MIN_TOKEN_CHARS} characters")

    @property
    def enabled(self) -> bool:
        return self._enabled

    def replace(self, tokens: TokenTable) -> None:
        """Swap in a new table (one assignment: calls see the old or the new one, never a mix)."""
        self._tokens = tokens

    def is_operator(self, metadata: Iterable[tuple[str, str | bytes]] | Mapping[str, str] | None) -> bool:
        """Whether the call carries an operator token (global Stats); never raises."""
        if not self._operators:
            return False
        try:
            token = self._bearer(metadata)
        except Unauthenticated:
            return False
        return _digest(token) in self._operators

    def tenant(self, metadata: Iterable[tuple[str, str | bytes]] | Mapping[str, str] | None) -> str:
        if not self._enabled:
            return PUBLIC_TENANT
        tenant = self._tokens.tenant(self._bearer(metadata))
        if tenant is None:
            raise Unauthenticated("unknown token")
        return tenant

    @staticmethod
    def _bearer(metadata: Iterable[tuple[str, str | bytes]] | Mapping[str, str] | None) -> str:
        value = None
        for key, v in (metadata.items() if isinstance(metadata, Mapping) else metadata or ()):
            if key == AUTH_HEADER:
                value = v.decode("ascii", "replace") if isinstance(v, bytes) else v
                break
        if not value:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        return token.strip()
