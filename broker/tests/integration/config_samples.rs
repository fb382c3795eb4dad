//! The sample configurations in `config/` (one folder per deployment mode) parse, pass
//! validation, and fit together: within a mode, distinct addresses and data folders, and
//! every slave pointing at its master's HA port.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use weir_broker::BrokerConfig;
use weir_namesrv::{NamesrvConfig, server_main::read_toml};
use weir_protocol::ha::BrokerRole;

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

fn tomls(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    out.sort();
    out
}

#[test]
fn every_sample_parses_validates_and_fits_its_mode() {
    let root = samples();
    let ns: NamesrvConfig = read_toml(&root.join("namesrv.toml")).unwrap();
    let mut modes = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            modes.push(path);
        }
    }
    modes.sort();
    let names: Vec<String> = modes
        .iter()
        .map(|m| m.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "single-master",
            "two-masters",
            "two-masters-async-slaves",
            "two-masters-sync-slaves"
        ]
    );
    for mode in &modes {
        let files = tomls(mode);
        assert!(!files.is_empty(), "{}", mode.display());
        let configs: Vec<(PathBuf, BrokerConfig)> = files
            .into_iter()
            .map(|f| {
                let c: BrokerConfig =
                    read_toml(&f).unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
                c.validate()
                    .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                assert_eq!(c.namesrv, ns.listen, "{}", f.display());
                (f, c)
            })
            .collect();
        let mut listens = HashSet::new();
        let mut dirs = HashSet::new();
        for (f, c) in &configs {
            assert!(
                listens.insert(c.listen.clone()),
                "{}: listen reused",
                f.display()
            );
            if let Some(ha) = &c.ha_listen {
                assert!(
                    listens.insert(ha.clone()),
                    "{}: ha_listen reused",
                    f.display()
                );
            }
            assert!(
                dirs.insert(c.store.data_dir.clone()),
                "{}: data_dir reused",
                f.display()
            );
            if c.role == BrokerRole::Slave {
                let master = configs
                    .iter()
                    .map(|(_, m)| m)
                    .find(|m| m.broker_name == c.broker_name && m.role.is_master())
                    .unwrap_or_else(|| panic!("{}: no master in its mode", f.display()));
                assert_eq!(c.master_ha_addr, master.ha_listen, "{}", f.display());
            }
        }
        let name = mode.file_name().unwrap().to_string_lossy();
        let roles: Vec<BrokerRole> = configs.iter().map(|(_, c)| c.role).collect();
        let want = match name.as_ref() {
            "single-master" => vec![BrokerRole::AsyncMaster],
            "two-masters" => vec![BrokerRole::AsyncMaster; 2],
            "two-masters-async-slaves" => vec![
                BrokerRole::Slave,
                BrokerRole::AsyncMaster,
                BrokerRole::Slave,
                BrokerRole::AsyncMaster,
            ],
            _ => vec![
                BrokerRole::Slave,
                BrokerRole::SyncMaster,
                BrokerRole::Slave,
                BrokerRole::SyncMaster,
            ],
        };
        let mut sorted_want = want.clone();
        let mut sorted_roles = roles.clone();
        sorted_want.sort_by_key(|r| r.as_str());
        sorted_roles.sort_by_key(|r| r.as_str());
        assert_eq!(sorted_roles, sorted_want, "{name}");
    }
}

#[test]
fn an_unknown_key_in_a_sample_would_be_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        std::fs::read_to_string(samples().join("two-masters-sync-slaves/broker-a.toml")).unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, format!("{text}\n[filter]\nno_such_key = 1\n")).unwrap();
    assert!(read_toml::<BrokerConfig>(&path).is_err());
    std::fs::write(&path, text.replace("role = ", "rol = ")).unwrap();
    assert!(read_toml::<BrokerConfig>(&path).is_err());
}
