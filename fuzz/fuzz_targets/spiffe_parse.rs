//! Arbitrary text as a SPIFFE ID.
//!
//! Properties, beyond "never panics":
//! - a parsed `SpiffeId` formats to a string that parses to an equal id, which formats the same
//!   (one canonical form);
//! - input that already uses the lowercase scheme formats back to itself byte for byte (the
//!   parser keeps everything else as written);
//! - `ServiceId` parses exactly the `SpiffeId::Service` inputs, to the same id, and its serde
//!   form round-trips;
//! - rebuilding a service id from its parts with `ServiceId::new` gives the same id;
//! - whatever is accepted holds only the characters the grammar allows.
#![no_main]

use consul_connect::spiffe::{ServiceId, SigningId, SpiffeId, TrustDomain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let parsed = input.parse::<SpiffeId>();
    let as_service = input.parse::<ServiceId>();

    // Errors must format (they echo the input) without panicking.
    if let Err(e) = &parsed {
        let _ = e.to_string();
    }
    if let Err(e) = &as_service {
        let _ = e.to_string();
    }

    match (&parsed, &as_service) {
        (Ok(SpiffeId::Service(a)), Ok(b)) => assert_eq!(a, b, "{input:?}"),
        (Ok(SpiffeId::Signing(_)), Err(_)) | (Err(_), Err(_)) => {}
        (p, s) => panic!("SpiffeId {p:?} and ServiceId {s:?} disagree on {input:?}"),
    }

    let Ok(id) = parsed else { return };

    let text = id.to_string();
    let again: SpiffeId = text
        .parse()
        .unwrap_or_else(|e| panic!("{input:?} parsed, but its form {text:?} does not: {e}"));
    assert_eq!(id, again, "{input:?} -> {text:?}");
    assert_eq!(
        text,
        again.to_string(),
        "{input:?}: formatting is not stable"
    );
    if input.starts_with("spiffe://") {
        assert_eq!(
            text, input,
            "a canonical-scheme id must format back to itself"
        );
    }
    let _ = format!("{id:?}");

    let td = id.trust_domain();
    assert!(!td.as_str().is_empty());
    assert!(
        td.as_str()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')),
        "trust domain {td:?} from {input:?}"
    );
    assert_eq!(
        TrustDomain::new(td.as_str()).as_ref(),
        Ok(td),
        "{input:?}: the trust domain does not re-validate"
    );

    match &id {
        SpiffeId::Service(svc) => {
            for seg in [svc.namespace(), svc.datacenter(), svc.service()] {
                assert!(!seg.is_empty() && seg != "." && seg != "..", "{input:?}");
                assert!(
                    seg.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')),
                    "segment {seg:?} from {input:?}"
                );
            }
            let rebuilt =
                ServiceId::new(td.clone(), svc.namespace(), svc.datacenter(), svc.service())
                    .and_then(|id| id.with_partition(svc.partition()))
                    .unwrap_or_else(|e| panic!("{input:?}: parts do not rebuild: {e}"));
            assert_eq!(&rebuilt, svc);

            let json = serde_json::to_string(svc).expect("a ServiceId serializes");
            let back: ServiceId = serde_json::from_str(&json)
                .unwrap_or_else(|e| panic!("{input:?}: serde form {json} does not parse: {e}"));
            assert_eq!(&back, svc);
        }
        SpiffeId::Signing(signing) => {
            let cluster = signing.cluster_id();
            assert!(!cluster.is_empty(), "{input:?}: empty cluster id");
            assert!(td.as_str().starts_with(cluster));
            let rebuilt = SigningId::new(td.clone())
                .unwrap_or_else(|e| panic!("{input:?}: signing id does not rebuild: {e}"));
            assert_eq!(&rebuilt, signing);
        }
        // Agent, server and mesh-gateway identities: their text reads back as the same.
        other => {
            let again: SpiffeId = other
                .to_string()
                .parse()
                .unwrap_or_else(|e| panic!("{input:?}: {other} does not parse back: {e}"));
            assert_eq!(&again, other);
        }
    }
});
