//! How agent-sim reads requests and writes answers as Consul does: query strings, JSON bodies
//! (Go's encoding and error texts), field names in any case.

use super::*;

/// `X-Consul-Effective-Consistency` for a read: `consistent`, `stale` or `leader`.
pub fn effective_consistency(query: &Query) -> &'static str {
    if query.has("consistent") {
        "consistent"
    } else if query.has("stale") {
        "stale"
    } else {
        "leader"
    }
}

/// The query string, with Consul's presence flags (`?passing`, `?stale`) kept.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub(super) fn from_uri(uri: &Uri) -> Self {
        let pairs = uri
            .query()
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Self { pairs }
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All values of `key`.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `key` is present (with any value or none).
    pub fn has(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    /// A boolean flag: present bare, or with a true-ish value.
    pub fn flag(&self, key: &str) -> bool {
        match self.get(key) {
            None => false,
            Some(v) => !matches!(v, "false" | "0"),
        }
    }

    /// `?pretty`.
    pub fn pretty(&self) -> bool {
        self.has("pretty")
    }

    /// `?index=` and `?wait=`, checked as Consul checks them.
    pub fn blocking(&self) -> Result<Option<Blocking>, ApiError> {
        if self.has("stale") && self.has("consistent") {
            return Err(ApiError::BadRequest(
                "Cannot specify ?stale with ?consistent, conflicting semantics.".into(),
            ));
        }
        if self.has("cached") && self.has("consistent") {
            return Err(ApiError::BadRequest(
                "Cannot specify ?cached with ?consistent, conflicting semantics.".into(),
            ));
        }
        let wait = match self.get("wait") {
            None => None,
            Some(w) => Some(
                consul_connect_types::go::parse_duration(w)
                    .map_err(|_| ApiError::BadRequest("Invalid wait time".into()))?,
            ),
        };
        let min_index = match self.get("index") {
            None => return Ok(None),
            Some(i) => i
                .parse::<u64>()
                .map_err(|_| ApiError::BadRequest("Invalid index".into()))?,
        };
        let wait = wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT);
        // Consul adds up to wait/16 of jitter so that many watchers do not return together.
        let jitter = match wait.as_nanos() as u64 / 16 {
            0 => Duration::ZERO,
            max => Duration::from_nanos(rand::rng().random_range(0..max)),
        };
        Ok(Some(Blocking {
            min_index,
            wait: wait + jitter,
        }))
    }

    /// Checks `?dc=` against the agent's datacenter.
    pub fn datacenter(&self, store: &Store) -> Result<(), ApiError> {
        match self.get("dc") {
            Some(dc) if !dc.is_empty() && dc != store.settings().datacenter => {
                Err(ApiError::Internal("No path to datacenter".into()))
            }
            _ => Ok(()),
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Query {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        // The front middleware has already parsed it for its own checks.
        Ok(parts
            .extensions
            .remove::<Query>()
            .unwrap_or_else(|| Query::from_uri(&parts.uri)))
    }
}

/// Serializes `value` as Go's encoder does: `<`, `>`, `&`, U+2028 and U+2029 escaped; with
/// `?pretty`, four-space indents and a final newline.
pub fn json_body<T: Serialize>(value: &T, pretty: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let written = if pretty {
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        value.serialize(&mut ser)
    } else {
        serde_json::to_writer(&mut out, value)
    };
    if written.is_err() {
        // Our own types always serialize; answer an empty body rather than panic.
        return Vec::new();
    }
    if pretty {
        out.push(b'\n');
    }
    escape_like_go(out)
}

/// Escapes `<`, `>`, `&`, U+2028 and U+2029 as Go's JSON encoder does. They can only appear
/// inside JSON strings, so escaping bytes is exact; one pass, and no copy when there is none.
pub(super) fn escape_like_go(json: Vec<u8>) -> Vec<u8> {
    // 0xE2 leads the UTF-8 encodings of U+2028 (E2 80 A8) and U+2029 (E2 80 A9).
    let special = |b: &u8| matches!(b, b'<' | b'>' | b'&' | 0xE2);
    let Some(first) = json.iter().position(special) else {
        return json;
    };
    let mut out = Vec::with_capacity(json.len() + 16);
    out.extend_from_slice(&json[..first]);
    let mut rest = &json[first..];
    while let Some(at) = rest.iter().position(special) {
        out.extend_from_slice(&rest[..at]);
        let (escaped, len): (&[u8], usize) = match &rest[at..] {
            [b'<', ..] => (b"\\u003c", 1),
            [b'>', ..] => (b"\\u003e", 1),
            [b'&', ..] => (b"\\u0026", 1),
            [0xE2, 0x80, 0xA8, ..] => (b"\\u2028", 3),
            [0xE2, 0x80, 0xA9, ..] => (b"\\u2029", 3),
            [other, ..] => (std::slice::from_ref(other), 1),
            [] => break,
        };
        out.extend_from_slice(escaped);
        rest = &rest[at + len..];
    }
    out.extend_from_slice(rest);
    out
}

/// A JSON answer with optional Consul headers.
pub struct Json<'q> {
    body: Vec<u8>,
    headers: HeaderMap,
    _query: std::marker::PhantomData<&'q ()>,
}

impl<'q> Json<'q> {
    /// `value` as JSON, pretty if the query asked.
    pub fn new<T: Serialize>(value: &T, query: &'q Query) -> Self {
        Self {
            body: json_body(value, query.pretty()),
            headers: HeaderMap::new(),
            _query: std::marker::PhantomData,
        }
    }

    /// Adds `X-Consul-Index`, `X-Consul-KnownLeader: true` and `X-Consul-LastContact: 0`.
    pub fn meta(self, index: u64) -> Self {
        self.index(index)
            .header("X-Consul-KnownLeader", "true")
            .header("X-Consul-LastContact", "0")
    }

    /// Adds `X-Consul-Index` only.
    pub fn index(self, index: u64) -> Self {
        self.header("X-Consul-Index", &index.max(1).to_string())
    }

    /// Adds `X-Cache: HIT` with `Age: 0`, or `X-Cache: MISS`.
    pub fn cache(self, hit: bool) -> Self {
        if hit {
            self.header("X-Cache", "HIT").header("Age", "0")
        } else {
            self.header("X-Cache", "MISS")
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.insert(name, value);
        }
        self
    }
}

impl IntoResponse for Json<'_> {
    fn into_response(self) -> Response {
        let mut resp = Response::new(Body::from(self.body));
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.extend(self.headers);
        resp
    }
}

/// Go's JSON decoding matches field names case-insensitively; serde does not. Renames the
/// keys of `value` (recursively, but not inside free-form maps such as `Meta`) that match one
/// of `fields` ignoring case and underscores.
pub fn canonical_keys(mut value: serde_json::Value, fields: &[&str]) -> serde_json::Value {
    const FREE_FORM: &[&str] = &["Meta", "NodeMeta", "Config", "TaggedAddresses"];
    match &mut value {
        serde_json::Value::Object(map) => {
            let old = std::mem::take(map);
            for (key, v) in old {
                let key = fields
                    .iter()
                    .find(|f| same_field(f, &key))
                    .map_or(key, |f| (*f).to_owned());
                let v = if FREE_FORM.contains(&key.as_str()) {
                    v
                } else {
                    canonical_keys(v, fields)
                };
                map.insert(key, v);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items.iter_mut() {
                *item = canonical_keys(std::mem::take(item), fields);
            }
        }
        _ => {}
    }
    value
}

/// `SidecarService` matches `sidecarservice` and `sidecar_service` (Consul translates the
/// snake-case names its HCL and some clients use).
pub(super) fn same_field(canonical: &str, key: &str) -> bool {
    let mut key_chars = key.chars().filter(|c| *c != '_');
    let mut canon_chars = canonical.chars();
    loop {
        match (canon_chars.next(), key_chars.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(&b) => {}
            _ => return false,
        }
    }
}

/// Decodes a JSON body with Go's error texts for the common failures (`EOF` for an empty
/// body, `unexpected EOF` for a truncated one).
pub fn decode_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    fields: &[&str],
) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("EOF".into());
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(go_json_error)?;
    serde_json::from_value(canonical_keys(value, fields)).map_err(|e| format!("json: {e}"))
}

pub(super) fn go_json_error(e: serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Eof => "unexpected EOF".into(),
        _ => format!("invalid character: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::escape_like_go;

    #[test]
    fn escapes_as_go_does_and_leaves_the_rest() {
        let cases = [
            ("{\"a\":1}", "{\"a\":1}"),
            ("web => db", "web =\\u003e db"),
            ("<&>", "\\u003c\\u0026\\u003e"),
            ("a\u{2028}b\u{2029}c", "a\\u2028b\\u2029c"),
            // Other characters led by 0xE2 stay as they are.
            ("5 € – ok", "5 € – ok"),
            ("ends with \u{2029}", "ends with \\u2029"),
        ];
        for (input, want) in cases {
            let got = escape_like_go(input.as_bytes().to_vec());
            assert_eq!(String::from_utf8(got).unwrap(), want, "{input:?}");
        }
    }
}
