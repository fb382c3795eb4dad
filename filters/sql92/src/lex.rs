//! The lexer: source text to tokens, each with its byte range for error columns.
//!
//! Invariant: the token list always ends with [`Tok::End`] at the end of the source; a
//! malformed literal or comment, or a character outside the grammar, is an error here, with
//! a hint where a common mistake is likely (`==`, `!=`, `&&`, double quotes).

use crate::parse::{ParseError, error};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Ident,
    /// A string literal, unescaped.
    Str(String),
    Number,
    Kw(Kw),
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    LParen,
    RParen,
    Comma,
    Minus,
    Plus,
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kw {
    And,
    Or,
    Not,
    Between,
    In,
    Is,
    Null,
    True,
    False,
    Contains,
    StartsWith,
    EndsWith,
}

const KEYWORDS: [(&str, Kw); 12] = [
    ("AND", Kw::And),
    ("OR", Kw::Or),
    ("NOT", Kw::Not),
    ("BETWEEN", Kw::Between),
    ("IN", Kw::In),
    ("IS", Kw::Is),
    ("NULL", Kw::Null),
    ("TRUE", Kw::True),
    ("FALSE", Kw::False),
    ("CONTAINS", Kw::Contains),
    ("STARTSWITH", Kw::StartsWith),
    ("ENDSWITH", Kw::EndsWith),
];

#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    /// Byte range in the source.
    pub(crate) start: usize,
    pub(crate) end: usize,
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '$'
}

fn is_ident_continue(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$' || c == '.'
}

pub(crate) fn lex(source: &str) -> Result<Vec<Token>, ParseError> {
    let bytes = source.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(c) = source[i..].chars().next() {
        let start = i;
        let next = bytes.get(i + 1).copied();
        let tok = match c {
            c if c.is_whitespace() => {
                i += c.len_utf8();
                continue;
            }
            '-' if next == Some(b'-') => {
                // A line comment, as in RocketMQ.
                i = source[i..].find('\n').map_or(source.len(), |n| i + n);
                continue;
            }
            '/' if next == Some(b'*') => {
                let Some(n) = source[i + 2..].find("*/") else {
                    return Err(error(
                        source,
                        i,
                        i + 2,
                        "unterminated comment (no closing */)".to_owned(),
                    ));
                };
                i += n + 4;
                continue;
            }
            '\'' => {
                let mut value = String::new();
                let mut j = i + 1;
                loop {
                    match source[j..].find('\'') {
                        None => {
                            return Err(error(
                                source,
                                i,
                                i + 1,
                                "unterminated string literal (no closing ')".to_owned(),
                            ));
                        }
                        Some(n) => {
                            value.push_str(&source[j..j + n]);
                            j += n + 1;
                            // '' inside a literal is one quote.
                            if bytes.get(j) == Some(&b'\'') {
                                value.push('\'');
                                j += 1;
                            } else {
                                break;
                            }
                        }
                    }
                }
                i = j;
                Tok::Str(value)
            }
            c if c.is_ascii_digit() || (c == '.' && next.is_some_and(|b| b.is_ascii_digit())) => {
                i = lex_number(source, i)?;
                Tok::Number
            }
            c if is_ident_start(c) => {
                i += source[i..]
                    .find(|c: char| !is_ident_continue(c))
                    .unwrap_or(source.len() - i);
                let word = &source[start..i];
                KEYWORDS
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(word))
                    .map_or(Tok::Ident, |(_, kw)| Tok::Kw(*kw))
            }
            '=' if next == Some(b'=') => {
                return Err(error(
                    source,
                    i,
                    i + 2,
                    "unexpected '==' (compare with a single =)".to_owned(),
                ));
            }
            '!' if next == Some(b'=') => {
                return Err(error(
                    source,
                    i,
                    i + 2,
                    "unexpected '!=' (not-equal is <>)".to_owned(),
                ));
            }
            '<' if next == Some(b'>') => {
                i += 2;
                Tok::Ne
            }
            '<' if next == Some(b'=') => {
                i += 2;
                Tok::Le
            }
            '>' if next == Some(b'=') => {
                i += 2;
                Tok::Ge
            }
            '=' | '<' | '>' | '(' | ')' | ',' | '-' | '+' => {
                i += 1;
                match c {
                    '=' => Tok::Eq,
                    '<' => Tok::Lt,
                    '>' => Tok::Gt,
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    ',' => Tok::Comma,
                    '-' => Tok::Minus,
                    _ => Tok::Plus,
                }
            }
            other => {
                let hint = match other {
                    '"' => " (string literals take single quotes: 'text')",
                    '&' => " (use AND)",
                    '|' => " (use OR)",
                    '!' => " (use NOT)",
                    _ => "",
                };
                return Err(error(
                    source,
                    i,
                    i + other.len_utf8(),
                    format!("unexpected character {other:?}{hint}"),
                ));
            }
        };
        tokens.push(Token { tok, start, end: i });
    }
    tokens.push(Token {
        tok: Tok::End,
        start: source.len(),
        end: source.len(),
    });
    Ok(tokens)
}

/// Scans a numeric literal: `12`, `12L`, `1.5`, `.5`, `5.`, `1e9`, `2.5E-3`. Returns the
/// end; a literal run into letters (`12ab`) is an error rather than two tokens.
fn lex_number(source: &str, start: usize) -> Result<usize, ParseError> {
    let b = source.as_bytes();
    let digits = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = digits(start);
    let mut integer = true;
    if b.get(i) == Some(&b'.') {
        integer = false;
        i = digits(i + 1);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
        if b.get(i + 1 + sign).is_some_and(u8::is_ascii_digit) {
            integer = false;
            i = digits(i + 1 + sign);
        }
    }
    if integer && matches!(b.get(i), Some(b'l' | b'L')) {
        i += 1;
    }
    let rest = source[i..]
        .find(|c: char| !is_ident_continue(c))
        .unwrap_or(source.len() - i);
    if rest > 0 {
        let end = i + rest;
        return Err(error(
            source,
            start,
            end,
            format!("malformed number '{}'", &source[start..end]),
        ));
    }
    Ok(i)
}
