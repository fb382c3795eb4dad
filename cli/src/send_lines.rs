//! `weir send --lines`: one message per line of standard input, read and sent one at a
//! time (memory does not grow with the input). With `--json-lines` each line is a JSON
//! object giving that message's own key(s), tag, properties and body; the command line's
//! `--tag`, `--key` and `--prop` apply to every line as defaults the line can add to
//! (keys, properties) or replace (tag).

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use bytes::Bytes;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};

/// One line of `--json-lines` input.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JsonLine {
    /// One key.
    #[serde(default)]
    key: Option<String>,
    /// Several keys.
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    tag: Option<String>,
    /// Property values as strings.
    #[serde(default)]
    props: BTreeMap<String, String>,
    /// The body, as text.
    #[serde(default)]
    body: String,
}

/// What a line adds to the command line's settings.
#[derive(Debug, PartialEq, Eq)]
pub struct LineMessage {
    pub body: Bytes,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub props: Vec<(String, String)>,
}

/// Parses one `--json-lines` line (`n` is its 1-based number, for the error).
pub fn parse_json_line(line: &str, n: u64) -> anyhow::Result<LineMessage> {
    let parsed: JsonLine = serde_json::from_str(line).with_context(|| {
        format!(
            "line {n} of standard input is not a message object \
             ({{\"key\": …, \"keys\": […], \"tag\": …, \"props\": {{…}}, \"body\": …}})"
        )
    })?;
    let mut keys = parsed.keys;
    if let Some(k) = parsed.key {
        keys.insert(0, k);
    }
    if keys.iter().any(String::is_empty) {
        bail!("line {n} of standard input: a key is empty");
    }
    Ok(LineMessage {
        body: Bytes::from(parsed.body),
        tag: parsed.tag,
        keys,
        props: parsed.props.into_iter().collect(),
    })
}

/// Calls `send` for each line of standard input, in order, as it is read; stops at the
/// first error (what was sent before stays sent and printed). Blank lines are skipped with
/// `json` (a JSON line cannot be blank), kept as empty bodies without.
pub async fn for_each_line(
    json: bool,
    mut send: impl AsyncFnMut(LineMessage) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut n = 0u64;
    while let Some(line) = lines.next_line().await.context("reading standard input")? {
        n = n.saturating_add(1);
        let msg = if json {
            if line.trim().is_empty() {
                continue;
            }
            parse_json_line(&line, n)?
        } else {
            LineMessage {
                body: Bytes::from(line),
                tag: None,
                keys: Vec::new(),
                props: Vec::new(),
            }
        };
        send(msg).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_gives_its_own_key_tag_props_and_body() {
        let m = parse_json_line(
            r#"{"key": "order-1", "tag": "paid", "props": {"region": "eu"}, "body": "{\"n\":1}"}"#,
            1,
        )
        .unwrap();
        assert_eq!(m.keys, ["order-1"]);
        assert_eq!(m.tag.as_deref(), Some("paid"));
        assert_eq!(m.props, [("region".to_owned(), "eu".to_owned())]);
        assert_eq!(&m.body[..], br#"{"n":1}"#);
        let m = parse_json_line(r#"{"keys": ["a", "b"], "key": "k"}"#, 2).unwrap();
        assert_eq!(m.keys, ["k", "a", "b"]);
        assert!(m.body.is_empty() && m.tag.is_none());
    }

    #[test]
    fn bad_lines_are_refused_naming_the_line() {
        for (line, why) in [
            ("not json", "is not a message object"),
            (r#"{"body": "x", "colour": "red"}"#, "unknown field"),
            (r#"{"props": {"n": 1}}"#, "is not a message object"),
            (r#"{"key": ""}"#, "a key is empty"),
            ("[1, 2]", "is not a message object"),
        ] {
            let e = format!("{:#}", parse_json_line(line, 7).unwrap_err());
            assert!(e.contains("line 7") && e.contains(why), "{line}: {e}");
        }
    }
}
