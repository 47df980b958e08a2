#!/usr/bin/env python3
"""Interop check: drives a Consul agent (agent-sim, or a real Consul) with py-consul 1.8.

    CONSUL_HTTP_ADDR=127.0.0.1:8500 CONSUL_EXPECT_VERSION=1.10.9 .venv/bin/python tests/py/py_consul_check.py

Covers what a Connect-native Python service does: register with Connect.Native, list agent
services, CA roots (agent and server), its leaf certificate, Connect discovery (health and
catalog), intentions through the `exact` API (upsert, read, list, check, match, delete) and
agent authorize. Every check asserts on the answer, not just on the absence of an exception.

Prints one line per check (`PASS name: detail` / `FAIL name: what differed`, a failure followed
by the HTTP exchanges py-consul made for it) and ends with exactly `N passed, M failed`. Exits 1
if any check failed. `note:` lines record where py-consul itself departs from Consul.

The expected answers are real Consul's, of the version CONSUL_EXPECT_VERSION names (required):
- 1.4.5: the captures in tests/data/consul-1.4.5 and the spec and, for the `exact` intentions
  API that 1.4.5 lacks, the later hashicorp/consul source (agent/intentions_endpoint.go,
  agent/http.go).
- 1.10.9: the captures in tests/data/consul-1.10.9 (its README lists the differences; capture
  names are cited as `m03` etc.) and, where none exists, Consul v1.10.9's source. Intentions live
  in `service-intentions` config entries there: no ID or timestamps, the entry's indexes, and
  `Meta` refused on an update (which py-consul's `upsert(meta=...)` sends).
Checks whose expectations differ run once per version (`@check(name, only=...)`).

Optional environment: CONSUL_CHECK_TRUST_DOMAIN and CONSUL_CHECK_DATACENTER pin the values the
agent must report.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import sys
import traceback
import urllib.parse
from dataclasses import dataclass

from requests.structures import CaseInsensitiveDict  # py-consul's std client is built on requests

try:
    import consul
    from consul.callback import CB
    from consul.exceptions import ClientError, ConsulException
except ImportError as e:  # pragma: no cover - environment problem, not a check
    print(f"FAIL import py-consul: {e} (run scripts/test.sh, which installs py-consul==1.8.0 into .venv)")
    print("0 passed, 1 failed")
    sys.exit(1)

try:  # Only when already installed: the check never installs anything.
    from cryptography import x509 as crypto_x509  # type: ignore

    HAVE_CRYPTOGRAPHY = True
except ImportError:
    HAVE_CRYPTOGRAPHY = False


# ---------------------------------------------------------------------------------------------
# Connection and exchange recording
# ---------------------------------------------------------------------------------------------


def agent_address() -> tuple[str, int]:
    addr = os.environ.get("CONSUL_HTTP_ADDR", "")
    if not addr:
        print("FAIL setup: CONSUL_HTTP_ADDR is not set (want host:port)")
        print("0 passed, 1 failed")
        sys.exit(1)
    if "//" not in addr:
        addr = "//" + addr
    parsed = urllib.parse.urlsplit(addr)
    if not parsed.hostname or not parsed.port:
        print(f"FAIL setup: CONSUL_HTTP_ADDR={os.environ['CONSUL_HTTP_ADDR']!r} is not host:port")
        print("0 passed, 1 failed")
        sys.exit(1)
    return parsed.hostname, parsed.port


def expected_version() -> str:
    version = os.environ.get("CONSUL_EXPECT_VERSION", "")
    if version not in VERSIONS:
        print(f"FAIL setup: CONSUL_EXPECT_VERSION={version!r}; want one of {', '.join(VERSIONS)}")
        print("0 passed, 1 failed")
        sys.exit(1)
    return version


VERSIONS = ("1.4.5", "1.10.9")
HOST, PORT = agent_address()
VERSION = expected_version()
V1_10 = VERSION == "1.10.9"
c = consul.Consul(host=HOST, port=PORT)


@dataclass
class Exchange:
    method: str
    path: str
    query: str
    body: str
    status: int
    headers: CaseInsensitiveDict
    answer: str

    def show(self) -> str:
        q = f"?{self.query}" if self.query else ""
        sent = f" body={self.body}" if self.body else ""
        answer = self.answer if len(self.answer) <= 600 else self.answer[:600] + "..."
        allow = f" Allow: {self.headers.get('Allow')}" if self.headers.get("Allow") else ""
        return f"    > {self.method} {self.path}{q}{sent}\n    < {self.status}{allow} {answer!r}"


EXCHANGES: list[Exchange] = []


def _record(resp, *_args, **_kwargs):
    req = resp.request
    split = urllib.parse.urlsplit(req.url)
    body = req.body or ""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    EXCHANGES.append(
        Exchange(req.method, split.path, split.query, body, resp.status_code, CaseInsensitiveDict(resp.headers), resp.text)
    )
    return resp


# py-consul's std client keeps one requests.Session; its response hook sees every exchange.
c.http.session.hooks["response"].append(_record)


def last() -> Exchange:
    return EXCHANGES[-1]


def raw(method: str, path: str, params=None, data: str = "") -> Exchange:
    """Sends through py-consul's own transport, returning the exchange unjudged."""
    headers = c.prepare_headers()
    keep = lambda response: response  # noqa: E731 - py-consul callbacks take the Response
    if method == "GET":
        c.http.get(keep, path, params=params, headers=headers)
    elif method == "PUT":
        c.http.put(keep, path, params=params, data=data, headers=headers)
    elif method == "DELETE":
        c.http.delete(keep, path, params=params, data=data, headers=headers)
    elif method == "POST":
        c.http.post(keep, path, params=params, data=data, headers=headers)
    else:
        raise ValueError(method)
    return last()


# ---------------------------------------------------------------------------------------------
# Check runner
# ---------------------------------------------------------------------------------------------


class CheckFailed(Exception):
    pass


def eq(what: str, got, want, consul_ref: str = ""):
    if got != want:
        ref = f" [{consul_ref}]" if consul_ref else ""
        raise CheckFailed(f"{what}: got {got!r}, want {want!r}{ref}")


def ok(cond: bool, message: str):
    if not cond:
        raise CheckFailed(message)


PASSED = 0
FAILED = 0
NOTES: list[str] = []
STATE: dict = {}


def check(name: str, only: str | None = None):
    """Runs the decorated check now; with `only`, just when that is the expected version."""
    assert only in (None, *VERSIONS), only

    def run(fn):
        global PASSED, FAILED
        if only is not None and only != VERSION:
            return fn
        start = len(EXCHANGES)
        try:
            detail = fn()
        except CheckFailed as e:
            FAILED += 1
            print(f"FAIL {name}: {e}")
            for ex in EXCHANGES[start:]:
                print(ex.show())
        except Exception as e:  # noqa: BLE001 - any exception is a failed check
            FAILED += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}")
            for line in traceback.format_exc().rstrip().splitlines()[-4:]:
                print(f"    {line}")
            for ex in EXCHANGES[start:]:
                print(ex.show())
        else:
            PASSED += 1
            print(f"PASS {name}" + (f": {detail}" if detail else ""))
        sys.stdout.flush()
        return fn

    return run


# ---------------------------------------------------------------------------------------------
# Minimal DER reading (used when `cryptography` is not installed; cross-checked when it is)
# ---------------------------------------------------------------------------------------------


def der_read(buf: bytes, i: int) -> tuple[int, bytes, int]:
    tag = buf[i]
    length = buf[i + 1]
    i += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(buf[i : i + n], "big")
        i += n
    return tag, buf[i : i + length], i + length


def der_children(content: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i < len(content):
        tag, value, i = der_read(content, i)
        out.append((tag, value))
    return out


def der_element(buf: bytes, i: int = 0) -> bytes:
    """The whole TLV (tag and length included) starting at `i`."""
    _, _, end = der_read(buf, i)
    return buf[i:end]


@dataclass
class Cert:
    serial: bytes
    issuer: bytes  # DER of the Name
    subject: bytes
    not_before: dt.datetime
    not_after: dt.datetime
    uris: list[str]
    is_ca: bool


def der_time(tag: int, value: bytes) -> dt.datetime:
    text = value.decode()
    fmt = "%y%m%d%H%M%SZ" if tag == 0x17 else "%Y%m%d%H%M%SZ"
    return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.timezone.utc)


def parse_cert_pem(pem: str) -> Cert:
    m = re.search(r"-----BEGIN CERTIFICATE-----\n(.+?)\n-----END CERTIFICATE-----", pem, re.S)
    if not m:
        raise CheckFailed(f"no PEM certificate block in {pem[:80]!r}")
    der = base64.b64decode("".join(m.group(1).split()))
    tag, cert_body, _ = der_read(der, 0)
    ok(tag == 0x30, "certificate is not a DER SEQUENCE")
    tbs_tag, tbs, _ = der_read(cert_body, 0)
    ok(tbs_tag == 0x30, "tbsCertificate is not a SEQUENCE")
    # Keep each child's full TLV too, for Name comparisons.
    fields, i = [], 0
    while i < len(tbs):
        t, v, j = der_read(tbs, i)
        fields.append((t, v, tbs[i:j]))
        i = j
    if fields[0][0] == 0xA0:  # explicit version
        fields = fields[1:]
    serial = fields[0][1].lstrip(b"\x00") or b"\x00"
    issuer = fields[2][2]
    validity = der_children(fields[3][1])
    subject = fields[4][2]
    uris: list[str] = []
    is_ca = False
    for t, v, _ in fields[6:]:
        if t != 0xA3:
            continue
        (_, exts), = der_children(v)
        for _, ext in der_children(exts):
            parts = der_children(ext)
            oid = parts[0][1]
            value = parts[-1][1]
            if oid == b"\x55\x1d\x11":  # subjectAltName
                (_, names), = der_children(value)
                uris += [n.decode() for tag_, n in der_children(names) if tag_ == 0x86]
            elif oid == b"\x55\x1d\x13":  # basicConstraints
                (_, bc), = der_children(value)
                is_ca = any(tag_ == 0x01 and n != b"\x00" for tag_, n in der_children(bc))
    return Cert(
        serial=serial,
        issuer=issuer,
        subject=subject,
        not_before=der_time(*validity[0]),
        not_after=der_time(*validity[1]),
        uris=uris,
        is_ca=is_ca,
    )


def rfc3339(text: str) -> dt.datetime:
    # Go writes up to nanoseconds; Python's fromisoformat takes microseconds at most.
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text)
    if not m:
        raise CheckFailed(f"not an RFC 3339 time: {text!r}")
    base = dt.datetime.fromisoformat(m.group(1))
    zone = dt.timezone.utc if m.group(3) == "Z" else dt.datetime.strptime(m.group(3), "%z").tzinfo
    return base.replace(tzinfo=zone)


def hex_serial(serial: bytes) -> str:
    """Consul's connect.HexString: two lowercase hex digits per byte, joined with colons."""
    return ":".join(f"{b:02x}" for b in serial)


# ---------------------------------------------------------------------------------------------
# Constants Consul fixes
# ---------------------------------------------------------------------------------------------

PEM_CERT = re.compile(r"\A-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+\n-----END CERTIFICATE-----\n?\Z")
PEM_EC_KEY = re.compile(r"\A-----BEGIN EC PRIVATE KEY-----\n[A-Za-z0-9+/=\n]+\n-----END EC PRIVATE KEY-----\n?\Z")
UUID = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
ALLOWED_BY_DEFAULT = "ACLs disabled, access is allowed by default"
# The built-in CA's root `Name` (1.10.9 capture 04: `Consul CA Primary Cert`).
ROOT_NAME = "Consul CA Primary Cert" if V1_10 else "Consul CA Root Cert"
INTENTION_FIELDS = {
    "ID", "Description", "SourceNS", "SourceName", "DestinationNS", "DestinationName",
    "SourceType", "Action", "DefaultAddr", "DefaultPort", "Meta", "Precedence",
    "CreatedAt", "UpdatedAt", "CreateIndex", "ModifyIndex",
}  # fmt: skip


def spiffe(service: str) -> str:
    return f"spiffe://{STATE['trust_domain']}/ns/default/dc/{STATE['dc']}/svc/{service}"


def authorize_post(target: str, uri: str, serial: str) -> dict:
    """POST /v1/agent/connect/authorize through py-consul's transport and JSON callback."""
    payload = {"Target": target, "ClientCertURI": uri, "ClientCertSerial": serial}
    return c.http.post(
        CB.json(), "/v1/agent/connect/authorize", data=json.dumps(payload), headers=c.prepare_headers()
    )


def reason(action: str, source: str, dest: str, ixn_id: str | None, precedence: int) -> str:
    if V1_10:
        # 1.10.9 agent/connect_auth.go + Intention.String(): `ID: ` only for an intention that
        # has one; config-entry intentions have none (captures m06, m17, m19).
        id_part = f"ID: {ixn_id}, " if ixn_id else ""
        return (
            f"Matched L4 intention: default/{source} => default/{dest} "
            f"({id_part}Precedence: {precedence}, Action: {action.upper()})"
        )
    return (
        f"Matched intention: {action.upper()} default/{source} => default/{dest} "
        f"(ID: {ixn_id}, Precedence: {precedence})"
    )


def exact_answer(what: str) -> None:
    """The `exact` API answers a write with 200 and the JSON body `true`."""
    ex = last()
    eq(f"{what} status", ex.status, 200)
    eq(f"{what} body", ex.answer.strip(), "true", "IntentionPutExact/IntentionDeleteExact return true")


def same_intention(what: str, got: dict, want: dict):
    for key in ("ID", "SourceNS", "SourceName", "DestinationNS", "DestinationName", "Action",
                "Precedence", "CreateIndex", "ModifyIndex"):  # fmt: skip
        eq(f"{what}.{key}", got.get(key), want.get(key))


# ---------------------------------------------------------------------------------------------
# The checks, in order (later ones build on the state earlier ones leave)
# ---------------------------------------------------------------------------------------------

print(f"py-consul against http://{HOST}:{PORT}, expecting Consul {VERSION}'s answers "
      f"(cryptography installed: {HAVE_CRYPTOGRAPHY})")  # fmt: skip


@check("agent.self")
def _():
    me = c.agent.self()
    ok(isinstance(me, dict) and "Config" in me, f"no Config in {me!r}")
    dc = me["Config"].get("Datacenter")
    ok(isinstance(dc, str) and dc, f"Config.Datacenter missing: {me['Config']!r}")
    if os.environ.get("CONSUL_CHECK_DATACENTER"):
        eq("Config.Datacenter", dc, os.environ["CONSUL_CHECK_DATACENTER"])
    ok(bool(me["Config"].get("NodeName")), "Config.NodeName is empty")
    STATE["dc"] = dc
    STATE["node"] = me["Config"]["NodeName"]
    STATE["version"] = me["Config"].get("Version", "")
    return f"dc={dc} node={STATE['node']}"


@check("agent.self Config.Version")
def _():
    # Captures 51 of both versions: `Config.Version` is the bare version.
    eq("Config.Version", c.agent.self()["Config"].get("Version"), VERSION)
    return VERSION


@check("connect.ca.roots")
def _():
    roots = c.connect.ca.roots()
    ex = last()
    eq("request", (ex.method, ex.path, ex.query), ("GET", "/v1/connect/ca/roots", "pem=0"))
    ok(ex.headers.get("Content-Type", "").startswith("application/json"), f"Content-Type {ex.headers}")
    for key in ("ActiveRootID", "TrustDomain", "Roots"):
        ok(key in roots, f"{key} missing from {sorted(roots)}")
    td = roots["TrustDomain"]
    ok(td.endswith(".consul"), f"TrustDomain {td!r} does not end in .consul")
    if os.environ.get("CONSUL_CHECK_TRUST_DOMAIN"):
        eq("TrustDomain", td, os.environ["CONSUL_CHECK_TRUST_DOMAIN"])
    ok(len(roots["Roots"]) >= 1, "no roots")
    ids = [r["ID"] for r in roots["Roots"]]
    eq("Roots order (sorted by ID)", ids, sorted(ids))
    active = [r for r in roots["Roots"] if r.get("Active")]
    eq("active roots", len(active), 1)
    eq("ActiveRootID", roots["ActiveRootID"], active[0]["ID"])
    root = active[0]
    ok(bool(PEM_CERT.match(root["RootCert"])), f"RootCert is not one PEM certificate: {root['RootCert'][:60]!r}")
    eq("Name", root.get("Name"), ROOT_NAME)
    ok(isinstance(root.get("SerialNumber"), int), f"SerialNumber {root.get('SerialNumber')!r} is not a number")
    eq("ExternalTrustDomain", root.get("ExternalTrustDomain"), td[: -len(".consul")])
    cert = parse_cert_pem(root["RootCert"])
    ok(cert.is_ca, "root certificate is not a CA")
    eq("root URI SAN", cert.uris, [f"spiffe://{td}"])
    STATE["trust_domain"] = td
    STATE["roots"] = roots
    STATE["root_cert"] = cert
    return f"TrustDomain={td} ActiveRootID={roots['ActiveRootID'][:23]}..."


@check("agent.connect.ca.roots")
def _():
    roots = c.agent.connect.ca.roots()
    server = STATE["roots"]
    eq("ActiveRootID", roots["ActiveRootID"], server["ActiveRootID"])
    eq("TrustDomain", roots["TrustDomain"], server["TrustDomain"])
    eq("root IDs", [r["ID"] for r in roots["Roots"]], [r["ID"] for r in server["Roots"]])
    eq("RootCerts", [r["RootCert"] for r in roots["Roots"]], [r["RootCert"] for r in server["Roots"]])
    return f"{len(roots['Roots'])} root(s), same as /v1/connect/ca/roots"


@check("agent.service.register web (Connect native)")
def _():
    eq("register returned", c.agent.service.register("web", service_id="web", port=8080,
                                                     connect={"native": True}), True)  # fmt: skip
    ex = last()
    eq("request", (ex.method, ex.path), ("PUT", "/v1/agent/service/register"))
    eq("request body", json.loads(ex.body), {"name": "web", "id": "web", "port": 8080, "connect": {"native": True}})
    eq("answer body", ex.answer, "", "Consul answers a registration with 200 and an empty body")
    return "PUT /v1/agent/service/register (lower-case keys, connect.native) -> 200"


@check("agent.service.register db (Connect native, address, tags)")
def _():
    eq("register returned", c.agent.service.register(
        "db", service_id="db", address="127.0.0.1", port=19200, tags=["primary"], connect={"native": True}
    ), True)  # fmt: skip
    return "registered"


@check("agent.services")
def _():
    services = c.agent.services()
    ok(isinstance(services, dict), f"not a map: {services!r}")
    ok({"web", "db"} <= set(services), f"web and db not both listed: {sorted(services)}")
    db = services["db"]
    want = {
        "ID": "db", "Service": "db", "Tags": ["primary"], "Meta": {}, "Port": 19200,
        "Address": "127.0.0.1", "Weights": {"Passing": 1, "Warning": 1},
        "EnableTagOverride": False, "Connect": {"Native": True},
    }  # fmt: skip
    for key, value in want.items():
        eq(f"db.{key}", db.get(key), value)
    eq("db.Kind absent for a typical service", "Kind" in db, False)
    web = services["web"]
    eq("web.Connect", web.get("Connect"), {"Native": True})
    eq("web.Port", web.get("Port"), 8080)
    eq("web.Tags", web.get("Tags"), [])
    return "web and db listed with Connect.Native=true"


@check("health.connect db passing=True")
def _():
    index, nodes = c.health.connect("db", passing=True)
    ex = last()
    eq("request", (ex.path, ex.query), ("/v1/health/connect/db", "passing=1"))
    ok(str(index).isdigit() and int(index) >= 1, f"X-Consul-Index {index!r}")
    eq("instances", len(nodes), 1)
    node = nodes[0]
    eq("Service.Service", node["Service"]["Service"], "db")
    eq("Service.ID", node["Service"]["ID"], "db")
    eq("Service.Port", node["Service"]["Port"], 19200)
    eq("Service.Address", node["Service"]["Address"], "127.0.0.1")
    eq("Service.Connect", node["Service"]["Connect"], {"Native": True})
    eq("Node.Datacenter", node["Node"]["Datacenter"], STATE["dc"])
    eq("Node.Node", node["Node"]["Node"], STATE["node"])
    ok(len(node["Checks"]) >= 1, "no checks (Consul always has serfHealth)")
    eq("check states", {ch["Status"] for ch in node["Checks"]}, {"passing"})
    return f"index={index}, 1 passing instance of db"


@check("health.connect db tag filter")
def _():
    _, tagged = c.health.connect("db", passing=True, tag="primary")
    eq("instances tagged primary", len(tagged), 1)
    _, untagged = c.health.connect("db", passing=True, tag="no-such-tag")
    eq("instances tagged no-such-tag", untagged, [])
    return "tag=primary -> 1, tag=no-such-tag -> []"


@check("catalog.connect db")
def _():
    index, nodes = c.catalog.connect("db")
    ok(str(index).isdigit() and int(index) >= 1, f"X-Consul-Index {index!r}")
    eq("instances", len(nodes), 1)
    node = nodes[0]
    for key, value in {
        "ServiceName": "db", "ServiceID": "db", "ServiceKind": "", "ServicePort": 19200,
        "ServiceAddress": "127.0.0.1", "ServiceTags": ["primary"],
        "ServiceConnect": {"Native": True}, "Datacenter": STATE["dc"], "Node": STATE["node"],
    }.items():  # fmt: skip
        eq(key, node.get(key), value)
    return f"index={index}, 1 instance"


@check("agent.connect.ca.leaf web")
def _():
    leaf = c.agent.connect.ca.leaf("web")
    ex = last()
    eq("request", (ex.method, ex.path), ("GET", "/v1/agent/connect/ca/leaf/web"))
    eq("Service", leaf.get("Service"), "web")
    eq("ServiceURI", leaf.get("ServiceURI"), spiffe("web"))
    ok(bool(PEM_CERT.match(leaf["CertPEM"])), f"CertPEM is not one PEM certificate: {leaf['CertPEM'][:60]!r}")
    ok(bool(PEM_EC_KEY.match(leaf["PrivateKeyPEM"])), f"PrivateKeyPEM shape: {leaf['PrivateKeyPEM'][:40]!r}")
    for key in ("CreateIndex", "ModifyIndex"):
        ok(isinstance(leaf.get(key), int) and leaf[key] >= 1, f"{key}={leaf.get(key)!r}")
    ok(str(ex.headers.get("X-Consul-Index")) == str(leaf["ModifyIndex"]),
       f"X-Consul-Index {ex.headers.get('X-Consul-Index')!r} != ModifyIndex {leaf['ModifyIndex']}")  # fmt: skip
    cert = parse_cert_pem(leaf["CertPEM"])
    eq("URI SANs in CertPEM", cert.uris, [leaf["ServiceURI"]])
    eq("leaf is a CA", cert.is_ca, False)
    eq("SerialNumber", leaf["SerialNumber"].lower(), hex_serial(cert.serial))
    eq("ValidAfter", rfc3339(leaf["ValidAfter"]), cert.not_before)
    eq("ValidBefore", rfc3339(leaf["ValidBefore"]), cert.not_after)
    ok(cert.not_before < cert.not_after, "NotBefore is not before NotAfter")
    ok(cert.issuer == STATE["root_cert"].subject, "leaf issuer is not the active root's subject")
    how = "parsed DER by hand (cryptography not installed)"
    if HAVE_CRYPTOGRAPHY:
        parsed = crypto_x509.load_pem_x509_certificate(leaf["CertPEM"].encode())
        san = parsed.extensions.get_extension_for_class(crypto_x509.SubjectAlternativeName).value
        eq("cryptography URI SANs", san.get_values_for_type(crypto_x509.UniformResourceIdentifier),
           [leaf["ServiceURI"]])  # fmt: skip
        how = "parsed with cryptography"
    STATE["leaf"] = leaf
    return f"{leaf['ServiceURI']} serial {leaf['SerialNumber']}, {how}"


@check("agent.connect.authorize (py-consul sends PUT; Consul allows only POST)")
def _():
    leaf = STATE["leaf"]
    try:
        got = c.agent.connect.authorize("db", leaf["ServiceURI"], leaf["SerialNumber"])
    except ClientError as e:
        ex = last()
        eq("request method", ex.method, "PUT")
        eq("status", ex.status, 405, "Consul registers /v1/agent/connect/authorize for POST only")
        eq("body", ex.answer, "method PUT not allowed")
        eq("Allow", ex.headers.get("Allow"), "OPTIONS,POST", "capture 37_bad_authorize_wrong_method")
        eq("py-consul error", str(e), "405 method PUT not allowed")
    else:
        raise CheckFailed(f"PUT /v1/agent/connect/authorize answered {got!r}; Consul answers 405 (POST only)")
    NOTES.append(
        "py-consul 1.8.0 Agent.Connect.authorize sends PUT /v1/agent/connect/authorize; Consul "
        "(1.4.5 capture 37 and current agent/http_register.go) allows only POST and answers 405 "
        "`method PUT not allowed` with `Allow: OPTIONS,POST`, as agent-sim does. The checks below "
        "POST through py-consul's transport instead."
    )
    return "405 method PUT not allowed, Allow: OPTIONS,POST (as real Consul)"


@check("authorize web -> db allowed by default (POST)")
def _():
    leaf = STATE["leaf"]
    got = authorize_post("db", leaf["ServiceURI"], leaf["SerialNumber"])
    eq("answer", got, {"Authorized": True, "Reason": ALLOWED_BY_DEFAULT})
    eq("X-Cache present", last().headers.get("X-Cache") in ("HIT", "MISS"), True)
    return got["Reason"]


@check("connect.intentions.list (empty)")
def _():
    got = c.connect.intentions.list()
    eq("intentions", got, [])
    ok(str(last().headers.get("X-Consul-Index", "")).isdigit(), f"no X-Consul-Index in {last().headers}")
    return "[]"


@check("connect.intentions.upsert web -> db allow")
def _():
    eq("upsert returned", c.connect.intentions.upsert("web", "db", action="allow",
                                                      description="py-consul allow"), True)  # fmt: skip
    ex = last()
    eq("request", (ex.method, ex.path, urllib.parse.parse_qs(ex.query)),
       ("PUT", "/v1/connect/intentions/exact", {"source": ["web"], "destination": ["db"]}))  # fmt: skip
    eq("request body", json.loads(ex.body), {"SourceType": "consul", "Action": "allow", "Description": "py-consul allow"})
    exact_answer("upsert")
    return "PUT /v1/connect/intentions/exact?source=web&destination=db -> 200 true"


@check("connect.intentions.read web -> db", only="1.4.5")
def _():
    ixn = c.connect.intentions.read("web", "db")
    ok(isinstance(ixn, dict), f"read returned {ixn!r}")
    eq("field names", sorted(set(ixn) - INTENTION_FIELDS), [])
    want = {
        "SourceNS": "default", "SourceName": "web", "DestinationNS": "default",
        "DestinationName": "db", "SourceType": "consul", "Action": "allow",
        "Description": "py-consul allow", "Precedence": 9, "Meta": {},
    }  # fmt: skip
    for key, value in want.items():
        eq(key, ixn.get(key), value)
    ok(bool(UUID.match(ixn.get("ID", ""))), f"ID {ixn.get('ID')!r} is not a UUID")
    eq("CreateIndex == ModifyIndex on create", ixn["CreateIndex"], ixn["ModifyIndex"])
    STATE["allow"] = ixn
    return f"ID={ixn['ID']} Precedence=9"


# A source of a `service-intentions` entry, as 1.10.9 answers it (m03): no ID, no timestamps,
# no Hash, empty Meta omitted; in struct order.
EXACT_FIELDS_1_10 = [
    "Description", "SourceNS", "SourceName", "DestinationNS", "DestinationName", "SourceType",
    "Action", "Precedence", "CreateIndex", "ModifyIndex",
]  # fmt: skip


@check("connect.intentions.read web -> db", only="1.10.9")
def _():
    ixn = c.connect.intentions.read("web", "db")
    ok(isinstance(ixn, dict), f"read returned {ixn!r}")
    eq("field names, in order", list(ixn), EXACT_FIELDS_1_10, "capture m03")
    want = {
        "SourceNS": "default", "SourceName": "web", "DestinationNS": "default",
        "DestinationName": "db", "SourceType": "consul", "Action": "allow",
        "Description": "py-consul allow", "Precedence": 9,
    }  # fmt: skip
    for key, value in want.items():
        eq(key, ixn.get(key), value)
    eq("CreateIndex == ModifyIndex on create", ixn["CreateIndex"], ixn["ModifyIndex"], "capture m03")
    STATE["allow"] = ixn
    return f"no ID (config entry source), Precedence=9, index {ixn['CreateIndex']}"


@check("connect.intentions.list (one)")
def _():
    got = c.connect.intentions.list(dc=STATE["dc"])
    eq("request query", urllib.parse.parse_qs(last().query), {"dc": [STATE["dc"]]})
    eq("count", len(got), 1)
    same_intention("list[0]", got[0], STATE["allow"])
    return "1 intention, same as read"


@check("connect.intentions.check web -> db (allow)")
def _():
    eq("Allowed", c.connect.intentions.check("web", "db"), True)
    return "Allowed=true"


@check("connect.intentions.upsert web -> db deny (update in place)", only="1.4.5")
def _():
    eq("upsert returned", c.connect.intentions.upsert("web", "db", action="deny", description="py-consul deny",
                                                      meta={"origin": "py-consul"}), True)  # fmt: skip
    exact_answer("upsert")
    ixn = c.connect.intentions.read("web", "db")
    before = STATE["allow"]
    eq("Action", ixn["Action"], "deny")
    eq("Description", ixn["Description"], "py-consul deny")
    eq("Meta", ixn["Meta"], {"origin": "py-consul"})
    eq("ID kept", ixn["ID"], before["ID"])
    eq("CreateIndex kept", ixn["CreateIndex"], before["CreateIndex"])
    eq("CreatedAt kept", ixn["CreatedAt"], before["CreatedAt"])
    ok(ixn["ModifyIndex"] > before["ModifyIndex"], f"ModifyIndex {ixn['ModifyIndex']} not > {before['ModifyIndex']}")
    eq("count after update", len(c.connect.intentions.list()), 1)
    STATE["deny"] = ixn
    return f"same ID, ModifyIndex {before['ModifyIndex']} -> {ixn['ModifyIndex']}"


META_REFUSED = "Meta must not be specified, or should be unchanged during an update."


@check("connect.intentions.upsert web -> db deny with meta (refused on an update)", only="1.10.9")
def _():
    try:
        got = c.connect.intentions.upsert("web", "db", action="deny", description="py-consul deny",
                                          meta={"origin": "py-consul"})  # fmt: skip
    except ConsulException as e:
        ex = last()
        eq("request body", json.loads(ex.body), {"SourceType": "consul", "Action": "deny",
                                                 "Description": "py-consul deny", "Meta": {"origin": "py-consul"}})  # fmt: skip
        eq("answer", (ex.status, ex.answer), (500, META_REFUSED),
           "capture m11d; 1.10.9 computeApplyChangesUpsert: Meta lives on the config entry")  # fmt: skip
        eq("py-consul error", str(e), f"500 {META_REFUSED}")
    else:
        raise CheckFailed(f"upsert with meta returned {got!r}; Consul 1.10.9 answers 500 {META_REFUSED!r}")
    # Refused before anything is written (capture m11g after m11d: the entry as m11c left it).
    eq("intention after the refusal", c.connect.intentions.read("web", "db"), STATE["allow"])
    NOTES.append(
        "py-consul 1.8.0 `connect.intentions.upsert(meta=...)` sends `Meta`, which Consul 1.10.9 "
        "refuses on an existing service-intentions entry unless it equals the entry's Meta (500 "
        f"`{META_REFUSED}`, capture m11d), and on a new entry 500 `Meta must not be specified` "
        "(v1.10.9 source). The 1.10.9 checks update without meta instead."
    )
    return f"500 {META_REFUSED} (as Consul 1.10.9), intention unchanged"


@check("connect.intentions.upsert web -> db deny (update in place)", only="1.10.9")
def _():
    eq("upsert returned", c.connect.intentions.upsert("web", "db", action="deny", description="py-consul deny"), True)
    exact_answer("upsert")
    ixn = c.connect.intentions.read("web", "db")
    before = STATE["allow"]
    eq("field names, in order", list(ixn), EXACT_FIELDS_1_10, "capture m03: no ID, CreatedAt, Meta")
    eq("Action", ixn["Action"], "deny")
    eq("Description", ixn["Description"], "py-consul deny")
    eq("CreateIndex kept", ixn["CreateIndex"], before["CreateIndex"])
    ok(ixn["ModifyIndex"] > before["ModifyIndex"], f"ModifyIndex {ixn['ModifyIndex']} not > {before['ModifyIndex']}")
    eq("count after update", len(c.connect.intentions.list()), 1)
    STATE["deny"] = ixn
    return f"ModifyIndex {before['ModifyIndex']} -> {ixn['ModifyIndex']}"


@check("connect.intentions.check web -> db (deny)")
def _():
    eq("Allowed", c.connect.intentions.check("web", "db"), False)
    return "Allowed=false"


@check("connect.intentions.upsert * -> db allow (wildcard source)")
def _():
    eq("upsert returned", c.connect.intentions.upsert("*", "db", action="allow"), True)
    exact_answer("upsert")
    ixn = c.connect.intentions.read("*", "db")
    eq("SourceName", ixn["SourceName"], "*")
    eq("Precedence", ixn["Precedence"], 8)
    eq("Action", ixn["Action"], "allow")
    STATE["wild"] = ixn
    return "Precedence=8"


@check("connect.intentions.match by destination db", only="1.4.5")
def _():
    got = c.connect.intentions.match("destination", "db")
    eq("request query", urllib.parse.parse_qs(last().query), {"by": ["destination"], "name": ["db"]})
    eq("keys", sorted(got), ["db"])
    eq("order (precedence)", [(i["SourceName"], i["Precedence"]) for i in got["db"]], [("web", 9), ("*", 8)])
    same_intention("db[0]", got["db"][0], STATE["deny"])
    same_intention("db[1]", got["db"][1], STATE["wild"])
    return "web->db (9), *->db (8)"


@check("connect.intentions.match by destination db", only="1.10.9")
def _():
    got = c.connect.intentions.match("destination", "db")
    eq("request query", urllib.parse.parse_qs(last().query), {"by": ["destination"], "name": ["db"]})
    eq("keys", sorted(got), ["db"])
    eq("order (precedence)", [(i["SourceName"], i["Precedence"]) for i in got["db"]], [("web", 9), ("*", 8)])
    # Every source carries its entry's indexes: created with web -> db, last modified by * -> db
    # (captures m15, m16; m52b for a source added later).
    entry = {"CreateIndex": STATE["allow"]["CreateIndex"], "ModifyIndex": STATE["wild"]["ModifyIndex"]}
    same_intention("db[0]", got["db"][0], {**STATE["deny"], **entry})
    same_intention("db[1]", got["db"][1], {**STATE["wild"], **entry})
    return f"web->db (9), *->db (8), both with the entry's indexes {entry}"


@check("connect.intentions.match by source web")
def _():
    got = c.connect.intentions.match("source", "web")
    eq("keys", sorted(got), ["web"])
    eq("order", [(i["SourceName"], i["DestinationName"], i["Precedence"]) for i in got["web"]],
       [("web", "db", 9), ("*", "db", 8)])  # fmt: skip
    return "web->db (9), *->db (8)"


@check("connect.intentions.check api -> db (wildcard allow) and web -> db (exact deny wins)")
def _():
    eq("api -> db Allowed", c.connect.intentions.check("api", "db"), True)
    eq("web -> db Allowed", c.connect.intentions.check("web", "db"), False)
    return "api allowed, web denied"


@check("authorize web -> db denied by intention (POST)")
def _():
    leaf = STATE["leaf"]
    got = authorize_post("db", leaf["ServiceURI"], leaf["SerialNumber"])
    ixn = STATE["deny"]
    eq("answer", got, {"Authorized": False, "Reason": reason("deny", "web", "db", ixn.get("ID"), 9)})
    eq("wire form of =>", "=\\u003e" in last().answer, True, "Go's encoder escapes > as \\u003e")
    return got["Reason"]


@check("authorize api -> db allowed by wildcard intention (POST)")
def _():
    got = authorize_post("db", spiffe("api"), "0a:0b")
    ixn = STATE["wild"]
    eq("answer", got, {"Authorized": True, "Reason": reason("allow", "*", "db", ixn.get("ID"), 8)})
    return got["Reason"]


@check("connect.intentions.delete * -> db and web -> db")
def _():
    eq("delete * -> db returned", c.connect.intentions.delete("*", "db"), True)
    exact_answer("delete")
    eq("delete web -> db returned", c.connect.intentions.delete("web", "db"), True)
    ex = last()
    eq("request", (ex.method, ex.path, urllib.parse.parse_qs(ex.query)),
       ("DELETE", "/v1/connect/intentions/exact", {"source": ["web"], "destination": ["db"]}))  # fmt: skip
    exact_answer("delete")
    return "DELETE /v1/connect/intentions/exact -> 200 true (twice)"


@check("connect.intentions.read after delete -> None (404 Intention not found)")
def _():
    eq("read returned", c.connect.intentions.read("web", "db"), None)
    ex = last()
    eq("status", ex.status, 404)
    eq("body", ex.answer, "Intention not found", "IntentionGetExact: HTTPError{404, ErrIntentionNotFound}")
    return "404 Intention not found"


@check("connect.intentions.delete again is idempotent")
def _():
    eq("delete returned", c.connect.intentions.delete("web", "db"), True)
    exact_answer("delete of a missing intention")
    return "200 true (Consul: by-name deletions are idempotent)"


@check("connect.intentions.list and match after delete")
def _():
    eq("list", c.connect.intentions.list(), [])
    got = c.connect.intentions.match("destination", "db")
    eq("keys", sorted(got), ["db"])
    ok(got["db"] in (None, []), f"match list for db is {got['db']!r}, want empty")
    return f"list [], match db -> {json.dumps(got['db'])}"


@check("authorize web -> db allowed by default again (POST)")
def _():
    leaf = STATE["leaf"]
    eq("answer", authorize_post("db", leaf["ServiceURI"], leaf["SerialNumber"]),
       {"Authorized": True, "Reason": ALLOWED_BY_DEFAULT})  # fmt: skip
    return ALLOWED_BY_DEFAULT


# Missing or empty parameters on the `exact` API. hashicorp/consul agent/intentions_endpoint.go
# returns a plain fmt.Errorf for them (GET: `source, ok := q["source"]; if !ok || len(source) != 1`,
# PUT/DELETE via parseIntentionQueryExact, which also rejects an empty value), and agent/http.go
# answers any error that is not a BadRequestError/HTTPError with 500 and the bare message.
MISSING_PARAMS = [
    ("GET", [("destination", "db")], "source"),
    ("GET", [("source", "web")], "destination"),
    ("PUT", [("destination", "db")], "source"),
    ("PUT", [("source", "web"), ("destination", "")], "destination"),
    ("DELETE", [("destination", "db")], "source"),
]

for method, params, missing in MISSING_PARAMS:
    shown = urllib.parse.urlencode(params)

    @check(f"exact API {method} ?{shown} (missing {missing})")
    def _(method=method, params=params, missing=missing):
        body = json.dumps({"SourceType": "consul", "Action": "allow"}) if method == "PUT" else ""
        ex = raw(method, "/v1/connect/intentions/exact", params=params, data=body)
        want = f"required query parameter '{missing}' not set"
        ref = "Consul: fmt.Errorf in intentions_endpoint.go -> 500 with the bare message (agent/http.go)"
        eq("answer", (ex.status, ex.answer), (500, want), ref)
        return f"500 {want}"


@check("agent.service.deregister web")
def _():
    eq("deregister returned", c.agent.service.deregister("web"), True)
    eq("request", (last().method, last().path), ("PUT", "/v1/agent/service/deregister/web"))
    services = c.agent.services()
    eq("web still listed", "web" in services, False)
    eq("db still listed", "db" in services, True)
    _, nodes = c.health.connect("web", passing=True)
    eq("health.connect web", nodes, [])
    return "web gone from agent services and Connect discovery"


for note in NOTES:
    print(f"note: {note}")
print(f"{PASSED} passed, {FAILED} failed")
sys.exit(1 if FAILED else 0)
