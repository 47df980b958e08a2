//! agent-sim's CA over HTTP: leaves openssl accepts, root rotation with cross-signing, and
//! blocking queries on roots and leaves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::agent::{openssl, start_agent, start_agent_1_4_5, temp_dir, Raw, TRUST_DOMAIN};

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

fn active_root(roots: &Value) -> &Value {
    let id = roots["ActiveRootID"].as_str().unwrap();
    roots["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ID"] == id)
        .unwrap()
}

/// Splits a PEM bundle into its certificates.
fn pem_blocks(bundle: &str) -> Vec<String> {
    bundle
        .split_inclusive("-----END CERTIFICATE-----")
        .filter(|b| b.contains("BEGIN CERTIFICATE"))
        .map(|b| b.trim().to_owned() + "\n")
        .collect()
}

#[tokio::test]
async fn leaf_verifies_with_openssl_and_has_consuls_profile() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let roots = raw.get("/v1/agent/connect/ca/roots").await.json();
    let leaf = raw.get("/v1/agent/connect/ca/leaf/web").await;
    assert_eq!(leaf.status, 200);
    assert_eq!(leaf.header("X-Cache"), Some("MISS"));
    let leaf = leaf.json();
    assert_eq!(leaf["Service"], "web");
    assert_eq!(
        leaf["ServiceURI"],
        format!("spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/web")
    );
    assert_eq!(roots["TrustDomain"], TRUST_DOMAIN);

    let dir = temp_dir("leaf-openssl");
    let root = active_root(&roots);
    let root_pem = write(&dir, "root.pem", root["RootCert"].as_str().unwrap());
    let leaf_pem = write(&dir, "leaf.pem", leaf["CertPEM"].as_str().unwrap());
    let (ok, out) = openssl(&["verify", "-CAfile", &root_pem, &leaf_pem]);
    assert!(ok, "openssl verify failed: {out}");

    let (ok, text) = openssl(&["x509", "-in", &leaf_pem, "-noout", "-text"]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "URI:spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/web"
        )),
        "{text}"
    );
    // 1.10's leaf name (web.txt): <service>.svc.<namespace>.<first 8 of the trust domain>.consul.
    assert!(
        text.contains("Subject: CN = web.svc.default.11111111.consul\n"),
        "{text}"
    );
    assert!(
        text.contains("Issuer: CN = pri-") && text.contains(".consul.ca.11111111.consul\n"),
        "{text}"
    );
    assert!(text.contains("X509v3 Key Usage: critical"), "{text}");
    assert!(
        text.contains("Digital Signature, Key Encipherment, Data Encipherment, Key Agreement"),
        "{text}"
    );
    assert!(
        text.contains("TLS Web Client Authentication, TLS Web Server Authentication"),
        "{text}"
    );
    assert!(text.contains("CA:FALSE"), "{text}");

    // SKI is the leaf's own key id; AKI is the root's SKI, which is also SigningKeyID.
    let (_, root_text) = openssl(&["x509", "-in", &root_pem, "-noout", "-text"]);
    let ski = |t: &str| extension_value(t, "X509v3 Subject Key Identifier");
    let aki = |t: &str| extension_value(t, "X509v3 Authority Key Identifier");
    assert_ne!(
        ski(&text),
        ski(&root_text),
        "leaf SKI must be its own key's id"
    );
    assert_eq!(aki(&text), ski(&root_text));
    assert_eq!(
        root["SigningKeyID"].as_str().unwrap().to_ascii_uppercase(),
        ski(&root_text)
    );
    let (ok, key_text) = openssl(&[
        "ec",
        "-noout",
        "-text",
        "-in",
        &write(&dir, "leaf.key", leaf["PrivateKeyPEM"].as_str().unwrap()),
    ]);
    assert!(ok && key_text.contains("prime256v1"), "{key_text}");
}

fn extension_value(text: &str, name: &str) -> String {
    let mut lines = text.lines().skip_while(|l| !l.contains(name));
    lines.next();
    lines
        .next()
        .unwrap_or_default()
        .trim()
        .trim_start_matches("keyid:")
        .to_owned()
}

#[tokio::test]
async fn rotation_cross_signs_and_old_leaves_stay_valid() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let dir = temp_dir("rotation");
    let old_roots = raw.get("/v1/agent/connect/ca/roots").await.json();
    let old_root = active_root(&old_roots).clone();
    let old_leaf = raw.get("/v1/agent/connect/ca/leaf/web").await.json();

    let key_dir = temp_dir("rotation-key");
    let key_path = key_dir.join("new.key");
    let (ok, out) = openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        key_path.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let key = std::fs::read_to_string(&key_path).unwrap();
    let body = serde_json::json!({"Provider": "consul", "Config": {"PrivateKey": key, "RotationPeriod": "2160h"}});
    let put = raw
        .put("/v1/connect/ca/configuration", &body.to_string())
        .await;
    assert_eq!((put.status, put.body.as_str()), (200, ""));

    let roots = raw.get("/v1/agent/connect/ca/roots").await.json();
    let list = roots["Roots"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{roots}");
    let new_root = active_root(&roots);
    assert_ne!(new_root["ID"], old_root["ID"]);
    let intermediates = new_root["IntermediateCerts"].as_array().unwrap();
    assert_eq!(intermediates.len(), 1);
    let old_listed = list.iter().find(|r| r["ID"] == old_root["ID"]).unwrap();
    assert_eq!(old_listed["Active"], false);
    let ids: Vec<&str> = list.iter().map(|r| r["ID"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "roots are sorted by ID");

    // 1.10 stores the rotation PUT verbatim and shows the key to operator:write holders
    // (sample 44); 1.4 showed "hidden" (tests/secrets.rs).
    let config = raw.get("/v1/connect/ca/configuration").await.json();
    assert_eq!(
        config["Config"],
        serde_json::json!({"PrivateKey": key, "RotationPeriod": "2160h"})
    );
    assert_eq!(config["State"], Value::Null);
    assert_eq!(config["ForceWithoutCrossSigning"], false);

    // The cached leaf is re-issued within the rotation jitter window: wait for it.
    let old_index = old_leaf["ModifyIndex"].as_u64().unwrap();
    let new_leaf = raw
        .get(&format!(
            "/v1/agent/connect/ca/leaf/web?index={old_index}&wait=10s"
        ))
        .await
        .json();
    assert_ne!(
        new_leaf["SerialNumber"], old_leaf["SerialNumber"],
        "a rotation re-issues the leaf"
    );
    let blocks = pem_blocks(new_leaf["CertPEM"].as_str().unwrap());
    assert_eq!(blocks.len(), 2, "leaf then the cross-signed intermediate");
    assert_eq!(blocks[1].trim(), intermediates[0].as_str().unwrap().trim());

    let new_root_pem = write(&dir, "new_root.pem", new_root["RootCert"].as_str().unwrap());
    let old_root_pem = write(&dir, "old_root.pem", old_root["RootCert"].as_str().unwrap());
    let new_leaf_pem = write(&dir, "new_leaf.pem", &blocks[0]);
    let cross_pem = write(&dir, "cross.pem", &blocks[1]);
    let old_leaf_pem = write(&dir, "old_leaf.pem", old_leaf["CertPEM"].as_str().unwrap());

    let (ok, out) = openssl(&["verify", "-CAfile", &new_root_pem, &new_leaf_pem]);
    assert!(ok, "new leaf against the new root: {out}");
    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        &old_root_pem,
        "-untrusted",
        &cross_pem,
        &new_leaf_pem,
    ]);
    assert!(
        ok,
        "new leaf against the old root through the cross-signed intermediate: {out}"
    );
    let (ok, _) = openssl(&["verify", "-CAfile", &old_root_pem, &new_leaf_pem]);
    assert!(
        !ok,
        "without the intermediate the old root cannot vouch for the new leaf"
    );
    let (ok, out) = openssl(&["verify", "-CAfile", &old_root_pem, &old_leaf_pem]);
    assert!(ok, "old leaf still verifies against the old root: {out}");
    let (_, cross_text) = openssl(&["x509", "-in", &cross_pem, "-noout", "-text"]);
    assert!(cross_text.contains("CA:TRUE"), "{cross_text}");
}

#[tokio::test]
async fn roots_blocking_query_wakes_on_rotation_and_times_out_otherwise() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let first = raw.get("/v1/agent/connect/ca/roots").await;
    let index = first.index();
    assert_eq!(first.header("X-Consul-KnownLeader"), Some("true"));
    assert_eq!(first.header("X-Consul-LastContact"), Some("0"));

    // Nothing changes: the query returns after `wait` with the same index.
    let started = Instant::now();
    let same = raw
        .get(&format!("/v1/agent/connect/ca/roots?index={index}&wait=1s"))
        .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1),
        "returned early after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(1000 + 1000 / 16 + 500),
        "took {waited:?}"
    );
    assert_eq!(same.index(), index);

    // A rotation wakes a waiting query at once.
    let waiter = {
        let raw = raw.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = raw
                .get(&format!(
                    "/v1/agent/connect/ca/roots?index={index}&wait=30s"
                ))
                .await;
            (answer, started.elapsed())
        })
    };
    tokio::task::yield_now().await;
    let put = raw
        .put(
            "/v1/connect/ca/configuration",
            r#"{"Provider":"consul","Config":{"ForceRotate":true}}"#,
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let (answer, took) = waiter.await.unwrap();
    assert!(
        took < Duration::from_secs(1),
        "blocking query took {took:?}"
    );
    assert!(answer.index() > index);
    assert_eq!(answer.json()["Roots"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn leaf_blocking_query_wakes_with_the_reissued_leaf() {
    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let leaf = raw.get("/v1/agent/connect/ca/leaf/db").await;
    let index = leaf.index();
    assert_eq!(leaf.json()["ModifyIndex"].as_u64(), Some(index));
    let waiter = {
        let raw = raw.clone();
        tokio::spawn(async move {
            raw.get(&format!(
                "/v1/agent/connect/ca/leaf/db?index={index}&wait=30s"
            ))
            .await
        })
    };
    tokio::task::yield_now().await;
    let put = raw
        .put(
            "/v1/connect/ca/configuration",
            r#"{"Provider":"consul","Config":{"ForceRotate":true}}"#,
        )
        .await;
    assert_eq!(put.status, 200);
    let answer = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(answer.index() > index);
    assert_eq!(
        pem_blocks(answer.json()["CertPEM"].as_str().unwrap()).len(),
        2
    );
}

#[tokio::test]
async fn bad_ca_configurations_are_refused_as_consul_does() {
    // The TTL texts (sample 38g) and the decode error's prefix (38i) changed in 1.10.
    let agent = start_agent_1_4_5().await;
    let raw = Raw::new(&agent);
    let answer = raw.put("/v1/connect/ca/configuration", "{").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (400, "Request decode failed: unexpected EOF")
    );
    for (ttl, message) in [
        ("30m", "leaf cert TTL must be greater than 1h"),
        ("9000h", "leaf cert TTL must be less than 1 year"),
    ] {
        let body = format!(r#"{{"Provider":"consul","Config":{{"LeafCertTTL":"{ttl}"}}}}"#);
        let answer = raw.put("/v1/connect/ca/configuration", &body).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (
                500,
                format!("error configuring provider: {message}").as_str()
            )
        );
    }

    let agent = start_agent().await;
    let raw = Raw::new(&agent);
    let cases = [
        (
            "{",
            400,
            "Bad request: Request decode failed: unexpected EOF",
        ),
        ("", 400, "Bad request: Request decode failed: EOF"),
        (
            r#"{"Provider":"vault","Config":{}}"#,
            500,
            "could not initialize provider: unknown CA provider \"vault\"",
        ),
        (
            r#"{"Provider":"consul","Config":{"LeafCertTTL":"30m"}}"#,
            500,
            "error configuring provider: leaf cert TTL must be greater or equal than 1h0m0s",
        ),
        (
            r#"{"Provider":"consul","Config":{"LeafCertTTL":"9000h"}}"#,
            500,
            "error configuring provider: leaf cert TTL must be less than 8760h0m0s",
        ),
        (
            r#"{"Provider":"consul","Config":{"RootCert":"x"}}"#,
            500,
            "error configuring provider: must provide a private key when providing a root cert",
        ),
    ];
    for (body, status, message) in cases {
        let answer = raw.put("/v1/connect/ca/configuration", body).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (status, message),
            "body {body:?}"
        );
    }
    for key in [
        "not a key",
        "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
    ] {
        let body = serde_json::json!({"Provider": "consul", "Config": {"PrivateKey": key}});
        let answer = raw
            .put("/v1/connect/ca/configuration", &body.to_string())
            .await;
        assert_eq!(answer.status, 500, "{key:?}: {}", answer.body);
        assert!(!answer.body.is_empty());
    }
    // Nothing was rotated by the refused requests.
    let roots = raw.get("/v1/connect/ca/roots").await.json();
    assert_eq!(roots["Roots"].as_array().unwrap().len(), 1);
}
