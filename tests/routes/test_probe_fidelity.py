"""Probing FHIR fidelity as a demanding client would, as properties over HTTP: decimals in every
form JSON and FHIR XML allow come back as written (read, vread, search, _history, _include, in
JSON and XML, whichever format wrote them), through every write (create, update with If-Match,
conditional update, transaction, batch); bodies with a key given twice (however its name is
escaped), a number beyond a double, or an integer out of range are refused with a 4xx
OperationOutcome, never a 5xx, and store nothing.

The regressions at the end are what these probes found: -0 read back as 0, a single XML element
given twice reported as a malformed number, a number reported as of the type "Exact"."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from lxml import etree

from fhirhttp import JSON_HEADERS, create, outcome_text, patient

XML_IN = {"content-type": "application/fhir+xml", "accept": "application/fhir+json"}
XML_OUT = {"accept": "application/fhir+xml"}
JSON_OUT = {"accept": "application/fhir+json"}
NS = 'xmlns="http://hl7.org/fhir"'
F = "{http://hl7.org/fhir}"

PROBE = settings(max_examples=12, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


# -- JSON written by hand: numbers as given, whitespace and escapes as chosen ------------------

class Num(str):
    """A number's JSON text, written as it is."""


class Style:
    def __init__(self, indent: str | None = None, newline: str = "\n", colon: str = ":",
                 ascii_only: bool = False, bom: bool = False) -> None:
        self.indent, self.newline, self.colon = indent, newline, colon
        self.ascii_only, self.bom = ascii_only, bom

    def __repr__(self) -> str:
        return (f"Style({self.indent!r}, {self.newline!r}, {self.colon!r}, {self.ascii_only}, "
                f"{self.bom})")


COMPACT = Style()


def write(value: Any, style: Style = COMPACT) -> bytes:
    def enc(v: Any, level: int) -> str:
        if isinstance(v, Num):
            return str(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=style.ascii_only)
        if isinstance(v, bool) or v is None:
            return json.dumps(v)
        if isinstance(v, int):
            return str(v)
        if isinstance(v, dict):
            items = [f"{json.dumps(k, ensure_ascii=style.ascii_only)}{style.colon}"
                     f"{enc(x, level + 1)}" for k, x in v.items()]
            return _join("{", items, "}", level)
        return _join("[", [enc(x, level + 1) for x in v], "]", level)

    def _join(open_: str, items: list[str], close: str, level: int) -> str:
        if style.indent is None or not items:
            return open_ + ",".join(items) + close
        pad = style.newline + style.indent * (level + 1)
        return (open_ + pad + ("," + pad).join(items) + style.newline + style.indent * level
                + close)

    return enc(value, 0).encode()


def read_as_written(raw: bytes) -> Any:
    """A response's JSON with each number as its text (``Num``)."""
    return json.loads(raw, parse_float=Num, parse_int=Num)


# -- strategies ----------------------------------------------------------------------------------

digits = st.text("0123456789", min_size=1, max_size=24)
decimals = st.builds(
    lambda sign, whole, frac, exp: Num(sign + whole + frac + exp),
    st.sampled_from(["", "-"]),
    st.one_of(st.just("0"), st.builds(lambda a, b: a + b, st.sampled_from("123456789"),
                                      st.text("0123456789", max_size=24))),
    st.one_of(st.just(""), digits.map(lambda d: "." + d),
              st.sampled_from([".0", ".50", ".10", ".000", ".5000000000000000000001"])),
    st.one_of(st.just(""), st.builds(lambda e, s, d: e + s + d, st.sampled_from("eE"),
                                     st.sampled_from(["", "+", "-"]),
                                     st.text("0123456789", min_size=1, max_size=2))))
NAMED = ["1.50", "-0", "-0.0", "0e0", "0E-0", "1e-400", "2.50E+10", "18446744073709551615",
         "18446744073709551616", "9223372036854775808", "-9223372036854775809", "1.0e0",
         "0." + "0" * 60 + "1", "1" * 80, "123456789012345678901234567890.1234567890123456789",
         "1e-99999", "0e99999", "-0e-99999", "1e-999999999", "1." + "1" * 2000,
         "1" * 5000 + "e-4990"]
some_decimals = st.lists(st.one_of(decimals, st.sampled_from(NAMED).map(Num)),
                         min_size=1, max_size=5)
TEXTS = ["x", "å😀", 'a"b\\c', "a/b", "1.50, [2.0e1", "\u2028 \u00e9", " : ", "{\"k\":1}"]
styles = st.builds(Style, st.sampled_from([None, "  ", "\t", ""]),
                   st.sampled_from(["\n", "\r\n"]), st.sampled_from([":", ": ", " : "]),
                   st.booleans())


def goal(pid: str, values: list[str], text: str = "x", gid: str | None = None) -> dict:
    out: dict[str, Any] = {"resourceType": "Goal"}
    if gid:
        out["id"] = gid
    out.update({"lifecycleStatus": "active", "description": {"text": text},
                "subject": {"reference": f"Patient/{pid}"},
                "target": [{"measure": {"text": f"m{i}"}, "detailQuantity": {"value": Num(v)}}
                           for i, v in enumerate(values)]})
    return out


def goal_xml(pid: str, values: list[str], gid: str | None = None, head: str = "") -> bytes:
    targets = "".join(f'<target><measure><text value="m{i}"/></measure>'
                      f'<detailQuantity><value value="{v}"/></detailQuantity></target>'
                      for i, v in enumerate(values))
    rid = f'<id value="{gid}"/>' if gid else ""
    return (f'<Goal {NS}>{rid}{head}<lifecycleStatus value="active"/><description>'
            f'<text value="x"/></description>{targets}<subject>'
            f'<reference value="Patient/{pid}"/></subject></Goal>').encode()


def values_of(resource: dict) -> list[str]:
    return [str(t["detailQuantity"]["value"]) for t in resource["target"]]


def json_values(raw: bytes) -> list[list[str]]:
    """The detailQuantity values of each Goal in a JSON response (a Goal or a Bundle)."""
    data = read_as_written(raw)
    if data["resourceType"] == "Goal":
        return [values_of(data)]
    return [values_of(e["resource"]) for e in data.get("entry", [])
            if e.get("resource", {}).get("resourceType") == "Goal"]


def xml_values(raw: bytes) -> list[list[str]]:
    root = etree.fromstring(raw)
    goals = [root] if root.tag == f"{F}Goal" else list(root.iter(f"{F}Goal"))
    return [[v.get("value") for q in g.iter(f"{F}detailQuantity") for v in q.iter(f"{F}value")]
            for g in goals]


def history_total(client: Any) -> int:
    r = client.get("/fhir/_history", params={"_count": "1"}, headers=JSON_OUT)
    assert r.status_code == 200, r.text
    return r.json()["total"]


def no_5xx(r: Any) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:2000])
    if r.status_code >= 400 and r.content:
        assert r.headers["content-type"].startswith("application/fhir+json"), r.headers
        assert r.json()["resourceType"] == "OperationOutcome", r.text


def refused(client: Any, r: Any, before: int, status: tuple[int, ...] = (400,)) -> None:
    no_5xx(r)
    assert r.status_code in status, (r.status_code, r.text[:2000])
    assert history_total(client) == before


def every_read(client: Any, gid: str, want: list[str], version: str = "1") -> None:
    """Each read of Goal ``gid`` gives ``want`` as written, in JSON and in XML."""
    base = f"/fhir/Goal/{gid}"
    for url in (base, f"{base}/_history/{version}", f"/fhir/Goal?_id={gid}",
                f"{base}/_history", f"{base}?_elements=target"):
        r = client.get(url, headers=JSON_OUT)
        assert r.status_code == 200, r.text
        assert json_values(r.content)[0] == want, (url, r.content[:2000])
        r = client.get(url, params={"_pretty": "true"}, headers=JSON_OUT)
        assert json_values(r.content)[0] == want, (url, r.content[:2000])
        r = client.get(url, headers=XML_OUT)
        assert r.status_code == 200, r.text
        assert xml_values(r.content)[0] == want, (url, r.content[:2000])


@pytest.fixture
def pid(client) -> str:
    return create(client, patient())["id"]


# -- accepted decimals come back as written ------------------------------------------------------

@PROBE
@given(values=some_decimals, style=styles, text=st.sampled_from(TEXTS))
def test_a_json_decimal_in_any_form_comes_back_as_written(client, pid, values, style, text):
    r = client.post("/fhir/Goal", content=write(goal(pid, values, text), style),
                    headers=JSON_HEADERS)
    assert r.status_code == 201, r.text
    assert json_values(r.content) == [values]
    assert r.json()["description"]["text"] == text
    every_read(client, r.json()["id"], values)


@PROBE
@given(values=some_decimals)
def test_an_xml_decimal_in_any_form_comes_back_as_written(client, pid, values):
    r = client.post("/fhir/Goal", content=goal_xml(pid, values), headers=XML_IN)
    assert r.status_code == 201, r.text
    assert json_values(r.content) == [values]
    every_read(client, r.json()["id"], values)


@PROBE
@given(first=some_decimals, then=some_decimals, style=styles, in_xml=st.booleans())
def test_updates_keep_the_decimals_as_written(client, pid, first, then, style, in_xml):
    """An update with If-Match, then a conditional one, of a Goal whose stored numbers a float
    would change; each version reads back as written, the old ones too."""
    r = client.post("/fhir/Goal", content=write(goal(pid, first)), headers=JSON_HEADERS)
    assert r.status_code == 201, r.text
    gid = r.json()["id"]
    body = goal_xml(pid, then, gid) if in_xml else write(goal(pid, then, gid=gid), style)
    headers = XML_IN if in_xml else JSON_HEADERS
    r = client.put(f"/fhir/Goal/{gid}", content=body, headers=headers | {"If-Match": 'W/"1"'})
    assert r.status_code == 200, r.text
    assert json_values(r.content) == [then]
    r = client.put("/fhir/Goal", params={"_id": gid}, content=body, headers=headers)
    assert r.status_code == 200, r.text
    every_read(client, gid, then, version="3")
    r = client.get(f"/fhir/Goal/{gid}/_history/1", headers=JSON_OUT)
    assert json_values(r.content) == [first]
    r = client.get(f"/fhir/Goal/{gid}/_history", headers=JSON_OUT)
    assert json_values(r.content) == [then, then, first]
    r = client.get(f"/fhir/Goal/{gid}/_history", headers=XML_OUT)
    assert xml_values(r.content) == [then, then, first]


@PROBE
@given(values=some_decimals, style=styles, kind=st.sampled_from(["transaction", "batch"]))
def test_decimals_in_a_bundle_come_back_as_written(client, pid, values, style, kind):
    existing = client.post("/fhir/Goal", content=write(goal(pid, ["1"])), headers=JSON_HEADERS)
    gid = existing.json()["id"]
    bundle = {"resourceType": "Bundle", "type": kind, "entry": [
        {"fullUrl": "urn:uuid:0a3c1b2e-0000-4000-8000-000000000001",
         "resource": goal(pid, values), "request": {"method": "POST", "url": "Goal"}},
        {"resource": goal(pid, values, gid=gid),
         "request": {"method": "PUT", "url": f"Goal/{gid}"}}]}
    r = client.post("/fhir", content=write(bundle, style),
                    headers=JSON_HEADERS | {"Prefer": "return=representation"})
    assert r.status_code == 200, r.text
    assert json_values(r.content) == [values, values]
    for entry in r.json()["entry"]:
        assert entry["response"]["status"].startswith(("200", "201")), entry
        r = client.get(f"/fhir/Goal/{entry['resource']['id']}", headers=JSON_OUT)
        assert json_values(r.content) == [values]
    r = client.get(f"/fhir/Goal/{gid}", headers=XML_OUT)
    assert xml_values(r.content) == [values]


@PROBE
@given(values=some_decimals, in_xml=st.booleans())
def test_included_resources_keep_their_decimals(client, pid, values, in_xml):
    body, headers = ((goal_xml(pid, values), XML_IN) if in_xml
                     else (write(goal(pid, values)), JSON_HEADERS))
    r = client.post("/fhir/Goal", content=body, headers=headers)
    assert r.status_code == 201, r.text
    gid = r.json()["id"]
    plan = {"resourceType": "CarePlan", "status": "active", "intent": "plan",
            "subject": {"reference": f"Patient/{pid}"}, "goal": [{"reference": f"Goal/{gid}"}]}
    cp = create(client, plan)["id"]
    for url in (f"/fhir/CarePlan?_id={cp}&_include=CarePlan:goal",
                f"/fhir/Patient?_id={pid}&_revinclude=Goal:subject"):
        r = client.get(url, headers=JSON_OUT)
        assert r.status_code == 200, r.text
        assert values in json_values(r.content), (url, r.text[:2000])
        r = client.get(url, headers=XML_OUT)
        assert r.status_code == 200, r.text
        assert values in xml_values(r.content), (url, r.text[:2000])


# -- refused bodies store nothing ---------------------------------------------------------------

def _escaped(name: str, mask: list[bool]) -> str:
    """``name``'s JSON text, each character \\u-escaped where ``mask`` says."""
    return "".join(f"\\u{ord(ch):04x}" if m else ch for ch, m in zip(name, mask + [False] * 99))


@st.composite
def dup_key_bodies(draw: Any, pid: str) -> tuple[bytes, str]:
    """A Goal (as JSON text) with one of its keys given twice, the second spelt with escapes
    or not, in the same object (the root, description, a target, a quantity)."""
    values = draw(some_decimals)
    style = draw(styles)
    raw = write(goal(pid, values), style).decode()
    key = draw(st.sampled_from(["lifecycleStatus", "text", "value", "measure", "subject"]))
    mask = draw(st.lists(st.booleans(), max_size=len(key)))
    second = _escaped(key, mask)
    value = draw(st.sampled_from(['"active"', "1.50", "1.5", '{"text":"y"}', "null", "-0"]))
    # the first occurrence of "key": gets a sibling before it
    quoted = json.dumps(key)
    at = raw.index(quoted + style.colon)
    raw = raw[:at] + f'"{second}"{style.colon}{value},' + raw[at:]
    return raw.encode(), key


@PROBE
@given(data=st.data(), where=st.sampled_from(["post", "put", "conditional", "transaction",
                                              "batch", "message", "patch"]))
def test_a_key_given_twice_is_refused_everywhere_and_stores_nothing(client, pid, data, where):
    raw, key = data.draw(dup_key_bodies(pid))
    _refused_everywhere(client, pid, raw, where, (400,) if where != "patch" else (400, 405),
                        "twice" if where != "patch" else "")


BAD_NUMBERS = ["1e400", "-1e400", "1E+309", "1" * 400, "-" + "9" * 320, "1.5e99999",
               "1" * 5000, "1e-9999999999999999999999", "0e9999999999999999999999"]


@PROBE
@given(number=st.sampled_from(BAD_NUMBERS), values=some_decimals, style=styles,
       where=st.sampled_from(["post", "put", "conditional", "transaction", "batch", "message"]))
def test_a_number_beyond_a_double_is_refused_clearly(client, pid, number, values, style,
                                                     where):
    raw = write(goal(pid, [*values, number]), style)
    _refused_everywhere(client, pid, raw, where, (400,), "Malformed JSON")


INTEGERS = st.one_of(st.integers(min_value=2**31, max_value=2**70),
                     st.integers(min_value=-(2**70), max_value=-(2**31) - 1),
                     st.sampled_from([2**63, 2**64, 2**64 - 1, -(2**63) - 1, 10**40]))


@PROBE
@given(n=INTEGERS, style=styles, as_decimal=st.booleans(), in_xml=st.booleans())
def test_an_integer_out_of_range_is_refused(client, n, style, as_decimal, in_xml):
    """FHIR's integer is 32 bits; past that, and past orjson's 64, a 4xx."""
    text = f"{n}.0" if as_decimal else str(n)
    before = history_total(client)
    if in_xml:
        r = client.post("/fhir/Patient", content=f'<Patient {NS}><multipleBirthInteger value="'
                        f'{text}"/></Patient>', headers=XML_IN)
    else:
        r = client.post("/fhir/Patient", content=write(
            {"resourceType": "Patient", "multipleBirthInteger": Num(text)}, style),
            headers=JSON_HEADERS)
    refused(client, r, before, (400, 422))
    assert "multipleBirthInteger" in outcome_text(r)


def _refused_everywhere(client: Any, pid: str, raw: bytes, where: str,
                        status: tuple[int, ...], needle: str) -> None:
    gid = create(client, {"resourceType": "Goal", "lifecycleStatus": "active",
                          "description": {"text": "x"},
                          "subject": {"reference": f"Patient/{pid}"}})["id"]
    text = raw.decode()
    with_id = text.replace('"resourceType":', f'"id":"{gid}","resourceType":', 1)
    entry = ('{"fullUrl":"urn:uuid:0a3c1b2e-0000-4000-8000-000000000001","resource":%s,'
             '"request":{"method":"POST","url":"Goal"}}')
    before = history_total(client)
    if where == "post":
        r = client.post("/fhir/Goal", content=raw, headers=JSON_HEADERS)
    elif where == "put":
        r = client.put(f"/fhir/Goal/{gid}", content=with_id.encode(),
                       headers=JSON_HEADERS | {"If-Match": 'W/"1"'})
    elif where == "conditional":
        r = client.put("/fhir/Goal", params={"_id": gid}, content=raw, headers=JSON_HEADERS)
    elif where in ("transaction", "batch"):
        r = client.post("/fhir", content=('{"resourceType":"Bundle","type":"%s","entry":[%s]}'
                                          % (where, entry % text)).encode(),
                        headers=JSON_HEADERS)
    elif where == "patch":
        r = client.patch(f"/fhir/Goal/{gid}", content=raw,
                         headers={"content-type": "application/json-patch+json"})
    else:
        header = ('{"fullUrl":"urn:uuid:0a3c1b2e-0000-4000-8000-000000000002","resource":'
                  '{"resourceType":"MessageHeader","eventCoding":{"system":"https://sip-hub.se/'
                  'fhir/CodeSystem/sip-message-event","code":"sip-plan-update"},"source":'
                  '{"endpoint":"urn:oid:1.2.752.29.4.19"},"focus":[{"reference":"urn:uuid:'
                  '0a3c1b2e-0000-4000-8000-000000000001"}]}}')
        entry = '{"fullUrl":"urn:uuid:0a3c1b2e-0000-4000-8000-000000000001","resource":%s}'
        r = client.post("/fhir/$process-message", headers=JSON_HEADERS, content=(
            '{"resourceType":"Bundle","type":"message","id":"m1","timestamp":'
            '"2026-01-01T12:00:00+01:00","entry":[%s,%s]}' % (header, entry % text)).encode())
    refused(client, r, before, status)
    if needle:
        assert needle in outcome_text(r), outcome_text(r)


# -- XML: forms FHIR does not write, single elements given twice --------------------------------

XML_BAD_NUMBERS = [" 1.5", "1.5 ", "01.5", "+1.5", "1.", ".5", "1e", "1.5e+", "NaN", "INF",
                   "0x10", "1,5", "1e400", "1" * 400, "1" * 5000, "1e-9999999999999999999999",
                   "0e9999999999999999999999"]


@PROBE
@given(values=some_decimals, bad=st.sampled_from(XML_BAD_NUMBERS),
       wrap=st.sampled_from(["none", "transaction", "batch"]))
def test_an_xml_decimal_in_another_form_is_refused(client, pid, values, bad, wrap):
    raw = goal_xml(pid, [*values, bad])
    if wrap != "none":
        raw = _xml_bundle(wrap, raw)
    before = history_total(client)
    r = client.post("/fhir/Goal" if wrap == "none" else "/fhir", content=raw, headers=XML_IN)
    refused(client, r, before, (400, 422))


def _xml_bundle(kind: str, *resources: bytes) -> bytes:
    entries = b"".join(b'<entry><fullUrl value="urn:uuid:0a3c1b2e-0000-4000-8000-00000000000'
                       + str(i).encode() + b'"/><resource>' + res + b'</resource><request>'
                       b'<method value="POST"/><url value="Goal"/></request></entry>'
                       for i, res in enumerate(resources))
    return f'<Bundle {NS}><type value="{kind}"/>'.encode() + entries + b"</Bundle>"


TWICE = [  # (what goes where, the element named)
    ('<lifecycleStatus value="active"/>', "lifecycleStatus"),
    ('<description><text value="y"/></description>', "description"),
    ('<contained><Patient><id value="p"/><gender value="male"/><gender value="female"/>'
     '</Patient></contained>', "gender"),
    ('<contained><Patient><id value="p"/><active value="true"/><active value="true"/>'
     '</Patient></contained>', "active"),
]


@PROBE
@given(case=st.sampled_from(TWICE), values=some_decimals,
       wrap=st.sampled_from(["none", "transaction", "batch"]),
       in_target=st.sampled_from(["", "detailQuantity", "measure", "value"]))
def test_a_single_xml_element_given_twice_is_refused(client, pid, case, values, wrap,
                                                     in_target):
    head, element = case
    named = {element}  # (the first given twice in the document is named)
    raw = goal_xml(pid, values, head=head)
    if in_target == "detailQuantity":  # the same quantity twice, or another one
        raw = raw.replace(b"</detailQuantity>", b'</detailQuantity><detailQuantity>'
                          b'<value value="2"/></detailQuantity>', 1)
        named.add("detailQuantity")
    elif in_target == "measure":
        raw = raw.replace(b"</measure>", b'</measure><measure><text value="n"/></measure>', 1)
        named.add("measure")
    elif in_target == "value":
        raw = raw.replace(b'"/></detailQuantity>', b'"/><value value="1.50"/></detailQuantity>',
                          1)
        named.add("value")
    if wrap != "none":
        raw = _xml_bundle(wrap, raw)
    before = history_total(client)
    r = client.post("/fhir/Goal" if wrap == "none" else "/fhir", content=raw, headers=XML_IN)
    refused(client, r, before)
    text = outcome_text(r)
    assert any(f"<{e}> is given more than once" in text for e in named), text


@PROBE
@given(bad=st.sampled_from(["1", "0", "TRUE", "True", " true", "false ", "yes", ""]),
       where=st.sampled_from(["root", "contained", "transaction"]))
def test_an_xml_boolean_in_another_form_is_refused(client, bad, where):
    raw = f'<Patient {NS}><active value="{bad}"/></Patient>'.encode()
    if where == "contained":
        raw = (f'<Patient {NS}><contained><Patient><id value="p"/><active value="{bad}"/>'
               '</Patient></contained><link><other><reference value="#p"/></other>'
               '<type value="seealso"/></link></Patient>').encode()
    before = history_total(client)
    if where == "transaction":
        raw = _xml_bundle("transaction", raw).replace(b'value="Goal"', b'value="Patient"')
        r = client.post("/fhir", content=raw, headers=XML_IN)
    else:
        r = client.post("/fhir/Patient", content=raw, headers=XML_IN)
    refused(client, r, before, (400, 422))


# -- the regressions these probes found ------------------------------------------------------

@pytest.mark.parametrize("in_xml", [False, True])
def test_minus_zero_comes_back_as_written(client, pid, in_xml):
    """-0 (FHIR's decimal and integer forms allow it) came back as 0: orjson reads it as the
    integer 0 and writes 0."""
    values = ["-0", "0", "-0.0", "-0e0"]
    body = goal_xml(pid, values) if in_xml else write(goal(pid, values))
    r = client.post("/fhir/Goal", content=body, headers=XML_IN if in_xml else JSON_HEADERS)
    assert r.status_code == 201, r.text
    assert json_values(r.content) == [values]
    every_read(client, r.json()["id"], values)
    # in an integer element, too (as its JSON and XML)
    if in_xml:
        r = client.post("/fhir/Patient", content=f'<Patient {NS}><multipleBirthInteger '
                        'value="-0"/></Patient>', headers=XML_IN)
    else:
        r = client.post("/fhir/Patient", content=b'{"resourceType":"Patient",'
                        b'"multipleBirthInteger":-0}', headers=JSON_HEADERS)
    assert r.status_code == 201, r.text
    assert b'"multipleBirthInteger":-0}' in r.content
    r = client.get(f"/fhir/Patient/{r.json()['id']}", headers=XML_OUT)
    assert b'<multipleBirthInteger value="-0"/>' in r.content


def test_an_xml_quantity_given_twice_is_named_as_such(client, pid):
    """Two detailQuantity in one target (a single element) were reported as "<value
    value="1.5"> is not a number as FHIR writes it": the first was paired with the value
    fhir_core kept, the last one's."""
    raw = goal_xml(pid, ["1.5"]).replace(
        b"</detailQuantity>", b'</detailQuantity><detailQuantity><value value="2"/>'
        b"</detailQuantity>", 1)
    r = client.post("/fhir/Goal", content=raw, headers=XML_IN)
    assert r.status_code == 400, r.text
    assert "<detailQuantity> is given more than once" in outcome_text(r)


@pytest.mark.parametrize("number", [b"1e2", b"1E+2", b"1.0e0", b"-0.0e1"])
def test_a_number_where_another_type_belongs_is_called_a_number(client, number):
    """The refusal named the hub's own class ("not Exact '1e2'")."""
    raw = b'{"resourceType":"Patient","multipleBirthInteger":' + number + b"}"
    r = client.post("/fhir/Patient", content=raw, headers=JSON_HEADERS)
    assert r.status_code == 422, r.text
    text = outcome_text(r)
    assert "Exact" not in text and "not number" in text, text


@pytest.mark.parametrize("number", ["1e-9999999999999999999999", "0e9999999999999999999999"])
@pytest.mark.parametrize("in_xml", [False, True])
def test_an_exponent_beyond_a_decimals_is_a_400_not_a_500(client, pid, number, in_xml):
    """An exponent past 10**18 made Decimal() raise InvalidOperation, a 500 (Exact's in JSON,
    fhir_core's in XML)."""
    before = history_total(client)
    body = goal_xml(pid, [number]) if in_xml else write(goal(pid, [number]))
    r = client.post("/fhir/Goal", content=body, headers=XML_IN if in_xml else JSON_HEADERS)
    refused(client, r, before)
    assert "out of range" in outcome_text(r), outcome_text(r)


def test_a_bom_or_other_encoding_is_refused_clearly(client):
    body = write({"resourceType": "Patient", "active": True})
    before = history_total(client)
    for raw in (b"\xef\xbb\xbf" + body, body.decode().encode("utf-16"),
                b'{"resourceType":"Patient","name":[{"family":"\xc5s"}]}',
                b'{"resourceType":"Patient","name":[{"family":"\\ud800"}]}'):
        r = client.post("/fhir/Patient", content=raw, headers=JSON_HEADERS)
        refused(client, r, before)
        assert re.search("Malformed JSON", outcome_text(r)), outcome_text(r)
