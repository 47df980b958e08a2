//! HCL text as the JSON value a config file in JSON would hold, for agent-sim's `--config-file`.

use super::{syntax_error, HclParser, Item, LitKind, Node, SyntaxError, MAX_NESTING};

/// Reads HCL text as the JSON value a config file in JSON would hold: `key = value` and
/// `key { … }` both give `"key": …`, labels nest (`service "web" { … }` gives
/// `"service": {"web": {…}}`), and a key given twice merges objects and keeps the later scalar.
pub(crate) fn hcl_to_json(text: &str) -> Result<serde_json::Value, SyntaxError> {
    let items = HclParser::new(text).parse()?;
    Ok(serde_json::Value::Object(object_json(&items, 0)?))
}

/// `depth` counts objects, lists and labels around `items`: labels nest too, and the parser
/// does not count them, so this keeps the result (and its recursive drop) within
/// [`MAX_NESTING`].
fn object_json(
    items: &[Item],
    depth: usize,
) -> Result<serde_json::Map<String, serde_json::Value>, SyntaxError> {
    let mut object = serde_json::Map::new();
    for item in items {
        let depth = depth + item.keys.len();
        if depth > MAX_NESTING {
            return Err(syntax_error(
                item.pos(),
                format!("nesting deeper than {MAX_NESTING} levels"),
            ));
        }
        // `a "b" "c" = v` is `a { b { c = v } }`.
        let mut value = node_json(&item.value, depth)?;
        for key in item.keys.iter().skip(1).rev() {
            value =
                serde_json::Value::Object(serde_json::Map::from_iter([(key.value.clone(), value)]));
        }
        if let Some(first) = item.keys.first() {
            merge_json(&mut object, first.value.clone(), value);
        }
    }
    Ok(object)
}

fn merge_json(
    object: &mut serde_json::Map<String, serde_json::Value>,
    key: String,
    value: serde_json::Value,
) {
    match (object.get_mut(&key), value) {
        (Some(serde_json::Value::Object(old)), serde_json::Value::Object(new)) => {
            for (k, v) in new {
                merge_json(old, k, v);
            }
        }
        (_, value) => {
            object.insert(key, value);
        }
    }
}

fn node_json(node: &Node, depth: usize) -> Result<serde_json::Value, SyntaxError> {
    Ok(match node {
        Node::Object { items, .. } => serde_json::Value::Object(object_json(items, depth)?),
        Node::List { elems, .. } => elems
            .iter()
            .map(|e| node_json(e, depth + 1))
            .collect::<Result<_, _>>()?,
        Node::Lit(lit) => match lit.kind {
            LitKind::Str | LitKind::Heredoc => serde_json::Value::String(lit.value.clone()),
            LitKind::Bool => serde_json::Value::Bool(lit.value == "true"),
            LitKind::Null => serde_json::Value::Null,
            // Integers as hcl reads them (`0x` hex, leading-zero octal), others with Rust's
            // float parsing, which rounds correctly as Go's strconv does (serde_json's default
            // parser can be one ulp off for long decimals). Integers too large for i64 (an
            // error in Go) are read as floats.
            LitKind::Number | LitKind::Float => (lit.kind == LitKind::Number)
                .then(|| go_int(&lit.value))
                .flatten()
                .map(serde_json::Value::from)
                .or_else(|| {
                    let float = lit.value.parse::<f64>().ok()?;
                    serde_json::Number::from_f64(float).map(serde_json::Value::Number)
                })
                .unwrap_or_else(|| serde_json::Value::String(lit.value.clone())),
        },
    })
}

/// Go's `strconv.ParseInt(s, 0, 64)`, which hcl applies to number tokens: an optional sign,
/// then `0x` hex, a leading `0` octal, or decimal.
fn go_int(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (radix, digits) = match digits.strip_prefix("0x").or(digits.strip_prefix("0X")) {
        Some(hex) => (16, hex),
        None if digits.len() > 1 && digits.starts_with('0') => (8, &digits[1..]),
        None => (10, digits),
    };
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i128::from_str_radix(digits, radix).ok()?;
    i64::try_from(if negative { -magnitude } else { magnitude }).ok()
}
