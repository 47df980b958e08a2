//! Copying a parsed certificate's names and extensions into rcgen's form, so a cross-signed
//! root carries the other root's subject, SANs and key usages unchanged.

use std::net::IpAddr;

use rcgen::string::{Ia5String, PrintableString};
use rcgen::{
    DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, KeyUsagePurpose, SanType,
};
use x509_parser::asn1_rs::Tag;
use x509_parser::extensions::{GeneralName, KeyUsage};
use x509_parser::x509::X509Name;

/// Copies a parsed name into rcgen's form, keeping each attribute's string type so the
/// re-encoded name is byte-identical (path building compares names).
pub(super) fn distinguished_name(name: &X509Name<'_>) -> Result<DistinguishedName, String> {
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attributes = rdn.iter();
        let (Some(attribute), None) = (attributes.next(), attributes.next()) else {
            return Err("names with multi-valued RDNs are not supported".into());
        };
        let oid: Vec<u64> = attribute
            .attr_type()
            .iter()
            .ok_or_else(|| format!("name attribute {} is too large", attribute.attr_type()))?
            .collect();
        let ty = DnType::from_oid(&oid);
        if dn.get(&ty).is_some() {
            return Err(format!(
                "names repeating attribute {} are not supported",
                attribute.attr_type()
            ));
        }
        let text = std::str::from_utf8(attribute.as_slice())
            .map_err(|_| format!("name attribute {} is not text", attribute.attr_type()))?;
        let value = match attribute.attr_value().tag() {
            Tag::PrintableString => DnValue::PrintableString(
                PrintableString::try_from(text).map_err(|e| e.to_string())?,
            ),
            Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
            Tag::Ia5String => {
                DnValue::Ia5String(Ia5String::try_from(text).map_err(|e| e.to_string())?)
            }
            tag => {
                return Err(format!(
                    "name attribute {} has unsupported string type {tag}",
                    attribute.attr_type()
                ))
            }
        };
        dn.push(ty, value);
    }
    Ok(dn)
}

pub(super) fn key_usages(ku: &KeyUsage) -> Vec<KeyUsagePurpose> {
    [
        (ku.digital_signature(), KeyUsagePurpose::DigitalSignature),
        (ku.non_repudiation(), KeyUsagePurpose::ContentCommitment),
        (ku.key_encipherment(), KeyUsagePurpose::KeyEncipherment),
        (ku.data_encipherment(), KeyUsagePurpose::DataEncipherment),
        (ku.key_agreement(), KeyUsagePurpose::KeyAgreement),
        (ku.key_cert_sign(), KeyUsagePurpose::KeyCertSign),
        (ku.crl_sign(), KeyUsagePurpose::CrlSign),
        (ku.encipher_only(), KeyUsagePurpose::EncipherOnly),
        (ku.decipher_only(), KeyUsagePurpose::DecipherOnly),
    ]
    .into_iter()
    .filter_map(|(set, purpose)| set.then_some(purpose))
    .collect()
}

pub(super) fn extended_key_usages(
    eku: &x509_parser::extensions::ExtendedKeyUsage<'_>,
) -> Vec<ExtendedKeyUsagePurpose> {
    let mut out: Vec<ExtendedKeyUsagePurpose> = [
        (eku.any, ExtendedKeyUsagePurpose::Any),
        (eku.server_auth, ExtendedKeyUsagePurpose::ServerAuth),
        (eku.client_auth, ExtendedKeyUsagePurpose::ClientAuth),
        (eku.code_signing, ExtendedKeyUsagePurpose::CodeSigning),
        (
            eku.email_protection,
            ExtendedKeyUsagePurpose::EmailProtection,
        ),
        (eku.time_stamping, ExtendedKeyUsagePurpose::TimeStamping),
        (eku.ocsp_signing, ExtendedKeyUsagePurpose::OcspSigning),
    ]
    .into_iter()
    .filter_map(|(set, purpose)| set.then_some(purpose))
    .collect();
    out.extend(
        eku.other
            .iter()
            .filter_map(|oid| oid.iter())
            .map(|arcs| ExtendedKeyUsagePurpose::Other(arcs.collect())),
    );
    out
}

pub(super) fn san_type(name: &GeneralName<'_>) -> Result<SanType, String> {
    let ia5 = |s: &str| Ia5String::try_from(s).map_err(|e| e.to_string());
    Ok(match name {
        GeneralName::URI(uri) => SanType::URI(ia5(uri)?),
        GeneralName::DNSName(dns) => SanType::DnsName(ia5(dns)?),
        GeneralName::RFC822Name(email) => SanType::Rfc822Name(ia5(email)?),
        GeneralName::IPAddress(bytes) => SanType::IpAddress(match bytes.len() {
            4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).map_err(|e| e.to_string())?),
            16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).map_err(|e| e.to_string())?),
            n => return Err(format!("IP address SAN of {n} bytes")),
        }),
        other => return Err(format!("unsupported subject alternative name {other:?}")),
    })
}
