//! hashicorp/hcl v1 in miniature: an HCL reader and a JSON reader into one generic tree (hcl's
//! `ast`), as Consul 1.4 decodes ACL rules and its config files with it.
//!
//! [`crate::acl_rules`] decodes rules from the tree with Consul's texts; [`to_json`] turns it
//! into a JSON value for agent-sim's `--config-file`.

mod json;
mod parser;
mod scanner;
mod to_json;

pub(crate) use json::{flatten_json, JsonParser};
pub(crate) use parser::HclParser;
pub(crate) use to_json::hcl_to_json;

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

fn syntax_error(pos: Pos, message: String) -> SyntaxError {
    SyntaxError {
        line: pos.line,
        column: pos.column,
        message,
    }
}

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

#[cfg(test)]
mod tests;
