#!/usr/bin/env python3
"""Writes the starting corpora under fuzz/corpus/<target>/ (git-ignored).

Sources: the captured Consul 1.4.5 answers in tests/data/consul-1.4.5 (intention bodies, the
real root and leaf certificates), and hand-written SPIFFE IDs and ACL rules that cover the
grammar. cert_identity's fixture-derived seeds (the fixture leaf's DER and TBS) are written by
the target itself: see README.md.
"""
import base64, hashlib, json, os, re, sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "data", "consul-1.4.5")
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def bodies():
    for name in sorted(os.listdir(DATA)):
        if not name.endswith(".http"):
            continue
        text = open(os.path.join(DATA, name), encoding="utf-8", errors="replace").read()
        parts = text.split("\n\n", 1)
        if len(parts) == 2:
            yield name, parts[1]


TD = "11111111-2222-3333-4444-555555555555.consul"
for s in [
    f"spiffe://{TD}/ns/default/dc/dc1/svc/web",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/my-service_v2.x~",
    f"spiffe://{TD}",
    f"SPIFFE://{TD}/ns/default/dc/dc1/svc/web",
    "spiffe://Mixed.Case.consul/ns/default/dc/dc1/svc/web",
    "spiffe://a.b/ns/n/dc/d/svc/s",
    f"spiffe://{TD}:8080/ns/default/dc/dc1/svc/web",
    f"spiffe://user@{TD}/ns/default/dc/dc1/svc/web",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/web?x=1#f",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/w%65b",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/..",
    f"spiffe://{TD}/agent/client/dc/dc1/id/abc",
    "spiffe://nodot",
    "spiffe://.consul",
    "spiffe://",
    "spiffé://x.y",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/wéb",
]:
    put("spiffe_parse", s)

for name, body in bodies():
    body = body.strip()
    if "Intention" in body or "SourceName" in body or name.startswith(("11", "12", "13", "16", "20", "21", "30", "35", "38")):
        put("intention_json", body)
        try:
            v = json.loads(body)
        except ValueError:
            continue
        if isinstance(v, list):
            for item in v:
                put("intention_json", json.dumps(item))
put("intention_json", json.dumps([
    {"ID": "1", "SourceName": "web", "DestinationName": "db", "Action": "deny"},
    {"ID": "2", "SourceName": "*", "DestinationName": "db", "Action": "allow", "Meta": {"k": "v"}},
    {"ID": "3", "SourceNS": "*", "SourceName": "*", "DestinationNS": "*", "DestinationName": "*", "Action": "allow"},
    {"ID": "4", "SourceName": "WEB", "DestinationName": "DB", "Action": "allow"},
    {"ID": "1", "SourceName": "api", "DestinationName": "db", "Action": "allow",
     "CreatedAt": "2026-11-25T20:37:12.665669921+02:00"},
]))

for name, body in bodies():
    for pem in re.findall(r"-----BEGIN CERTIFICATE-----(?:\\n|\n)(.*?)-----END CERTIFICATE-----", body, re.S):
        der = base64.b64decode(pem.replace("\\n", "").replace("\n", ""))
        put("cert_identity", b"\x00" + der)
        put("cert_identity", b"\x01" + len(der).to_bytes(2, "big") + der + der)

for s in [
    'service "web" { policy = "write" }\nservice_prefix "" { policy = "read" }',
    'service "web" { policy = "read" intentions = "deny" }',
    'service web { policy = "write" }, node "n1" { policy = "read" }',
    'service { web { policy = "write" } }',
    'service = { web = { policy = "write" } }',
    'service "web" "x" { policy = "write" }',
    'agent "" { policy = "read" }\nagent_prefix "a" { policy = "write" }\nnode_prefix "" { policy = "deny" }',
    'acl = "write"\noperator = "read"\nkeyring = "deny"',
    'key "foo/" { policy = "list" }\nkey_prefix "" { policy = "deny" }',
    'session "" { policy = "read" } event "" { policy = "write" } query "" { policy = "deny" }',
    'service "web" { policy = "write" sentinel { code = "x" enforcementlevel = "hard-mandatory" } }',
    '# comment\n// comment\n/* block */ service "web" { policy = "write" }',
    'service "w\\u00e9b\\x41\\101\\n" { policy = "write" }',
    'service "${var.x}" { policy = "write" }',
    'service "web" {\n  policy = <<EOF\nwrite\nEOF\n}',
    'service "web" {\n  policy = <<-EOF\n    write\n    EOF\n}',
    'service "web" { policy = ["write", 1, 1.5, -2, 0x1f, true] }',
    'service "web" { policy = "writ" }',
    'operator = "writ"',
    '{"service": {"web": {"policy": "write", "intentions": "write"}}, "operator": "read"}',
    '{"service": [{"web": [{"policy": "write"}]}], "service_prefix": {"": {"policy": "read"}}}',
    '{"acl": "read", "node": {"n\\u00e9": {"policy": "deny"}}, "x": [1, 2.5e3, null, false]}',
    '{"agent_prefix": {"": {"policy": "read"}}, "key": {"a": {"policy": "list"}}}',
    # Nesting amplifier markers (U+0001 list, U+0002 HCL block, U+0003 JSON object): all of
    # these are refused by the nesting limit; the fuzzer looks for places where they are not.
    'a = \x01',
    'service \x02',
    '{"a":\x03',
    'a = [ 1, \x01 ]',
    'service "web" { policy = "write" }\nb = \x01',
]:
    put("acl_rules", s)

print("corpora under", CORPUS)
for t in sorted(os.listdir(CORPUS)):
    print(t, len(os.listdir(os.path.join(CORPUS, t))))
