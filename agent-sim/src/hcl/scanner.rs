//! The scanner both readers share, after hashicorp/hcl v1 (`hcl/scanner/scanner.go`).

use super::{LitKind, Pos};

/// hcl's scanner. Like Go's, it records an error, recovers and goes on scanning. The parser
/// reports the last recorded error in place of its own result.
pub(super) struct Scanner {
    chars: Vec<char>,
    pub(super) i: usize,
    line: usize,
    column: usize,
    /// The last token ran into the end of input. Go's scanner then reports EOF one column further.
    overran: bool,
    pub(super) error: Option<(Pos, &'static str)>,
}

impl Scanner {
    pub(super) fn new(src: &str) -> Scanner {
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

    pub(super) fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    pub(super) fn peek_at(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.i + ahead).copied()
    }

    pub(super) fn bump(&mut self) -> Option<char> {
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

    pub(super) fn text_from(&self, start: usize) -> String {
        self.chars[start..self.i].iter().collect()
    }

    /// Records a scanner error at `pos`. A later one replaces it, as in Go.
    fn scan_err(&mut self, pos: Pos, message: &'static str) {
        self.error = Some((pos, message));
    }

    pub(super) fn next_token(&mut self) -> Token {
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

    pub(super) fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.bump();
        }
    }

    pub(super) fn exponent(&mut self) -> bool {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tok {
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
    pub(super) fn go_name(self) -> &'static str {
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

    pub(super) fn lit_kind(self) -> Option<LitKind> {
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
pub(super) struct Token {
    pub(super) tok: Tok,
    pub(super) pos: Pos,
    /// The token as written.
    pub(super) text: String,
    /// The decoded value (strings and heredocs), else the text.
    pub(super) value: String,
}

/// A parser error (hcl's `PosError`). Scanner errors are recorded on the [`Scanner`] instead.
#[derive(Debug)]
pub(super) struct ParseError {
    pub(super) pos: Pos,
    pub(super) message: String,
}

impl ParseError {
    pub(super) fn new(pos: Pos, message: impl Into<String>) -> ParseError {
        ParseError {
            pos,
            message: message.into(),
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
