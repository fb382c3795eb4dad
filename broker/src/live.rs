//! Settings that can change while the broker runs (`weir broker config set`): kept in
//! atomics read where they apply. A change is not written back to the configuration file:
//! a restart uses the file's values.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::config::BrokerConfig;

/// Names of the settings that can change live, as in the configuration file.
pub const LIVE_SETTINGS: [&str; 5] = [
    "auto_create_topic",
    "default_topic_queues",
    "max_message_size",
    "send_queue_wait_ms",
    "slave_ack_timeout_ms",
];

pub struct LiveSettings {
    auto_create_topic: AtomicBool,
    default_topic_queues: AtomicU32,
    max_message_size: AtomicUsize,
    send_queue_wait_ms: AtomicU64,
    slave_ack_timeout_ms: AtomicU64,
}

/// Why a setting was not changed (the text says which and why).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error(
        "setting {0:?} cannot change while the broker runs (set it in the configuration file and restart); these can: {list}",
        list = LIVE_SETTINGS.join(", ")
    )]
    NotLive(String),
    #[error("{name} = {value:?}: {why}")]
    BadValue {
        name: &'static str,
        value: String,
        why: &'static str,
    },
}

impl LiveSettings {
    pub fn new(c: &BrokerConfig) -> Self {
        Self {
            auto_create_topic: AtomicBool::new(c.auto_create_topic),
            default_topic_queues: AtomicU32::new(c.default_topic_queues),
            max_message_size: AtomicUsize::new(c.max_message_size),
            send_queue_wait_ms: AtomicU64::new(c.send_queue_wait_ms),
            slave_ack_timeout_ms: AtomicU64::new(c.slave_ack_timeout_ms),
        }
    }

    pub fn auto_create_topic(&self) -> bool {
        self.auto_create_topic.load(Ordering::Relaxed)
    }
    pub fn default_topic_queues(&self) -> u32 {
        self.default_topic_queues.load(Ordering::Relaxed)
    }
    pub fn max_message_size(&self) -> usize {
        self.max_message_size.load(Ordering::Relaxed)
    }
    pub fn send_queue_wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.send_queue_wait_ms.load(Ordering::Relaxed))
    }
    pub fn slave_ack_timeout_ms(&self) -> u64 {
        self.slave_ack_timeout_ms.load(Ordering::Relaxed)
    }

    /// Every live setting and its value, sorted by name.
    pub fn all(&self) -> Vec<(String, String)> {
        LIVE_SETTINGS
            .iter()
            .map(|&n| (n.to_owned(), self.get(n).unwrap_or_default()))
            .collect()
    }

    fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "auto_create_topic" => self.auto_create_topic().to_string(),
            "default_topic_queues" => self.default_topic_queues().to_string(),
            "max_message_size" => self.max_message_size().to_string(),
            "send_queue_wait_ms" => self.send_queue_wait().as_millis().to_string(),
            "slave_ack_timeout_ms" => self.slave_ack_timeout_ms().to_string(),
            _ => return None,
        })
    }

    /// Changes one setting, within the range the configuration file allows.
    pub fn set(&self, name: &str, value: &str) -> Result<(), SettingError> {
        fn bad(name: &'static str, value: &str, why: &'static str) -> SettingError {
            SettingError::BadValue {
                name,
                value: value.to_owned(),
                why,
            }
        }
        match name {
            "auto_create_topic" => {
                let v = value
                    .parse::<bool>()
                    .map_err(|_| bad("auto_create_topic", value, "true or false"))?;
                self.auto_create_topic.store(v, Ordering::Relaxed);
            }
            "default_topic_queues" => {
                let v = value
                    .parse::<u32>()
                    .ok()
                    .filter(|v| (1..=1024).contains(v))
                    .ok_or_else(|| bad("default_topic_queues", value, "within 1..=1024"))?;
                self.default_topic_queues.store(v, Ordering::Relaxed);
            }
            "max_message_size" => {
                let v = value
                    .parse::<usize>()
                    .ok()
                    .filter(|v| (1..=15 << 20).contains(v))
                    .ok_or_else(|| {
                        bad(
                            "max_message_size",
                            value,
                            "bytes within 1..=15728640 (15 MiB)",
                        )
                    })?;
                self.max_message_size.store(v, Ordering::Relaxed);
            }
            "send_queue_wait_ms" => {
                let v = value
                    .parse::<u64>()
                    .ok()
                    .filter(|&v| v > 0)
                    .ok_or_else(|| bad("send_queue_wait_ms", value, "milliseconds, above 0"))?;
                self.send_queue_wait_ms.store(v, Ordering::Relaxed);
            }
            "slave_ack_timeout_ms" => {
                let v = value
                    .parse::<u64>()
                    .ok()
                    .filter(|&v| v > 0)
                    .ok_or_else(|| bad("slave_ack_timeout_ms", value, "milliseconds, above 0"))?;
                self.slave_ack_timeout_ms.store(v, Ordering::Relaxed);
            }
            other => return Err(SettingError::NotLive(other.to_owned())),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_checks_names_and_ranges() {
        let s = LiveSettings::new(&BrokerConfig::default());
        s.set("max_message_size", "1024").unwrap();
        assert_eq!(s.max_message_size(), 1024);
        s.set("auto_create_topic", "false").unwrap();
        assert!(!s.auto_create_topic());
        assert!(s.set("default_topic_queues", "0").is_err());
        assert!(s.set("max_message_size", "16777216").is_err());
        assert!(s.set("slave_ack_timeout_ms", "-1").is_err());
        assert!(s.set("send_queue_wait_ms", "0").is_err());
        s.set("send_queue_wait_ms", "5").unwrap();
        assert_eq!(s.send_queue_wait(), std::time::Duration::from_millis(5));
        let e = s.set("listen", "0.0.0.0:1").unwrap_err().to_string();
        assert!(
            e.contains("\"listen\" cannot change") && e.contains("max_message_size"),
            "{e}"
        );
        let names: Vec<String> = s.all().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, LIVE_SETTINGS);
        assert!(
            s.all()
                .contains(&("max_message_size".into(), "1024".into()))
        );
    }
}
