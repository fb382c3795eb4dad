//! The recursive-descent parser: tokens (from [`crate::lex`]) to [`Expr`], or a
//! [`ParseError`] that says what was expected, what was found and where.

use std::fmt;

use crate::expr::{CmpOp, Expr, Node, Num, Operand, Prop, TextOp, cmp_num};
use crate::lex::{Kw, Tok, Token, lex};

/// Parentheses and NOTs nested deeper than this are refused: the parser recurses, and a
/// filter's stack is small. The canonical form (`Display`) is held to it too, so that it
/// always parses back.
const MAX_DEPTH: usize = 64;

/// Why an expression does not parse, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// What is wrong, e.g. `expected a value after '>', found 'AND'`.
    pub message: String,
    /// 1-based column (in characters) of the offending token.
    pub column: usize,
    /// Width of the offending token in characters (at least 1), for a caret line.
    pub width: usize,
    /// The whole expression.
    pub source: String,
}

impl fmt::Display for ParseError {
    /// `{message} at column {column}: {source}` on one line (control characters shown as
    /// spaces); the alternate form (`{:#}`) adds the source again with a caret line under
    /// the offending token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self
            .source
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        write!(f, "{} at column {}: {shown}", self.message, self.column)?;
        if f.alternate() {
            let pad = " ".repeat(self.column.saturating_sub(1));
            write!(f, "\n  {shown}\n  {pad}{}", "^".repeat(self.width.max(1)))?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseError {}

/// The error for the source's bytes `start..end`, with the column and width counted in
/// characters.
pub(crate) fn error(source: &str, start: usize, end: usize, message: String) -> ParseError {
    let column = source[..start].chars().count() + 1;
    let width = source[start..end].chars().count();
    ParseError {
        message,
        column,
        width,
        source: source.to_owned(),
    }
}

/// Parses a RocketMQ SQL92 expression (see the crate docs for the grammar).
pub fn parse(source: &str) -> Result<Expr, ParseError> {
    let tokens = lex(source)?;
    let mut p = Parser {
        source,
        tokens,
        pos: 0,
        depth: 0,
        names: Vec::new(),
    };
    if p.peek() == &Tok::End {
        return Err(p.error_at(0, "the expression is empty".to_owned()));
    }
    let node = p.parse_or()?;
    match p.peek() {
        // `NOT a = 1 AND b = 1` nests one level in the source but two in its canonical
        // form, `(NOT a = 1 AND b = 1)`, which must parse back.
        Tok::End if nesting(&node) > MAX_DEPTH => Err(p.error_at(
            0,
            format!("the expression nests deeper than {MAX_DEPTH} levels (AND and OR lists count as parenthesised)"),
        )),
        Tok::End => Ok(Expr {
            root: node,
            names: p.names.into(),
        }),
        Tok::RParen => Err(p.error_here("unexpected ')' with no '(' to close".to_owned())),
        _ => Err(p.error_here(format!(
            "expected AND, OR or the end of the expression after {}, found {}",
            p.describe(p.pos - 1),
            p.describe(p.pos)
        ))),
    }
}

struct Parser<'s> {
    source: &'s str,
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
    /// Distinct property names so far; a name's index is its slot.
    names: Vec<Box<str>>,
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        self.peek_at(self.pos)
    }

    fn peek_at(&self, i: usize) -> &Tok {
        // The lexer always ends the list with `End`; past it, keep answering `End`.
        self.tokens.get(i).map_or(&Tok::End, |t| &t.tok)
    }

    fn advance(&mut self) {
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
    }

    fn eat_kw(&mut self, kw: Kw) -> bool {
        if self.peek() == &Tok::Kw(kw) {
            self.advance();
            true
        } else {
            false
        }
    }

    fn text(&self, i: usize) -> &str {
        self.tokens
            .get(i)
            .map_or("", |t| &self.source[t.start..t.end])
    }

    /// A token as the user wrote it, quoted (long ones shortened).
    fn describe(&self, i: usize) -> String {
        if self.peek_at(i) == &Tok::End {
            return "the end of the expression".to_owned();
        }
        let text = self.text(i);
        let shown = if text.chars().count() > 40 {
            let head: String = text.chars().take(37).collect();
            format!("{head}...")
        } else {
            text.to_owned()
        };
        // String literals already carry their quotes.
        if matches!(self.peek_at(i), Tok::Str(_)) {
            shown
        } else {
            format!("'{shown}'")
        }
    }

    fn error_at(&self, i: usize, message: String) -> ParseError {
        let (start, end) = self
            .tokens
            .get(i)
            .map_or((self.source.len(), self.source.len()), |t| (t.start, t.end));
        error(self.source, start, end, message)
    }

    fn error_here(&self, message: String) -> ParseError {
        self.error_at(self.pos, message)
    }

    /// `expected {what} after '{previous token}', found {current token}`.
    fn expected(&self, what: &str) -> ParseError {
        let after = if self.pos == 0 {
            String::new()
        } else {
            format!(" after {}", self.describe(self.pos - 1))
        };
        self.error_here(format!(
            "expected {what}{after}, found {}",
            self.describe(self.pos)
        ))
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error_here(format!(
                "the expression nests deeper than {MAX_DEPTH} levels"
            )));
        }
        Ok(())
    }

    fn parse_or(&mut self) -> Result<Node, ParseError> {
        let first = self.parse_and()?;
        if self.peek() != &Tok::Kw(Kw::Or) {
            return Ok(first);
        }
        let mut items = Vec::new();
        push_flat(&mut items, first, false);
        while self.eat_kw(Kw::Or) {
            let next = self.parse_and()?;
            push_flat(&mut items, next, false);
        }
        Ok(Node::Or(items.into()))
    }

    fn parse_and(&mut self) -> Result<Node, ParseError> {
        let first = self.parse_not()?;
        if self.peek() != &Tok::Kw(Kw::And) {
            return Ok(first);
        }
        let mut items = Vec::new();
        push_flat(&mut items, first, true);
        while self.eat_kw(Kw::And) {
            let next = self.parse_not()?;
            push_flat(&mut items, next, true);
        }
        Ok(Node::And(items.into()))
    }

    fn parse_not(&mut self) -> Result<Node, ParseError> {
        if self.peek() == &Tok::Kw(Kw::Not) {
            self.enter()?;
            self.advance();
            let inner = self.parse_not()?;
            self.depth -= 1;
            return Ok(Node::Not(Box::new(inner)));
        }
        if self.peek() == &Tok::LParen {
            self.enter()?;
            let open = self.pos;
            self.advance();
            let inner = self.parse_or()?;
            if self.peek() != &Tok::RParen {
                let col = self.error_at(open, String::new()).column;
                return Err(self.expected(&format!("')' to close the '(' at column {col}")));
            }
            self.advance();
            self.depth -= 1;
            return Ok(inner);
        }
        self.parse_predicate()
    }

    /// A comparison (or a bare TRUE/FALSE): an operand, then an operator and its
    /// right-hand side.
    fn parse_predicate(&mut self) -> Result<Node, ParseError> {
        let left_at = self.pos;
        let left = self.parse_operand("a condition")?;
        let negated = self.peek() == &Tok::Kw(Kw::Not);
        if negated {
            // NOT here is the first half of NOT BETWEEN / NOT IN / NOT CONTAINS ...
            self.advance();
        }
        let op = self.peek().clone();
        match op {
            Tok::Eq | Tok::Ne | Tok::Lt | Tok::Le | Tok::Gt | Tok::Ge if !negated => {
                let op = match op {
                    Tok::Eq => CmpOp::Eq,
                    Tok::Ne => CmpOp::Ne,
                    Tok::Lt => CmpOp::Lt,
                    Tok::Le => CmpOp::Le,
                    Tok::Gt => CmpOp::Gt,
                    _ => CmpOp::Ge,
                };
                self.advance();
                let right_at = self.pos;
                let right = self.parse_operand("a value")?;
                if !matches!(op, CmpOp::Eq | CmpOp::Ne) {
                    self.check_orderable(&left, left_at)?;
                    self.check_orderable(&right, right_at)?;
                }
                Ok(Node::Cmp(op, left, right))
            }
            Tok::Kw(Kw::Between) => {
                self.advance();
                self.check_orderable(&left, left_at)?;
                let low_at = self.pos;
                let low = self.parse_operand("a lower bound")?;
                self.check_orderable(&low, low_at)?;
                if !self.eat_kw(Kw::And) {
                    return Err(self.expected("AND"));
                }
                let high_at = self.pos;
                let high = self.parse_operand("an upper bound")?;
                self.check_orderable(&high, high_at)?;
                if let (Operand::Num(l), Operand::Num(h)) = (&low, &high)
                    && cmp_num(*l, *h) == Some(std::cmp::Ordering::Greater)
                {
                    return Err(self.error_at(
                        low_at,
                        format!(
                            "BETWEEN's lower bound {low} is greater than its upper bound {high}"
                        ),
                    ));
                }
                Ok(Node::Between {
                    value: left,
                    low,
                    high,
                    negated,
                })
            }
            Tok::Kw(Kw::In) => {
                self.advance();
                let prop = self.property_only(left, left_at, "IN")?;
                if self.peek() != &Tok::LParen {
                    return Err(self.expected("'('"));
                }
                self.advance();
                let mut list: Vec<Box<str>> = Vec::new();
                loop {
                    match self.peek() {
                        Tok::Str(s) => list.push(s.as_str().into()),
                        Tok::Number | Tok::Minus | Tok::Plus | Tok::Kw(Kw::True | Kw::False) => {
                            return Err(self.error_here(format!(
                                "IN lists hold 'string' literals only (write '1', not 1), found {}",
                                self.describe(self.pos)
                            )));
                        }
                        _ => return Err(self.expected("a 'string' literal")),
                    }
                    self.advance();
                    match self.peek() {
                        Tok::Comma => self.advance(),
                        Tok::RParen => break,
                        _ => return Err(self.expected("',' or ')'")),
                    }
                }
                self.advance();
                list.sort_unstable();
                list.dedup();
                Ok(Node::In {
                    prop,
                    list: list.into(),
                    negated,
                })
            }
            Tok::Kw(kw @ (Kw::Contains | Kw::StartsWith | Kw::EndsWith)) => {
                let name = self.text(self.pos).to_ascii_uppercase();
                self.advance();
                let prop = self.property_only(left, left_at, &name)?;
                let needle = match self.peek() {
                    Tok::Str(s) if !s.is_empty() => s.as_str().into(),
                    Tok::Str(_) => {
                        return Err(self.error_here(format!("{name} needs a non-empty string")));
                    }
                    _ => return Err(self.expected("a 'string' literal")),
                };
                self.advance();
                let op = match kw {
                    Kw::Contains => TextOp::Contains,
                    Kw::StartsWith => TextOp::StartsWith,
                    _ => TextOp::EndsWith,
                };
                Ok(Node::Text {
                    op,
                    prop,
                    needle,
                    negated,
                })
            }
            Tok::Kw(Kw::Is) if !negated => {
                self.advance();
                let prop = self.property_only(left, left_at, "IS NULL")?;
                let negated = self.eat_kw(Kw::Not);
                if !self.eat_kw(Kw::Null) {
                    return Err(self.expected(if negated { "NULL" } else { "NULL or NOT NULL" }));
                }
                Ok(Node::IsNull { prop, negated })
            }
            _ if negated => Err(self.expected("BETWEEN, IN, CONTAINS, STARTSWITH or ENDSWITH")),
            _ => match left {
                Operand::Bool(b) => Ok(Node::Const(b)),
                Operand::Prop(_) => Err(self.expected(
                    "an operator (=, <>, <, <=, >, >=, BETWEEN, IN, IS NULL, CONTAINS, ...)",
                )),
                _ => Err(self.error_at(
                    left_at,
                    format!(
                        "a value on its own is not a condition: {} needs a comparison",
                        self.describe(left_at)
                    ),
                )),
            },
        }
    }

    /// One side of a comparison: a property name, a string, a (signed) number, TRUE or
    /// FALSE. `what` names it in the error when something else is there.
    fn parse_operand(&mut self, what: &str) -> Result<Operand, ParseError> {
        let operand = match self.peek().clone() {
            Tok::Ident => Operand::Prop(self.prop(self.pos)),
            Tok::Str(s) => Operand::Str(s.into()),
            Tok::Number => Operand::Num(self.number(false)?),
            Tok::Minus | Tok::Plus => {
                let negative = self.peek() == &Tok::Minus;
                self.advance();
                if self.peek() != &Tok::Number {
                    return Err(self.expected("a number"));
                }
                Operand::Num(self.number(negative)?)
            }
            Tok::Kw(Kw::True) => Operand::Bool(true),
            Tok::Kw(Kw::False) => Operand::Bool(false),
            Tok::Kw(Kw::Null) => {
                return Err(self
                    .error_here("NULL can only be tested with IS NULL or IS NOT NULL".to_owned()));
            }
            _ => return Err(self.expected(what)),
        };
        self.advance();
        Ok(operand)
    }

    /// The property named by the token at `i`, with its slot.
    fn prop(&mut self, i: usize) -> Prop {
        let name: Box<str> = self.text(i).into();
        let slot = match self.names.iter().position(|n| *n == name) {
            Some(slot) => slot,
            None => {
                self.names.push(name.clone());
                self.names.len() - 1
            }
        };
        Prop { name, slot }
    }

    /// The number token at `pos`, with a sign.
    fn number(&self, negative: bool) -> Result<Num, ParseError> {
        let text = self.text(self.pos);
        let is_float = text.contains(['.', 'e', 'E']);
        let out_of_range = || {
            self.error_here(format!(
                "number {}{text} is out of range",
                if negative { "-" } else { "" }
            ))
        };
        if is_float {
            let x: f64 = text.parse().map_err(|_| out_of_range())?;
            if !x.is_finite() {
                return Err(out_of_range());
            }
            Ok(Num::Float(if negative { -x } else { x }))
        } else {
            let digits = text.trim_end_matches(['l', 'L']);
            let magnitude: u64 = digits.parse().map_err(|_| out_of_range())?;
            let value = if negative {
                0_i64.checked_sub_unsigned(magnitude)
            } else {
                i64::try_from(magnitude).ok()
            };
            value.map(Num::Int).ok_or_else(out_of_range)
        }
    }

    /// RocketMQ only orders numbers: a string or boolean literal next to `<`, `>`, `<=`,
    /// `>=` or BETWEEN is an error at parse time.
    fn check_orderable(&self, operand: &Operand, at: usize) -> Result<(), ParseError> {
        match operand {
            Operand::Prop(_) | Operand::Num(_) => Ok(()),
            Operand::Str(_) | Operand::Bool(_) => Err(self.error_at(
                at,
                format!(
                    "{} cannot be ordered: <, <=, >, >= and BETWEEN compare numbers",
                    self.describe(at)
                ),
            )),
        }
    }

    fn property_only(&self, operand: Operand, at: usize, op: &str) -> Result<Prop, ParseError> {
        match operand {
            Operand::Prop(name) => Ok(name),
            _ => Err(self.error_at(
                at,
                format!(
                    "{op} applies to a property name, found {}",
                    self.describe(at)
                ),
            )),
        }
    }
}

/// Appends a condition to an AND (or OR) list, splicing in a nested list of the same kind.
/// How deep the canonical form nests: a level per NOT and per AND or OR list (which it
/// parenthesises), the levels the parser counts when it reads that form.
fn nesting(node: &Node) -> usize {
    match node {
        Node::Not(inner) => 1 + nesting(inner),
        Node::And(items) | Node::Or(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

fn push_flat(items: &mut Vec<Node>, node: Node, and: bool) {
    match node {
        Node::And(inner) if and => items.extend(inner),
        Node::Or(inner) if !and => items.extend(inner),
        other => items.push(other),
    }
}
