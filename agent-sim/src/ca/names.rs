//! How the CA names what it signs: Consul 1.4's and 1.10's common names.

use consul_connect_types::spiffe::{ServiceId, TrustDomain};

/// How the CA names what it signs: Consul's common names changed after 1.4.
///
/// ```
/// use agent_sim::ca::CertNames;
/// use consul_connect_types::spiffe::{ServiceId, TrustDomain};
///
/// let td = TrustDomain::new("948f9bc5-27b7-56a1-4955-4da0cfcecc8f.consul")?;
/// let web = ServiceId::new(td.clone(), "default", "dc1", "web")?;
/// assert_eq!(CertNames::Consul1_4.leaf(&web), "web");
/// assert_eq!(CertNames::Consul1_10.leaf(&web), "web.svc.default.948f9bc5.consul");
/// assert_eq!(CertNames::Consul1_4.ca(7, &td, true), "Consul CA 7");
/// let cn = CertNames::Consul1_10.ca(7, &td, false);
/// assert!(cn.starts_with("sec-") && cn.ends_with(".consul.ca.948f9bc5.consul"), "{cn}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CertNames {
    /// Consul 1.4: roots `Consul CA <serial>`, leaves `<service>`.
    #[default]
    Consul1_4,
    /// Consul 1.10: roots `pri-<uid>.consul.ca.<first 8 of the trust domain>.consul`
    /// (a secondary datacenter's intermediate `sec-…`), leaves
    /// `<service>.svc.<namespace>.<first 8 of the trust domain>.consul`, the service and
    /// namespace shortened so the name fits in 64 bytes.
    Consul1_10,
}

impl CertNames {
    /// The common name of a new CA certificate (`primary`: a root, else a secondary
    /// datacenter's intermediate).
    pub fn ca(self, serial: u64, trust_domain: &TrustDomain, primary: bool) -> String {
        match self {
            CertNames::Consul1_4 => format!("Consul CA {serial}"),
            CertNames::Consul1_10 => {
                // Go's CompactUID: a random number in base 36, at most 8 characters.
                let uid = base36(rand::random::<u64>());
                let uid = &uid[..uid.len().min(8)];
                let kind = if primary { "pri" } else { "sec" };
                format!("{kind}-{uid}.consul.ca.{}.consul", td8(trust_domain))
            }
        }
    }

    /// The common name of a leaf for `id`.
    pub fn leaf(self, id: &ServiceId) -> String {
        match self {
            CertNames::Consul1_4 => id.service().to_owned(),
            CertNames::Consul1_10 => {
                let service: String = id
                    .service()
                    .to_ascii_lowercase()
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .collect();
                let (service, namespace) = shorten_service_and_namespace(&service, id.namespace());
                format!(
                    "{service}.svc.{namespace}.{}.consul",
                    td8(id.trust_domain())
                )
            }
        }
    }
}

fn td8(trust_domain: &TrustDomain) -> String {
    trust_domain.as_str().chars().take(8).collect()
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// Consul's cut of a service and namespace name to 43 bytes together (64 minus the rest of a
/// leaf's common name), each kept to at least 15 bytes when both are long.
pub(super) fn shorten_service_and_namespace<'a>(
    service: &'a str,
    namespace: &'a str,
) -> (&'a str, &'a str) {
    const MAX: usize = 43;
    const MIN: usize = 15;
    let cut = |s: &'a str, n: usize| {
        let end = (0..=n.min(s.len()))
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        &s[..end]
    };
    let (svc, ns) = (service.len(), namespace.len());
    if svc + ns <= MAX {
        return (service, namespace);
    }
    let remove = svc + ns - MAX;
    if svc <= MIN {
        return (service, cut(namespace, ns.saturating_sub(remove)));
    }
    if ns <= MIN {
        return (cut(service, svc.saturating_sub(remove)), namespace);
    }
    let (mut svc_to, mut ns_to) = (svc - remove / 2 - remove % 2, ns - remove / 2);
    if svc_to <= MIN {
        (svc_to, ns_to) = (MIN, MAX - MIN);
    } else if ns_to <= MIN {
        (svc_to, ns_to) = (MAX - MIN, MIN);
    }
    (cut(service, svc_to), cut(namespace, ns_to))
}
