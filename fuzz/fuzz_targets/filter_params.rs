//! Upload parameters: a client's `(name, value)` pairs reach each filter's `init` (and the
//! SDK's parameter helpers); a filter that accepts them then decides messages whose
//! attributes are arbitrary bytes. Nothing panics. (The SQL92 expression parser has its
//! own target.)

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weir_filter_sdk::{Filter, Message, Params};

#[derive(Arbitrary, Debug)]
enum Pick {
    Sql92,
    BodyRegex,
    JsonField,
    KeySample,
    KeepAll,
}

/// The names the filters know, so the fuzzer reaches past `allow_only`.
#[derive(Arbitrary, Debug)]
enum Name {
    Expr,
    Pattern,
    Invert,
    Path,
    Op,
    Value,
    N,
    Seed,
    Key,
    Missing,
    Other(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Name::Expr => "expr",
            Name::Pattern => "pattern",
            Name::Invert => "invert",
            Name::Path => "path",
            Name::Op => "op",
            Name::Value => "value",
            Name::N => "n",
            Name::Seed => "seed",
            Name::Key => "key",
            Name::Missing => "missing",
            Name::Other(s) => s,
        }
        .to_owned()
    }
}

#[derive(Arbitrary, Debug)]
struct Msg {
    queue_offset: u64,
    /// Raw attribute bytes: usually malformed, which `decode` refuses.
    raw: Option<Vec<u8>>,
    tags: String,
    keys: Vec<String>,
    properties: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    pick: Pick,
    params: Vec<(Name, String)>,
    messages: Vec<Msg>,
}

fn attributes(m: &Msg) -> Vec<u8> {
    if let Some(raw) = &m.raw {
        return raw.clone();
    }
    weir_filter_sdk::testing::TestMessage {
        tags: m.tags.clone(),
        keys: m.keys.clone(),
        properties: m.properties.clone(),
        ..Default::default()
    }
    .attributes()
}

fn run<F: Filter>(params: &Params, messages: &[Msg]) {
    let Ok(mut filter) = F::init(params) else {
        return;
    };
    let attrs: Vec<Vec<u8>> = messages.iter().map(attributes).collect();
    for (m, a) in messages.iter().zip(&attrs) {
        if let Some(msg) = Message::decode(m.queue_offset, 0, 0, 0, a, m.body.as_deref()) {
            let _ = filter.keep(&msg);
        }
    }
}

fuzz_target!(|input: Input| {
    let params = Params::new(
        input
            .params
            .iter()
            .map(|(n, v)| (n.text(), v.clone()))
            .collect(),
    );
    // The SDK's helpers, on whatever was sent.
    for (n, _) in &input.params {
        let name = n.text();
        let _ = params.get(&name);
        let _ = params.get_all(&name).count();
        let _ = params.parse::<u64>(&name);
        let _ = params.parse::<f64>(&name);
        let _ = params.flag(&name, false);
    }
    let _ = params.allow_only(&["expr", "pattern"]);
    let msgs = &input.messages[..input.messages.len().min(16)];
    match input.pick {
        Pick::Sql92 => run::<weir_filter_sql92::Sql92>(&params, msgs),
        Pick::BodyRegex => run::<weir_filter_body_regex::BodyRegex>(&params, msgs),
        Pick::JsonField => run::<weir_filter_json_field::JsonField>(&params, msgs),
        Pick::KeySample => run::<weir_filter_key_sample::KeySample>(&params, msgs),
        Pick::KeepAll => run::<weir_filter_keep_all::KeepAll>(&params, msgs),
    }
});
