//! JSON: a plain JSON reader into the same tree, then hcl's `flattenObjects`.

use super::scanner::Scanner;
use super::{syntax_error, Item, Key, Lit, LitKind, Node, Pos, SyntaxError, MAX_NESTING};

pub(crate) struct JsonParser {
    scanner: Scanner,
    /// Objects and arrays open around the current value.
    depth: usize,
}

impl JsonParser {
    pub(crate) fn new(src: &str) -> JsonParser {
        JsonParser {
            scanner: Scanner::new(src),
            depth: 0,
        }
    }

    /// Runs `nested` one level deeper, refusing to go past [`MAX_NESTING`].
    fn deeper<T>(
        &mut self,
        nested: impl FnOnce(&mut Self) -> Result<T, SyntaxError>,
    ) -> Result<T, SyntaxError> {
        if self.depth >= MAX_NESTING {
            return Err(self.err(format!("nesting deeper than {MAX_NESTING} levels")));
        }
        self.depth += 1;
        let result = nested(self);
        self.depth -= 1;
        result
    }

    fn err(&self, message: String) -> SyntaxError {
        syntax_error(self.scanner.pos(), message)
    }

    fn found(&self) -> String {
        match self.scanner.peek() {
            Some(c) => format!("{c:?}"),
            None => "end of input".to_string(),
        }
    }

    fn skip_space(&mut self) {
        while self.scanner.peek().is_some_and(|c| c.is_whitespace()) {
            self.scanner.bump();
        }
    }

    pub(crate) fn parse(mut self) -> Result<Vec<Item>, SyntaxError> {
        self.skip_space();
        if self.scanner.peek() != Some('{') {
            return Err(self.err(format!(
                "expected '{{' to start a JSON object, found {}",
                self.found()
            )));
        }
        self.scanner.bump();
        let items = self.object_body()?;
        self.skip_space();
        if self.scanner.peek().is_some() {
            return Err(self.err(format!("unexpected {} after the JSON object", self.found())));
        }
        Ok(items)
    }

    /// Members up to and including the closing `}` (opening brace consumed).
    fn object_body(&mut self) -> Result<Vec<Item>, SyntaxError> {
        let mut items = Vec::new();
        self.skip_space();
        if self.scanner.peek() == Some('}') {
            self.scanner.bump();
            return Ok(items);
        }
        loop {
            self.skip_space();
            let pos = self.scanner.pos();
            if self.scanner.peek() != Some('"') {
                return Err(self.err(format!(
                    "expected a string object key, found {}",
                    self.found()
                )));
            }
            let start = self.scanner.i;
            let key = self.string()?;
            let raw = self.scanner.text_from(start);
            self.skip_space();
            if self.scanner.peek() != Some(':') {
                return Err(self.err(format!(
                    "expected ':' after object key, found {}",
                    self.found()
                )));
            }
            self.scanner.bump();
            let value = self.value()?;
            items.push(Item {
                keys: vec![Key {
                    value: key,
                    raw,
                    pos,
                }],
                value,
            });
            self.skip_space();
            match self.scanner.peek() {
                Some(',') => {
                    self.scanner.bump();
                }
                Some('}') => {
                    self.scanner.bump();
                    return Ok(items);
                }
                _ => {
                    return Err(self.err(format!(
                        "expected ',' or '}}' in object, found {}",
                        self.found()
                    )))
                }
            }
        }
    }

    fn value(&mut self) -> Result<Node, SyntaxError> {
        self.skip_space();
        let pos = self.scanner.pos();
        let lit = |kind, value| Node::Lit(Lit { kind, value, pos });
        match self.scanner.peek() {
            Some('{') => {
                self.scanner.bump();
                Ok(Node::Object {
                    items: self.deeper(|p| p.object_body())?,
                    pos,
                })
            }
            Some('[') => {
                self.scanner.bump();
                self.deeper(|p| p.array(pos))
            }
            Some('"') => Ok(lit(LitKind::Str, self.string()?)),
            Some(c) if c == '-' || c.is_ascii_digit() => {
                let start = self.scanner.i;
                if c == '-' {
                    self.scanner.bump();
                }
                if !self.scanner.peek().is_some_and(|c| c.is_ascii_digit()) {
                    return Err(self.err(format!("expected a digit, found {}", self.found())));
                }
                self.scanner.digits();
                let mut kind = LitKind::Number;
                if self.scanner.peek() == Some('.') {
                    self.scanner.bump();
                    self.scanner.digits();
                    kind = LitKind::Float;
                }
                if self.scanner.exponent() {
                    kind = LitKind::Float;
                }
                Ok(lit(kind, self.scanner.text_from(start)))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.scanner.i;
                while self.scanner.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
                    self.scanner.bump();
                }
                let word = self.scanner.text_from(start);
                match word.as_str() {
                    "true" | "false" => Ok(lit(LitKind::Bool, word)),
                    "null" => Ok(lit(LitKind::Null, word)),
                    _ => Err(syntax_error(pos, format!("invalid JSON value {word:?}"))),
                }
            }
            _ => Err(self.err(format!("expected a JSON value, found {}", self.found()))),
        }
    }

    /// Elements up to and including `]` (opening bracket consumed).
    fn array(&mut self, pos: Pos) -> Result<Node, SyntaxError> {
        let mut elems = Vec::new();
        self.skip_space();
        if self.scanner.peek() == Some(']') {
            self.scanner.bump();
            return Ok(Node::List { elems, pos });
        }
        loop {
            elems.push(self.value()?);
            self.skip_space();
            match self.scanner.peek() {
                Some(',') => {
                    self.scanner.bump();
                }
                Some(']') => {
                    self.scanner.bump();
                    return Ok(Node::List { elems, pos });
                }
                _ => {
                    return Err(self.err(format!(
                        "expected ',' or ']' in array, found {}",
                        self.found()
                    )))
                }
            }
        }
    }

    /// A JSON string (at its opening quote); returns the unescaped value.
    fn string(&mut self) -> Result<String, SyntaxError> {
        self.scanner.bump();
        let mut out = String::new();
        loop {
            let pos = self.scanner.pos();
            match self.scanner.bump() {
                None => return Err(syntax_error(pos, "string not terminated".to_string())),
                Some('"') => return Ok(out),
                Some('\\') => {
                    let pos = self.scanner.pos();
                    let c = match self.scanner.bump() {
                        Some('"') => '"',
                        Some('\\') => '\\',
                        Some('/') => '/',
                        Some('b') => '\u{8}',
                        Some('f') => '\u{c}',
                        Some('n') => '\n',
                        Some('r') => '\r',
                        Some('t') => '\t',
                        Some('u') => self.unicode_escape(pos)?,
                        _ => {
                            return Err(syntax_error(
                                pos,
                                "invalid escape in JSON string".to_string(),
                            ))
                        }
                    };
                    out.push(c);
                }
                Some(c) if (c as u32) < 0x20 => {
                    return Err(syntax_error(
                        pos,
                        format!("invalid character {c:?} in JSON string"),
                    ));
                }
                Some(c) => out.push(c),
            }
        }
    }

    /// After `\u`: four hex digits, and a low surrogate escape when the first is a high one.
    fn unicode_escape(&mut self, pos: Pos) -> Result<char, SyntaxError> {
        let high = self.hex4(pos)?;
        let code = if (0xD800..0xDC00).contains(&high) {
            if self.scanner.peek() != Some('\\') || self.scanner.peek_at(1) != Some('u') {
                return Err(syntax_error(
                    pos,
                    "unpaired surrogate in JSON string".to_string(),
                ));
            }
            self.scanner.bump();
            self.scanner.bump();
            let low = self.hex4(pos)?;
            if !(0xDC00..0xE000).contains(&low) {
                return Err(syntax_error(
                    pos,
                    "unpaired surrogate in JSON string".to_string(),
                ));
            }
            0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
        } else {
            high
        };
        char::from_u32(code)
            .ok_or_else(|| syntax_error(pos, "invalid \\u escape in JSON string".to_string()))
    }

    fn hex4(&mut self, pos: Pos) -> Result<u32, SyntaxError> {
        let mut value = 0;
        for _ in 0..4 {
            match self.scanner.peek().and_then(|c| c.to_digit(16)) {
                Some(digit) => {
                    self.scanner.bump();
                    value = value * 16 + digit;
                }
                None => {
                    return Err(syntax_error(
                        pos,
                        "invalid \\u escape in JSON string".to_string(),
                    ))
                }
            }
        }
        Ok(value)
    }
}

/// hcl's `flattenObjects` for JSON input. An item whose value is a non-empty object of objects
/// becomes one item per member, with the member key appended (`"service": {"web": {…}}` reads as
/// `service "web" {…}`). An item whose value is a non-empty list of objects becomes one item
/// per element. This repeats, and applies at every depth.
pub(crate) fn flatten_json(items: &mut Vec<Item>) {
    let mut flat = Vec::with_capacity(items.len());
    for item in items.drain(..) {
        flatten_item(item, &mut flat);
    }
    for item in &mut flat {
        flatten_node(&mut item.value);
    }
    *items = flat;
}

fn flatten_node(node: &mut Node) {
    match node {
        Node::Object { items, .. } => flatten_json(items),
        Node::List { elems, .. } => elems.iter_mut().for_each(flatten_node),
        Node::Lit(_) => {}
    }
}

fn flatten_item(item: Item, out: &mut Vec<Item>) {
    let is_object = |node: &Node| matches!(node, Node::Object { .. });
    match item.value {
        Node::Object { items, .. }
            if !items.is_empty() && items.iter().all(|sub| is_object(&sub.value)) =>
        {
            for sub in items {
                let keys = item.keys.iter().cloned().chain(sub.keys).collect();
                flatten_item(
                    Item {
                        keys,
                        value: sub.value,
                    },
                    out,
                );
            }
        }
        Node::List { elems, .. } if !elems.is_empty() && elems.iter().all(is_object) => {
            for elem in elems {
                flatten_item(
                    Item {
                        keys: item.keys.clone(),
                        value: elem,
                    },
                    out,
                );
            }
        }
        value => out.push(Item {
            keys: item.keys,
            value,
        }),
    }
}
