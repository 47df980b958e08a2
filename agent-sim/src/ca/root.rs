//! Root certificates as Consul's roots API reports them, and reading certificates.

use aws_lc_rs::digest;
use consul_connect_types::api::colon_hex;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::pem::{first_pem_block, pem_encode};
use super::CaError;

/// A root certificate with the values Consul's roots API reports about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootCert {
    /// The certificate as one PEM block (64-column lines, trailing newline).
    pub pem: String,
    /// The certificate DER.
    pub der: Vec<u8>,
    /// The certificate serial number.
    pub serial: u64,
    /// Consul's root ID: colon hex of the SHA-1 of the DER.
    pub id: String,
    /// Colon hex of the root's Subject Key Identifier; leaves it signs carry it as their AKI.
    pub signing_key_id: String,
    /// NotBefore.
    pub not_before: OffsetDateTime,
    /// NotAfter.
    pub not_after: OffsetDateTime,
}

impl RootCert {
    /// Reads a root from the first PEM block of `pem`, which must be a `CERTIFICATE` with a
    /// Subject Key Identifier and a serial number that fits in 64 bits.
    pub fn from_pem(pem: &str) -> Result<RootCert, CaError> {
        let block =
            first_pem_block(pem).ok_or_else(|| invalid_root("no PEM-encoded data found"))?;
        if block.label != "CERTIFICATE" {
            return Err(invalid_root("first PEM-block should be CERTIFICATE type"));
        }
        RootCert::from_der(block.contents)
    }

    pub(super) fn from_der(der: Vec<u8>) -> Result<RootCert, CaError> {
        let (serial, ski, not_before, not_after) = {
            let cert = parse_certificate(&der).map_err(invalid_root)?;
            let serial = serial_u64(cert.raw_serial()).ok_or_else(|| {
                invalid_root(format!(
                    "serial number {} does not fit in 64 bits",
                    cert.raw_serial_as_string()
                ))
            })?;
            let ski = subject_key_id(&cert)
                .ok_or_else(|| invalid_root("certificate has no Subject Key Identifier"))?;
            (
                serial,
                ski,
                cert.validity().not_before.to_datetime(),
                cert.validity().not_after.to_datetime(),
            )
        };
        let sha1 = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
        Ok(RootCert {
            pem: pem_encode("CERTIFICATE", &der),
            id: colon_hex(sha1.as_ref()),
            signing_key_id: colon_hex(&ski),
            serial,
            not_before,
            not_after,
            der,
        })
    }
}

pub(super) fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing data after the certificate".into()),
        Err(e) => Err(format!("x509: {e}")),
    }
}

pub(super) fn invalid_root(reason: impl Into<String>) -> CaError {
    CaError::InvalidRootCert {
        reason: reason.into(),
    }
}

/// A DER INTEGER's content as u64, if it is non-negative and fits.
fn serial_u64(raw: &[u8]) -> Option<u64> {
    if raw.first().is_some_and(|b| b & 0x80 != 0) {
        return None;
    }
    let first = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let digits = &raw[first..];
    if digits.len() > 8 {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, b| n << 8 | u64::from(*b)))
}

pub(super) fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
}

pub(super) fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some((*uri).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}
