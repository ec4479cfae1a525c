"""``WWW-Authenticate`` parsing: what real registries send, and what a robust parser must survive."""

from __future__ import annotations

import pytest

from ocibuild.registry.auth import parse_challenges, repository_scope


def one(header: str):
    [c] = parse_challenges(header)
    return c.scheme, c.params


def test_distribution_bearer():
    scheme, params = one(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/python:pull"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/python:pull",
    }


def test_scope_with_commas_and_several_scopes_in_one_value():
    c = parse_challenges(
        'Bearer realm="https://r/token",scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope"'
    )[0]
    assert c.scopes == ("repository:a/b:pull,push", "repository:c:pull")
    assert c.params["error"] == "insufficient_scope"


def test_basic_and_case_insensitive_names():
    assert one('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})
    assert one('BEARER Realm="x", Service="y"') == ("bearer", {"realm": "x", "service": "y"})


def test_spaces_unquoted_values_and_escapes():
    scheme, params = one('Bearer  realm = "https://r/t" , service=reg.io,  note="say \\"hi\\", ok"')
    assert params == {"realm": "https://r/t", "service": "reg.io", "note": 'say "hi", ok'}


def test_several_challenges_in_one_header():
    got = parse_challenges('Basic realm="basic", Bearer realm="https://t/token",service="s", Negotiate')
    assert [c.scheme for c in got] == ["basic", "bearer", "negotiate"]
    assert got[1].params == {"realm": "https://t/token", "service": "s"}
    assert got[2].params == {}


def test_token68():
    assert one("Negotiate YIIBhwYGKwYBBQUCoIIBezCC==") == ("negotiate", {"": "YIIBhwYGKwYBBQUCoIIBezCC=="})


@pytest.mark.parametrize("header", ["", "   ", ",,,", "=x", 'Bearer realm="unterminated'])
def test_garbage_does_not_raise(header):
    for c in parse_challenges(header):
        assert isinstance(c.params, dict)


def test_unterminated_quote_keeps_what_it_can():
    assert one('Bearer realm="https://r/t') == ("bearer", {"realm": "https://r/t"})


def test_repository_scope():
    assert repository_scope("team/app", "pull,push") == "repository:team/app:pull,push"
