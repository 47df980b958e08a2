//! hashicorp/hcl v1 in miniature: an HCL reader and a JSON reader into one generic tree (hcl's
//! `ast`), as Consul 1.4 decodes ACL rules and its config files with it.
//!
//! [`crate::acl_rules`] decodes rules from the tree with Consul's texts; [`to_json`] turns it
//! into a JSON value for agent-sim's `--config-file`.

/// Deepest `{`/`[` nesting accepted. Real policies nest three levels; the readers recurse per
/// level and count it, so unbounded nesting cannot overflow the stack (found by fuzzing).
pub const MAX_NESTING: usize = 64;

/// A syntax error, where hcl reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    /// 1-based line.
    pub(crate) line: usize,
    /// 1-based column, in characters.
    pub(crate) column: usize,
    /// What is wrong, in hcl's words where it has them.
    pub(crate) message: String,
}

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

fn syntax_error(pos: Pos, message: String) -> SyntaxError {
    SyntaxError {
        line: pos.line,
        column: pos.column,
        message,
    }
}

// ---------------------------------------------------------------------------------------------
// The generic tree both readers produce (hashicorp/hcl's `ast` in miniature).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct Key {
    /// The key's value (strings unquoted).
    pub(crate) value: String,
    /// The key as written (strings with their quotes), for error texts.
    pub(crate) raw: String,
    pub(crate) pos: Pos,
}

#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub(crate) keys: Vec<Key>,
    pub(crate) value: Node,
}

impl Item {
    pub(crate) fn pos(&self) -> Pos {
        self.keys.first().map_or(self.value.pos(), |key| key.pos)
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Node {
    Object { items: Vec<Item>, pos: Pos },
    List { elems: Vec<Node>, pos: Pos },
    Lit(Lit),
}

impl Node {
    pub(crate) fn pos(&self) -> Pos {
        match self {
            Node::Object { pos, .. } | Node::List { pos, .. } => *pos,
            Node::Lit(lit) => lit.pos,
        }
    }

    /// The Go AST type name, as it appears in decoder errors.
    pub(crate) fn go_type(&self) -> &'static str {
        match self {
            Node::Object { .. } => "*ast.ObjectType",
            Node::List { .. } => "*ast.ListType",
            Node::Lit(_) => "*ast.LiteralType",
        }
    }

    /// As [`Node::pos`], for places where Go has already turned an object into its item list,
    /// whose position is its first item's.
    pub(crate) fn list_pos(&self) -> Pos {
        match self {
            Node::Object { items, pos } => items.first().map_or(*pos, Item::pos),
            other => other.pos(),
        }
    }

    /// As [`Node::go_type`], for places where Go has already turned an object into its item list.
    pub(crate) fn go_type_as_list(&self) -> &'static str {
        match self {
            Node::Object { .. } => "*ast.ObjectList",
            other => other.go_type(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Lit {
    pub(crate) kind: LitKind,
    /// Decoded value for strings and heredocs, the text as written for the rest.
    pub(crate) value: String,
    pub(crate) pos: Pos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LitKind {
    Str,
    Heredoc,
    Number,
    Float,
    Bool,
    Null,
}

// ---------------------------------------------------------------------------------------------
// HCL: scanner and parser after hashicorp/hcl v1 (`hcl/scanner/scanner.go`, `hcl/parser`).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Ident,
    Str,
    Heredoc,
    Number,
    Float,
    Bool,
    LBrace,
    RBrace,
    LBrack,
    RBrack,
    Comma,
    Assign,
    Period,
    Add,
    Sub,
    Illegal,
    Eof,
}

impl Tok {
    /// hashicorp/hcl's `token.Type` names, used in its error texts.
    fn go_name(self) -> &'static str {
        match self {
            Tok::Ident => "IDENT",
            Tok::Str => "STRING",
            Tok::Heredoc => "HEREDOC",
            Tok::Number => "NUMBER",
            Tok::Float => "FLOAT",
            Tok::Bool => "BOOL",
            Tok::LBrace => "LBRACE",
            Tok::RBrace => "RBRACE",
            Tok::LBrack => "LBRACK",
            Tok::RBrack => "RBRACK",
            Tok::Comma => "COMMA",
            Tok::Assign => "ASSIGN",
            Tok::Period => "PERIOD",
            Tok::Add => "ADD",
            Tok::Sub => "SUB",
            Tok::Illegal => "ILLEGAL",
            Tok::Eof => "EOF",
        }
    }

    fn lit_kind(self) -> Option<LitKind> {
        match self {
            Tok::Str => Some(LitKind::Str),
            Tok::Heredoc => Some(LitKind::Heredoc),
            Tok::Number => Some(LitKind::Number),
            Tok::Float => Some(LitKind::Float),
            Tok::Bool => Some(LitKind::Bool),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    pos: Pos,
    /// The token as written.
    text: String,
    /// The decoded value (strings and heredocs), else the text.
    value: String,
}

/// A parser error (hcl's `PosError`). Scanner errors are recorded on the [`Scanner`] instead.
#[derive(Debug)]
struct ParseError {
    pos: Pos,
    message: String,
}

impl ParseError {
    fn new(pos: Pos, message: impl Into<String>) -> ParseError {
        ParseError {
            pos,
            message: message.into(),
        }
    }
}

/// hcl's scanner. Like Go's, it records an error, recovers and goes on scanning. The parser
/// reports the last recorded error in place of its own result.
struct Scanner {
    chars: Vec<char>,
    i: usize,
    line: usize,
    column: usize,
    /// The last token ran into the end of input. Go's scanner then reports EOF one column further.
    overran: bool,
    error: Option<(Pos, &'static str)>,
}

impl Scanner {
    fn new(src: &str) -> Scanner {
        // hcl's `Parse` normalizes line endings first.
        Scanner {
            chars: src.replace("\r\n", "\n").chars().collect(),
            i: 0,
            line: 1,
            column: 1,
            overran: false,
            error: None,
        }
    }

    pub(crate) fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            column: self.column,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.i + ahead).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn text_from(&self, start: usize) -> String {
        self.chars[start..self.i].iter().collect()
    }

    /// Records a scanner error at `pos`. A later one replaces it, as in Go.
    fn scan_err(&mut self, pos: Pos, message: &'static str) {
        self.error = Some((pos, message));
    }

    fn next_token(&mut self) -> Token {
        self.skip_space_and_comments();
        let pos = self.pos();
        let start = self.i;
        let eof = |pos: Pos| Token {
            tok: Tok::Eof,
            pos,
            text: String::new(),
            value: String::new(),
        };
        let Some(c) = self.peek() else {
            let mut pos = pos;
            if self.overran {
                pos.column += 1;
            }
            return eof(pos);
        };
        let mut value = None;
        let tok = match c {
            c if is_letter(c) => {
                while self
                    .peek()
                    .is_some_and(|c| is_letter(c) || is_digit(c) || c == '-' || c == '.')
                {
                    self.bump();
                }
                self.overran = self.peek().is_none();
                match self.text_from(start).as_str() {
                    "true" | "false" => Tok::Bool,
                    _ => Tok::Ident,
                }
            }
            c if c.is_ascii_digit() => self.number(),
            '-' if self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) => {
                self.bump();
                self.number()
            }
            '"' => {
                self.bump();
                value = Some(self.string());
                Tok::Str
            }
            '<' => {
                value = Some(self.heredoc());
                Tok::Heredoc
            }
            '.' if self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) => {
                self.bump();
                self.digits();
                self.exponent();
                Tok::Float
            }
            '\0' => {
                // Go's scanner reads NUL as the end of input.
                self.scan_err(pos, "unexpected null character (0x00)");
                return eof(pos);
            }
            _ => {
                self.bump();
                match c {
                    '.' => Tok::Period,
                    '[' => Tok::LBrack,
                    ']' => Tok::RBrack,
                    '{' => Tok::LBrace,
                    '}' => Tok::RBrace,
                    ',' => Tok::Comma,
                    '=' => Tok::Assign,
                    '+' => Tok::Add,
                    '-' => Tok::Sub,
                    _ => {
                        self.scan_err(pos, "illegal char");
                        Tok::Illegal
                    }
                }
            }
        };
        let text = self.text_from(start);
        Token {
            tok,
            pos,
            value: value.unwrap_or_else(|| text.clone()),
            text,
        }
    }

    fn skip_space_and_comments(&mut self) {
        loop {
            match (self.peek(), self.peek_at(1)) {
                (Some(' ' | '\t' | '\n' | '\r'), _) => {
                    self.bump();
                }
                (Some('#'), _) | (Some('/'), Some('/')) => {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                }
                (Some('/'), Some('*')) => {
                    self.bump();
                    self.bump();
                    loop {
                        match (self.peek(), self.peek_at(1)) {
                            (Some('*'), Some('/')) => {
                                self.bump();
                                self.bump();
                                break;
                            }
                            (Some(_), _) => {
                                self.bump();
                            }
                            (None, _) => {
                                self.scan_err(self.pos(), "comment not terminated");
                                break;
                            }
                        }
                    }
                }
                (Some('/'), _) => {
                    // Go reports it and skips the lone slash as a comment.
                    self.scan_err(self.pos(), "expected '/' for comment");
                    self.bump();
                }
                _ => return,
            }
        }
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.bump();
        }
    }

    fn exponent(&mut self) -> bool {
        if !matches!(self.peek(), Some('e' | 'E')) {
            return false;
        }
        self.bump();
        if matches!(self.peek(), Some('+' | '-')) {
            self.bump();
        }
        self.digits();
        true
    }

    /// A number whose first digit is next (any sign already consumed).
    fn number(&mut self) -> Tok {
        if self.peek() == Some('0') && matches!(self.peek_at(1), Some('x' | 'X')) {
            self.bump();
            self.bump();
            let start = self.i;
            while self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                self.bump();
            }
            if self.i == start {
                self.scan_err(self.pos(), "illegal hexadecimal number");
            }
            self.overran = self.peek().is_none();
            return Tok::Number;
        }
        self.digits();
        let mut tok = Tok::Number;
        if self.peek() == Some('.') {
            self.bump();
            self.digits();
            tok = Tok::Float;
        }
        if self.exponent() {
            tok = Tok::Float;
        }
        self.overran = self.peek().is_none();
        tok
    }

    /// The rest of a `"…"` string (opening quote consumed); returns the unquoted value. Text
    /// inside `${…}` is kept as written, as hcl does. An unterminated string ends at the
    /// newline or the end of input.
    fn string(&mut self) -> String {
        let mut bytes = Vec::new();
        let mut braces = 0usize;
        loop {
            let pos = self.pos();
            let c = match self.bump() {
                Some('\n') if braces == 0 => {
                    self.scan_err(pos, "literal not terminated");
                    break;
                }
                None => {
                    self.scan_err(pos, "literal not terminated");
                    break;
                }
                Some(c) => c,
            };
            if braces == 0 {
                match c {
                    '"' => break,
                    '\\' => self.escape(&mut bytes),
                    '$' if self.peek() == Some('{') => {
                        self.bump();
                        braces = 1;
                        bytes.extend_from_slice(b"${");
                    }
                    c => push_char(&mut bytes, c),
                }
                continue;
            }
            push_char(&mut bytes, c);
            match c {
                '{' => braces += 1,
                '}' => braces -= 1,
                '\\' => {
                    if let Some(next) = self.bump() {
                        push_char(&mut bytes, next);
                    }
                }
                _ => {}
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// One escape after `\`: Go's set (`\a \b \f \n \r \t \v \\ \"`, octal `\NNN`, `\xNN`,
    /// `\uNNNN`, `\UNNNNNNNN`). Octal and `\x` escapes give bytes, as in Go.
    fn escape(&mut self, bytes: &mut Vec<u8>) {
        let pos = self.pos();
        let Some(c) = self.peek() else {
            return; // the string loop reports the missing end
        };
        self.bump();
        let simple = match c {
            'a' => Some(7),
            'b' => Some(8),
            'f' => Some(12),
            'n' => Some(b'\n'),
            'r' => Some(b'\r'),
            't' => Some(b'\t'),
            'v' => Some(11),
            '\\' => Some(b'\\'),
            '"' => Some(b'"'),
            _ => None,
        };
        if let Some(byte) = simple {
            bytes.push(byte);
            return;
        }
        let (radix, count, first) = match c {
            '0'..='7' => (8, 2, c.to_digit(8).unwrap_or(0)),
            'x' => (16, 2, 0),
            'u' => (16, 4, 0),
            'U' => (16, 8, 0),
            _ => return self.scan_err(pos, "illegal char escape"),
        };
        let mut value = first;
        for _ in 0..count {
            match self.peek().and_then(|c| c.to_digit(radix)) {
                Some(digit) => {
                    self.bump();
                    value = value * radix + digit;
                }
                None => return self.scan_err(self.pos(), "illegal char escape"),
            }
        }
        if matches!(c, '0'..='7' | 'x') {
            match u8::try_from(value) {
                Ok(byte) => bytes.push(byte),
                Err(_) => self.scan_err(pos, "illegal char escape"),
            }
        } else {
            match char::from_u32(value) {
                Some(c) => push_char(bytes, c),
                None => self.scan_err(pos, "illegal char escape"),
            }
        }
    }

    /// `<<ANCHOR` or `<<-ANCHOR`, a newline, lines, and a line holding only the anchor (after
    /// optional indentation) ended by a newline. Returns hcl's value for it: the lines, each
    /// followed by `\n`. With `<<-`, the terminator's indentation is removed from every line
    /// when every line has it.
    fn heredoc(&mut self) -> String {
        self.bump();
        if self.peek() != Some('<') {
            self.scan_err(self.pos(), "heredoc expected second '<', didn't see it");
            self.bump();
            return String::new();
        }
        self.bump();
        let indented = self.peek() == Some('-');
        if indented {
            self.bump();
        }
        let start = self.i;
        while self.peek().is_some_and(|c| is_letter(c) || is_digit(c)) {
            self.bump();
        }
        let anchor = self.text_from(start);
        match self.peek() {
            Some('\n') if !anchor.is_empty() => {}
            Some('\n') => {
                self.scan_err(self.pos(), "zero-length heredoc anchor");
                return String::new();
            }
            None => {
                self.scan_err(self.pos(), "heredoc not terminated");
                return String::new();
            }
            Some(_) => {
                self.scan_err(self.pos(), "invalid characters in heredoc anchor");
                self.bump();
                return String::new();
            }
        }
        self.bump();
        let mut lines: Vec<String> = Vec::new();
        let mut line = String::new();
        loop {
            match self.bump() {
                None => {
                    self.scan_err(self.pos(), "heredoc not terminated");
                    return String::new();
                }
                Some('\n') => {
                    let body = line.trim_start_matches(|c: char| c.is_ascii_whitespace());
                    if body.trim_end_matches('\r') == anchor {
                        let indent = &line[..line.len() - body.len()];
                        if indented && lines.iter().all(|l| l.starts_with(indent)) {
                            for l in &mut lines {
                                l.replace_range(..indent.len(), "");
                            }
                        }
                        return lines.iter().map(|l| format!("{l}\n")).collect();
                    }
                    lines.push(std::mem::take(&mut line));
                }
                Some(c) => line.push(c),
            }
        }
    }
}

fn push_char(bytes: &mut Vec<u8>, c: char) {
    let mut buf = [0; 4];
    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

fn is_letter(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || (!c.is_ascii() && c.is_alphabetic())
}

fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || (!c.is_ascii() && c.is_numeric())
}

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

// ---------------------------------------------------------------------------------------------
// JSON. A plain JSON reader into the same tree, then hcl's `flattenObjects`.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hcl_reads_as_the_json_a_config_file_would_hold() {
        let hcl = r#"
            # Consul 1.4 spelling, then the acl block
            acl_master_token = "root"
            acl {
              enabled = true
              default_policy = "deny"
              tokens { master = "m" }
            }
            acl { tokens { agent = "a" } }
            ports = { http = 8500 }
            ratio = 3333333333333333333333333333333333333333.333
            big = 99999999999999999999
            mode = 0755
            mask = 0x1F
            offset = -12
            retry_join = ["a", "b"]
            service "web" "v2" { port = 80.5 }
        "#;
        assert_eq!(
            hcl_to_json(hcl).unwrap(),
            serde_json::json!({
                "acl_master_token": "root",
                "acl": {"enabled": true, "default_policy": "deny", "tokens": {"master": "m", "agent": "a"}},
                "ports": {"http": 8500},
                "ratio": 3.333333333333333e39_f64,
                "big": 1e20_f64,
                "mode": 493,
                "mask": 31,
                "offset": -12,
                "retry_join": ["a", "b"],
                "service": {"web": {"v2": {"port": 80.5}}},
            })
        );
    }

    #[test]
    fn labels_count_as_nesting() {
        let deep = format!("a {} {{ x = 1 }}", "\"l\" ".repeat(100_000));
        let err = hcl_to_json(&deep).unwrap_err();
        assert_eq!(
            err.message,
            format!("nesting deeper than {MAX_NESTING} levels")
        );
        let ok = format!("a {} {{ x = 1 }}", "\"l\" ".repeat(MAX_NESTING - 2));
        assert!(hcl_to_json(&ok).is_ok());
    }

    #[test]
    fn hcl_syntax_errors_say_where() {
        let err = hcl_to_json("acl {\n  enabled = \n}").unwrap_err();
        assert_eq!((err.line, err.column), (3, 1), "{err:?}");
    }
}
