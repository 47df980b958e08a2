//! PEM decoding and encoding as Go's `encoding/pem` does it.

use std::io::Cursor;

use x509_parser::pem::Pem;

/// The first PEM block of `text`, or `None` when there is none or it does not decode (Go's
/// `pem.Decode` returns no block in both cases).
pub(super) fn first_pem_block(text: &str) -> Option<Pem> {
    Pem::read(Cursor::new(text.as_bytes()))
        .ok()
        .map(|(pem, _)| pem)
}

/// PEM-encodes `der` as Go's `pem.Encode` does: 64-column base64 lines, trailing newline.
pub(super) fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = format!("-----BEGIN {label}-----\n");
    let mut column = 0;
    for chunk in der.chunks(3) {
        let bytes = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let group = u32::from(bytes[0]) << 16 | u32::from(bytes[1]) << 8 | u32::from(bytes[2]);
        for i in 0..4 {
            // A chunk of n bytes yields n + 1 significant characters, then padding.
            let c = if i <= chunk.len() {
                char::from(ALPHABET[(group >> (18 - 6 * i)) as usize & 0x3f])
            } else {
                '='
            };
            out.push(c);
            column += 1;
            if column == 64 {
                out.push('\n');
                column = 0;
            }
        }
    }
    if column != 0 {
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
