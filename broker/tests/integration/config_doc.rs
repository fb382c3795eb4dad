//! `config/README.md` cannot drift from the configuration structs: its tables list exactly
//! the keys of `BrokerConfig` and `NamesrvConfig` (every table, nested ones included, as
//! serialized from their defaults), each default it shows as a TOML value is the struct's,
//! and "live" is yes exactly for the broker's live settings. And an unknown key, at the top
//! or in a nested table, is an error naming it.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use weir_broker::BrokerConfig;
use weir_broker::live::LIVE_SETTINGS;
use weir_namesrv::NamesrvConfig;

/// A documented key: its default cell and whether it says live.
#[derive(Debug)]
struct Row {
    default: String,
    live: bool,
}

/// Keys whose default depends on the machine: documented in words.
const MACHINE_DEFAULTS: [&str; 1] = ["broker filter.workers"];

/// The README's rows, by "server key" (`broker store.flush_mode`, `namesrv listen`).
fn documented() -> BTreeMap<String, Row> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/README.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut rows = BTreeMap::new();
    let (mut server, mut table) = ("", String::new());
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            server = match h {
                "Broker" => "broker",
                "Name server" => "namesrv",
                other => panic!("unexpected section {other:?}"),
            };
            table.clear();
        } else if let Some(h) = line.strip_prefix("### ") {
            table = match h.split_once("`[") {
                Some((_, rest)) => format!("{}.", rest.split_once("]`").unwrap().0),
                None => String::new(),
            };
        } else if line.starts_with("| `") {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let key = cells[1].trim_matches('`');
            let live = match cells[3] {
                "yes" => true,
                "no" => false,
                other => panic!("{key}: live is yes or no, not {other:?}"),
            };
            let name = format!("{server} {table}{key}");
            let row = Row {
                default: cells[2].to_owned(),
                live,
            };
            assert!(rows.insert(name.clone(), row).is_none(), "{name} twice");
        }
    }
    rows
}

/// Every key of a default configuration, nested tables as `table.key`, with its value.
fn keys(server: &str, config: Value, out: &mut BTreeMap<String, Value>) {
    let Value::Object(top) = config else {
        panic!("a configuration serializes as a table")
    };
    for (k, v) in top {
        match v {
            Value::Object(table) => {
                for (nk, nv) in table {
                    out.insert(format!("{server} {k}.{nk}"), nv);
                }
            }
            v => {
                out.insert(format!("{server} {k}"), v);
            }
        }
    }
}

/// The first `…` of a cell, read as a TOML value.
fn toml_default(cell: &str) -> Option<Value> {
    let literal = cell.split('`').nth(1)?;
    let parsed: toml::Table = toml::from_str(&format!("v = {literal}"))
        .unwrap_or_else(|e| panic!("default {literal:?} is not a TOML value: {e}"));
    Some(serde_json::to_value(&parsed["v"]).unwrap())
}

#[test]
fn the_readme_lists_every_setting_with_its_default() {
    let mut actual = BTreeMap::new();
    keys(
        "broker",
        serde_json::to_value(BrokerConfig::default()).unwrap(),
        &mut actual,
    );
    keys(
        "namesrv",
        serde_json::to_value(NamesrvConfig::default()).unwrap(),
        &mut actual,
    );
    let documented = documented();
    let missing: Vec<&String> = actual
        .keys()
        .filter(|k| !documented.contains_key(*k))
        .collect();
    let unknown: Vec<&String> = documented
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "config/README.md lacks {missing:?} and lists settings that do not exist {unknown:?}"
    );
    for (name, row) in &documented {
        let value = &actual[name];
        match toml_default(&row.default) {
            Some(shown) => assert_eq!(&shown, value, "{name}: the README's default"),
            None if value.is_null() => assert!(
                row.default.starts_with("none"),
                "{name}: no default, so the README says none: {:?}",
                row.default
            ),
            None => assert!(
                MACHINE_DEFAULTS.contains(&name.as_str()),
                "{name}: show the default {value} as a TOML value"
            ),
        }
        let live = name
            .strip_prefix("broker ")
            .is_some_and(|k| LIVE_SETTINGS.contains(&k));
        assert_eq!(row.live, live, "{name}: live");
    }
}

#[test]
fn an_unknown_key_is_an_error_naming_it_in_every_table() {
    let broker_tables = [
        "",
        "[store]",
        "[filter]",
        "[limits]",
        "[net]",
        "[acl]",
        "[metrics]",
    ];
    for table in broker_tables {
        let text = format!("{table}\nno_such_key = 1\n");
        let e = toml::from_str::<BrokerConfig>(&text)
            .expect_err(&text)
            .to_string();
        assert!(e.contains("unknown field `no_such_key`"), "{table}: {e}");
    }
    for table in ["", "[net]", "[metrics]"] {
        let text = format!("{table}\nno_such_key = 1\n");
        let e = toml::from_str::<NamesrvConfig>(&text)
            .expect_err(&text)
            .to_string();
        assert!(e.contains("unknown field `no_such_key`"), "{table}: {e}");
    }
    // A known key in the wrong table is unknown there.
    let e = toml::from_str::<BrokerConfig>("[store]\nsend_queue_wait_ms = 5\n")
        .expect_err("not a store key")
        .to_string();
    assert!(e.contains("send_queue_wait_ms"), "{e}");
}
