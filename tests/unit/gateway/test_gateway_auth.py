"""Bearer tokens -> tenants."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth import PUBLIC_TENANT, Authenticator, TokenTable
from reprise.errors import Unauthenticated

TA, TB = "token-a-0123456789abcdef", "token-b-0123456789abcdef"


def test_file_and_spec_formats(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text(f"# comment\n{TA}   team-a\n\n{TB} team-b  # trailing comment\n")
    table = TokenTable.load([str(f)], spec="token-c-0123456789abcdef=team-c")
    assert table.tenant(TA) == "team-a" and table.tenant(TB) == "team-b"
    assert table.tenant("token-c-0123456789abcdef") == "team-c"
    assert table.tenant("nope") is None
    assert table.tenants == {"team-a", "team-b", "team-c"}


@pytest.mark.parametrize(
    ("spec", "why"),
    [("short=team", "shorter than"), (f"{TA}=bad tenant!", "tenant"), (f"{TA}", "token=tenant"),
     (f"{TA}=a,{TA}=b", "two tenants")],
)
def test_bad_token_config_is_refused(spec: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        TokenTable.parse_spec(spec)


def test_authenticator() -> None:
    off = Authenticator()
    assert not off.enabled and off.tenant(()) == PUBLIC_TENANT
    on = Authenticator(TokenTable([(TA, "team-a")]))
    assert on.tenant((("x-request-id", "r"), ("authorization", f"Bearer {TA}"))) == "team-a"
    assert on.tenant({"authorization": f"bearer  {TA} "}) == "team-a"
    for metadata, why in [((), "missing"), ((("authorization", "Basic abc"),), "Bearer"),
                          ((("authorization", "Bearer wrong-token-0123456789"),), "unknown token")]:
        with pytest.raises(Unauthenticated, match=why):
            on.tenant(metadata)
