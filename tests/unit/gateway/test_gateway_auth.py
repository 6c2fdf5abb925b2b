"""Bearer tokens -> tenants."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth import PUBLIC_TENANT, Authenticator, TokenFile, TokenTable
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


def test_token_file_is_reread_only_when_it_changes(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text(f"{TA} team-a\n")
    source = TokenFile(f, spec=f"{TB}=team-b")
    assert source.load().tenants == {"team-a", "team-b"}
    assert source.reload_if_changed() is None
    replacement = tmp_path / "tokens.new"
    replacement.write_text("token-c-0123456789abcdef team-c\n")
    replacement.replace(f)  # how a Secret volume (and most editors) swap a file
    table = source.reload_if_changed()
    assert table is not None and table.tenants == {"team-c", "team-b"} and table.tenant(TA) is None
    assert source.reload_if_changed() is None


def test_a_broken_token_file_fails_once_per_change(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text(f"{TA} team-a\n")
    source = TokenFile(f)
    source.load()
    f.write_text("only-one-field-here\n")
    with pytest.raises(ValueError, match="expected 'token tenant'"):
        source.reload_if_changed()
    assert source.reload_if_changed() is None  # the same broken file is not re-read
    f.unlink()
    with pytest.raises(OSError):
        source.reload_if_changed()


def test_auth_required_by_a_token_file_stays_on_when_the_table_empties() -> None:
    auth = Authenticator(TokenTable([(TA, "team-a")]), required=True)
    assert auth.tenant({"authorization": f"Bearer {TA}"}) == "team-a"
    auth.replace(TokenTable())
    assert auth.enabled
    with pytest.raises(Unauthenticated, match="unknown token"):
        auth.tenant({"authorization": f"Bearer {TA}"})
    assert Authenticator(TokenTable(), required=True).enabled
