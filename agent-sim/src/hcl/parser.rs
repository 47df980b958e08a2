//! The HCL parser after hashicorp/hcl v1 (`hcl/parser`).

use super::scanner::{ParseError, Scanner, Tok, Token};
use super::{syntax_error, Item, Key, Lit, Node, Pos, SyntaxError, MAX_NESTING};

pub(crate) struct HclParser {
    scanner: Scanner,
    unscanned: Option<Token>,
    /// Objects and lists open around the current token.
    depth: usize,
}

impl HclParser {
    pub(crate) fn new(src: &str) -> HclParser {
        HclParser {
            scanner: Scanner::new(src),
            unscanned: None,
            depth: 0,
        }
    }

    /// Runs `nested` one level deeper, refusing to go past [`MAX_NESTING`].
    fn deeper<T>(
        &mut self,
        pos: Pos,
        nested: impl FnOnce(&mut Self) -> Result<T, ParseError>,
    ) -> Result<T, ParseError> {
        if self.depth >= MAX_NESTING {
            return Err(ParseError::new(
                pos,
                format!("nesting deeper than {MAX_NESTING} levels"),
            ));
        }
        self.depth += 1;
        let result = nested(self);
        self.depth -= 1;
        result
    }

    /// The items of the document. hcl reports a scanner error, the last one, in preference to
    /// anything the parser found.
    pub(crate) fn parse(mut self) -> Result<Vec<Item>, SyntaxError> {
        let parsed = self.object_list(false);
        if let Some((pos, message)) = self.scanner.error {
            return Err(syntax_error(pos, message.to_string()));
        }
        parsed.map_err(|err| syntax_error(err.pos, err.message))
    }

    fn scan(&mut self) -> Token {
        match self.unscanned.take() {
            Some(token) => token,
            None => self.scanner.next_token(),
        }
    }

    fn unscan(&mut self, token: Token) {
        self.unscanned = Some(token);
    }

    fn object_list(&mut self, in_object: bool) -> Result<Vec<Item>, ParseError> {
        let mut items = Vec::new();
        loop {
            if in_object {
                let token = self.scan();
                let end = token.tok == Tok::RBrace;
                self.unscan(token);
                if end {
                    break;
                }
            }
            match self.object_item()? {
                Some(item) => items.push(item),
                None => break,
            }
            // Items may be separated by a comma.
            let token = self.scan();
            if token.tok != Tok::Comma {
                self.unscan(token);
            }
        }
        Ok(items)
    }

    /// One `keys… = value` or `keys… { … }` item. `None` at the end of input.
    fn object_item(&mut self) -> Result<Option<Item>, ParseError> {
        let mut keys = Vec::new();
        let terminator = loop {
            let token = self.scan();
            match token.tok {
                Tok::Eof if keys.is_empty() => return Ok(None),
                Tok::Assign if keys.len() > 1 => {
                    return Err(ParseError::new(
                        token.pos,
                        "nested object expected: LBRACE got: ASSIGN",
                    ));
                }
                Tok::Assign if keys.is_empty() => {
                    return Err(ParseError::new(token.pos, "no object keys found!"));
                }
                Tok::LBrace if keys.is_empty() => {
                    return Err(ParseError::new(
                        token.pos,
                        "expected: IDENT | STRING got: LBRACE",
                    ));
                }
                // Keys followed by the end of the input or of the enclosing object fall
                // through to hcl's "expected start of object" error below.
                Tok::Assign | Tok::LBrace | Tok::Eof => break token,
                Tok::RBrace if !keys.is_empty() => break token,
                Tok::Ident | Tok::Str => keys.push(Key {
                    value: token.value,
                    raw: token.text,
                    pos: token.pos,
                }),
                Tok::Illegal => return Err(ParseError::new(token.pos, "illegal character")),
                other => {
                    return Err(ParseError::new(
                        token.pos,
                        format!(
                            "expected: IDENT | STRING | ASSIGN | LBRACE got: {}",
                            other.go_name()
                        ),
                    ));
                }
            }
        };
        let value = match terminator.tok {
            Tok::Assign => match self.object()? {
                Some(value) => value,
                // `key =` at the end of input: hcl drops the item and stops.
                None => return Ok(None),
            },
            Tok::LBrace => self.object_type(terminator.pos)?,
            _ => {
                let written: Vec<&str> = keys.iter().map(|key| key.raw.as_str()).collect();
                return Err(ParseError::new(
                    terminator.pos,
                    format!(
                        "key '{}' expected start of object ('{{') or assignment ('=')",
                        written.join(" ")
                    ),
                ));
            }
        };
        Ok(Some(Item { keys, value }))
    }

    /// The value after `=`. `None` at the end of input.
    fn object(&mut self) -> Result<Option<Node>, ParseError> {
        let token = self.scan();
        if let Some(kind) = token.tok.lit_kind() {
            return Ok(Some(Node::Lit(Lit {
                kind,
                value: token.value,
                pos: token.pos,
            })));
        }
        match token.tok {
            Tok::LBrace => Ok(Some(self.object_type(token.pos)?)),
            Tok::LBrack => Ok(Some(self.list_type(token.pos)?)),
            Tok::Eof => Ok(None),
            other => Err(ParseError::new(
                token.pos,
                // Go prints the token with `%+v`.
                format!(
                    "Unknown token: {{Type:{} Pos:{}:{} Text:{} JSON:false}}",
                    other.go_name(),
                    token.pos.line,
                    token.pos.column,
                    token.text
                ),
            )),
        }
    }

    /// The rest of `{ … }` (opening brace consumed).
    fn object_type(&mut self, lbrace: Pos) -> Result<Node, ParseError> {
        self.deeper(lbrace, |p| p.object_type_inner(lbrace))
    }

    fn object_type_inner(&mut self, lbrace: Pos) -> Result<Node, ParseError> {
        let items = self.object_list(true)?;
        let token = self.scan();
        if token.tok != Tok::RBrace {
            return Err(ParseError::new(
                token.pos,
                format!(
                    "object expected closing RBRACE got: {}",
                    token.tok.go_name()
                ),
            ));
        }
        Ok(Node::Object { items, pos: lbrace })
    }

    /// The rest of `[ … ]` (opening bracket consumed).
    fn list_type(&mut self, lbrack: Pos) -> Result<Node, ParseError> {
        self.deeper(lbrack, |p| p.list_type_inner(lbrack))
    }

    fn list_type_inner(&mut self, lbrack: Pos) -> Result<Node, ParseError> {
        let mut elems = Vec::new();
        let mut need_comma = false;
        loop {
            let token = self.scan();
            if need_comma && !matches!(token.tok, Tok::Comma | Tok::RBrack) {
                return Err(ParseError::new(
                    token.pos,
                    format!(
                        "error parsing list, expected comma or list end, got: {}",
                        token.tok.go_name()
                    ),
                ));
            }
            if let Some(kind) = token.tok.lit_kind() {
                elems.push(Node::Lit(Lit {
                    kind,
                    value: token.value,
                    pos: token.pos,
                }));
                need_comma = true;
                continue;
            }
            match token.tok {
                Tok::Comma => need_comma = false,
                Tok::LBrace => {
                    elems.push(self.nested(token.pos, "object", Self::object_type)?);
                    need_comma = true;
                }
                // hcl does not ask for a comma after a nested list.
                Tok::LBrack => elems.push(self.nested(token.pos, "list", Self::list_type)?),
                Tok::RBrack => return Ok(Node::List { elems, pos: lbrack }),
                other => {
                    return Err(ParseError::new(
                        token.pos,
                        format!("unexpected token while parsing list: {}", other.go_name()),
                    ));
                }
            }
        }
    }

    /// An object or list inside a list. hcl wraps the inner parse error in its own.
    fn nested(
        &mut self,
        open: Pos,
        what: &str,
        parse: fn(&mut HclParser, Pos) -> Result<Node, ParseError>,
    ) -> Result<Node, ParseError> {
        parse(self, open).map_err(|inner| {
            ParseError::new(
                open,
                format!(
                    "error while trying to parse {what} within list: At {}:{}: {}",
                    inner.pos.line, inner.pos.column, inner.message
                ),
            )
        })
    }
}
