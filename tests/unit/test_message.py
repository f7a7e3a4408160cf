"""Headers multi-map semantics, message accessors, serialization and build_response."""

from __future__ import annotations

from pathlib import Path

import pytest

from b2bua import native
from b2bua.sip.headers import HeaderError
from b2bua.sip.message import Headers, Request, Response, build_response, reason_for
from b2bua.sip.uri import parse_uri


def make_headers() -> Headers:
    return Headers(
        [
            ("v", "SIP/2.0/UDP a.example;branch=z9hG4bK1, SIP/2.0/TCP b.example;branch=z9hG4bK2"),
            ("Via", "SIP/2.0/UDP c.example;branch=z9hG4bK3"),
            ("f", '"Ann" <sip:ann@a.example>;tag=af'),
            ("t", "<sip:bob@b.example>"),
            ("i", "cid-1@a.example"),
            ("cseq", "7 INVITE"),
            ("Max-Forwards", "70"),
            ("X-Odd", "keep   this ;;,, as is"),
            ("Route", "<sip:p1.example;lr>, <sip:p2.example;lr>"),
        ]
    )


def test_headers_canonicalise_and_lookup() -> None:
    h = make_headers()
    assert [n for n, _ in h][:6] == ["Via", "Via", "From", "To", "Call-ID", "CSeq"]
    assert "call-id" in h and "I" in h and "Contact" not in h and 3 not in h
    assert h.get("CALL-ID") == "cid-1@a.example"
    assert h.get("x-odd") == "keep   this ;;,, as is"
    assert h.get("Nope") is None
    assert h.get_all("v") == [
        "SIP/2.0/UDP a.example;branch=z9hG4bK1, SIP/2.0/TCP b.example;branch=z9hG4bK2",
        "SIP/2.0/UDP c.example;branch=z9hG4bK3",
    ]
    assert len(h.values("Via")) == 3
    assert h.values("From") == ['"Ann" <sip:ann@a.example>;tag=af']  # not a list header: no split
    assert len(h) == 9


def test_headers_set_replaces_in_place() -> None:
    h = make_headers().set("Via", "SIP/2.0/UDP new;branch=z9hG4bKn")
    assert h.get_all("Via") == ["SIP/2.0/UDP new;branch=z9hG4bKn"]
    assert [n for n, _ in h][0] == "Via"  # at the first one's place
    h2 = make_headers().set("route", ["<sip:x;lr>", "<sip:y;lr>"])
    assert h2.get_all("Route") == ["<sip:x;lr>", "<sip:y;lr>"]
    assert [n for n, _ in h2][-2:] == ["Route", "Route"]
    h3 = make_headers().set("Contact", "<sip:c@h>")
    assert [n for n, _ in h3][-1] == "Contact"


def test_headers_add_remove() -> None:
    h = make_headers().add("Record-Route", "<sip:me;lr>", first=True).add("x-new", "1")
    items = list(h)
    assert items[0] == ("Record-Route", "<sip:me;lr>") and items[-1] == ("x-new", "1")
    h2 = h.remove("via", "X-NEW", "Record-Route")
    assert "Via" not in h2 and "x-new" not in h2 and "Record-Route" not in h2
    assert h2.get("From") is not None
    assert h == make_headers().add("Record-Route", "<sip:me;lr>", first=True).add("x-new", "1")


def test_pop_first_value() -> None:
    h = make_headers().pop_first_value("Via")
    assert h.values("Via") == ["SIP/2.0/TCP b.example;branch=z9hG4bK2", "SIP/2.0/UDP c.example;branch=z9hG4bK3"]
    h = h.pop_first_value("Via")
    assert h.get_all("Via") == ["SIP/2.0/UDP c.example;branch=z9hG4bK3"]
    assert [n for n, _ in h][0] == "Via"
    h = h.pop_first_value("Via").pop_first_value("Via")
    assert "Via" not in h
    assert make_headers().pop_first_value("Route").values("Route") == ["<sip:p2.example;lr>"]
    # Not a list header: the whole first line goes, commas in a display name notwithstanding.
    h = Headers([("From", '"Doe, J" <sip:j@h>;tag=1'), ("X-A", "1")]).pop_first_value("From")
    assert list(h) == [("X-A", "1")]


def make_request(**over: object) -> Request:
    return Request("INVITE", parse_uri("sip:bob@b.example"), make_headers(), b"v=0\r\n")


def test_request_accessors() -> None:
    r = make_request()
    assert [v.host for v in r.vias] == ["a.example", "b.example", "c.example"]
    assert r.top_via.branch == "z9hG4bK1" == r.branch
    assert r.cseq.seq == 7 and r.cseq.method == "INVITE"
    assert r.call_id == "cid-1@a.example"
    assert r.from_tag == "af" and r.to_tag is None
    assert r.from_.display_name == "Ann"
    assert r.max_forwards == 70
    assert [str(x.uri) for x in r.record_route] == []
    assert r.contacts == []
    assert r.vias is r.vias  # cached


def test_missing_headers_raise_header_error() -> None:
    r = Request("OPTIONS", parse_uri("sip:h"), Headers())
    for attr in ("top_via", "cseq", "call_id", "from_", "to"):
        with pytest.raises(HeaderError):
            getattr(r, attr)
    assert r.max_forwards is None and r.vias == []


@pytest.mark.parametrize("value", ["abc", "", "\u00b2", "-1", "9" * 5000])
def test_max_forwards_garbage_is_none(value: str) -> None:
    r = Request("OPTIONS", parse_uri("sip:h"), Headers([("Max-Forwards", value)]))
    assert r.max_forwards is None


def test_option_tags_and_content_type() -> None:
    h = Headers([("Supported", "replaces, Timer"), ("k", "100rel"), ("c", "Application/SDP; charset=x")])
    r = Request("OPTIONS", parse_uri("sip:h"), h)
    assert r.option_tags("Supported") == ["replaces", "timer", "100rel"]
    assert r.content_type == "application/sdp"


def test_serialize_rewrites_content_length() -> None:
    h = make_headers().add("l", "999").add("X-After", "1")
    r = Request("INVITE", parse_uri("sip:bob@b.example"), h, b"hello")
    data = r.serialize()
    assert data.startswith(b"INVITE sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP a.example")
    assert data.endswith(b"X-After: 1\r\nContent-Length: 5\r\n\r\nhello")
    assert data.count(b"Content-Length") == 1
    assert b"Call-ID: cid-1@a.example\r\n" in data


def test_serialize_keeps_undecodable_bytes() -> None:
    value = b"caf\xe9".decode("utf-8", "surrogateescape")
    r = Request("OPTIONS", parse_uri("sip:h"), Headers([("Subject", value)]))
    assert b"Subject: caf\xe9\r\n" in r.serialize()


def test_response_basics() -> None:
    resp = Response(180, "Ringing", make_headers())
    assert resp.is_provisional and not resp.is_success
    assert resp.serialize().startswith(b"SIP/2.0 180 Ringing\r\n")
    assert repr(resp) == "<Response 180 Ringing>"
    assert Response(202, "Accepted", Headers()).is_success


def test_with_headers_is_a_new_message() -> None:
    r = make_request()
    _ = r.vias
    r2 = r.with_headers(r.headers.pop_first_value("Via"))
    assert r2.top_via.host == "b.example" and r.top_via.host == "a.example"
    if native.state() == "compiled":  # Final attributes are read-only in the compiled build
        with pytest.raises(AttributeError):
            r.method = "BYE"  # type: ignore[misc]
        with pytest.raises(AttributeError):
            r2.method = "BYE"  # type: ignore[misc]
    assert (r2.method, r2.uri, r2.body, r2.version) == (r.method, r.uri, r.body, r.version)
    resp = Response(183, "Session Progress", make_headers(), b"v=0\r\n")
    resp2 = resp.with_headers(Headers([("Via", "SIP/2.0/UDP c.example")]))
    assert (resp2.status, resp2.reason, resp2.body) == (183, "Session Progress", b"v=0\r\n")
    assert type(resp2) is Response and resp2.top_via.host == "c.example"


def test_mypy_refuses_to_change_a_message(tmp_path) -> None:
    """From source a message's fields can be assigned at run time; mypy (make lint) refuses it."""
    api = pytest.importorskip("mypy.api")
    (tmp_path / "mypy.ini").write_text(f"[mypy]\nmypy_path = {Path(__file__).resolve().parents[2]}\n"
                                       "follow_imports = silent\n")
    (tmp_path / "change.py").write_text(
        "from b2bua.sip.message import Request, Response\n"
        "def f(r: Request, s: Response) -> None:\n"
        "    r.method = 'BYE'\n    r.headers = s.headers\n    s.status = 500\n    s.body = b''\n")
    out, err, status = api.run(["--config-file", str(tmp_path / "mypy.ini"), "--no-incremental",
                                str(tmp_path / "change.py")])
    assert status == 1, out + err
    assert out.count("Cannot assign to final attribute") == 4, out


def test_build_response() -> None:
    req = make_request()
    resp = build_response(req, 200, to_tag="tt1", headers=[("Contact", "<sip:me@h>")], body=b"x")
    assert resp.status == 200 and resp.reason == "OK"
    assert resp.headers.get_all("Via") == req.headers.get_all("Via")
    assert resp.to_tag == "tt1" and resp.from_tag == "af"
    assert resp.call_id == req.call_id and resp.cseq == req.cseq
    assert resp.headers.get("Contact") == "<sip:me@h>" and resp.body == b"x"
    assert "Max-Forwards" not in resp.headers and "X-Odd" not in resp.headers
    assert build_response(req, 100, to_tag="x").to_tag is None
    assert build_response(req, 400, "Missing Call-ID header").reason == "Missing Call-ID header"


def test_reason_for() -> None:
    assert reason_for(486) == "Busy Here"
    assert reason_for(499) == "Client Error" and reason_for(299) == "OK"


def test_with_top_via_replaces_via_and_keeps_parsed_views() -> None:
    from b2bua.sip.headers import parse_via
    from b2bua.sip.parser import parse_message

    raw = (b"OPTIONS sip:b@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa;rport\r\n"
           b"Via: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bKb\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\n"
           b"To: <sip:b@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    req = parse_message(raw)
    stamped_via = parse_via("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa;rport=5070;received=127.0.0.1")
    new = req.with_top_via(stamped_via)
    assert new.headers.get_all("Via")[0] == str(stamped_via)
    assert [v.branch for v in new.vias] == ["z9hG4bKa", "z9hG4bKb"] and new.top_via == stamped_via
    assert new.from_ is req.from_ and new.cseq is req.cseq  # carried over, not parsed again
    assert parse_message(new.serialize()).top_via.param("received") == "127.0.0.1"
    assert req.top_via.param("received") is None  # the original is untouched
