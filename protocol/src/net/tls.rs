//! TLS (rustls, with the `ring` provider) on a server's port and on the connections a
//! client opens: the `[tls]` table of the broker's and name server's TOML files, and the
//! certificates and keys it names, read from PEM files.
//!
//! A server takes connections as its [`TlsMode`] says: `disabled` (plaintext only, the
//! default), `permissive` (TLS and plaintext on the same port, told apart by the first
//! byte: a TLS handshake starts with 0x16, which a weir frame, whose first byte is the top
//! of a length of at most 16 MiB, never does) or `enforcing` (TLS only; a plaintext client
//! is answered once, with an error naming the setting, and closed). A client verifies the
//! server's certificate against the CA certificates of a PEM file, for the host part of
//! the address it dials (an IP address needs an IP subject alternative name).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The first byte of a TLS record carrying a handshake (a ClientHello).
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// How a server's port takes TLS (RocketMQ's `TlsMode` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plaintext only.
    #[default]
    Disabled,
    /// TLS and plaintext connections on the same port.
    Permissive,
    /// TLS connections only.
    Enforcing,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disabled => "disabled",
            TlsMode::Permissive => "permissive",
            TlsMode::Enforcing => "enforcing",
        }
    }
}

impl std::str::FromStr for TlsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disabled" => Ok(TlsMode::Disabled),
            "permissive" => Ok(TlsMode::Permissive),
            "enforcing" => Ok(TlsMode::Enforcing),
            other => Err(format!(
                "unknown TLS mode {other:?}: disabled, permissive or enforcing"
            )),
        }
    }
}

/// The `[tls]` table of the broker's and the name server's TOML files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// How the server's ports take TLS: `"disabled"` (default), `"permissive"` (TLS and
    /// plaintext on the same port) or `"enforcing"` (TLS only). On a broker this covers
    /// its client port and, for a master, its HA port (same certificate); a standalone
    /// broker's embedded name server takes the same settings.
    pub mode: TlsMode,
    /// The server's certificate chain, PEM, its own certificate first (default none;
    /// needed unless `mode` is `disabled`).
    pub cert_file: Option<PathBuf>,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1) (default none; needed
    /// unless `mode` is `disabled`).
    pub key_file: Option<PathBuf>,
    /// Broker only: the CA certificates, PEM, that the broker's own outgoing connections
    /// verify servers with; when set, those connections use TLS: registrations with the
    /// name servers and, for a slave, replication from its master's HA port (default
    /// none: plaintext).
    pub ca_file: Option<PathBuf>,
}

/// A TLS setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS {what} {}: cannot read it: {error}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("TLS {what} {}: {problem}", path.display())]
    Bad {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("tls.mode = \"{mode}\" needs tls.{missing} (a PEM file)")]
    Missing {
        mode: &'static str,
        missing: &'static str,
    },
    #[error("TLS certificate {} and key {} do not make a server identity: {error}", cert.display(), key.display())]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

const CERT: &str = "certificate file";
const KEY: &str = "key file";
const CA: &str = "CA file";

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.to_owned(),
        error,
    })
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |problem: String| TlsError::Bad {
        what,
        path: path.to_owned(),
        problem,
    };
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            "holds no certificate (\"-----BEGIN CERTIFICATE-----\")".into(),
        ));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsConfig {
    /// Checks that the settings go together (the files are read by [`TlsConfig::server`]
    /// and [`TlsConfig::client`]).
    pub fn validate(&self) -> Result<(), TlsError> {
        if self.mode != TlsMode::Disabled {
            let mode = self.mode.as_str();
            if self.cert_file.is_none() {
                return Err(TlsError::Missing {
                    mode,
                    missing: "cert_file",
                });
            }
            if self.key_file.is_none() {
                return Err(TlsError::Missing {
                    mode,
                    missing: "key_file",
                });
            }
        }
        Ok(())
    }

    /// The server side: none while `mode` is `disabled`; else the certificate and key,
    /// read and checked now.
    pub fn server(&self) -> Result<Option<ServerTls>, TlsError> {
        self.validate()?;
        match (self.mode, &self.cert_file, &self.key_file) {
            (TlsMode::Disabled, _, _) => Ok(None),
            (mode, Some(cert), Some(key)) => ServerTls::from_pem_files(mode, cert, key).map(Some),
            // (Refused by `validate`.)
            (mode, _, _) => Err(TlsError::Missing {
                mode: mode.as_str(),
                missing: "cert_file",
            }),
        }
    }

    /// The client side of the broker's own connections: none without `ca_file`.
    pub fn client(&self) -> Result<Option<ClientTls>, TlsError> {
        self.ca_file
            .as_deref()
            .map(ClientTls::from_ca_file)
            .transpose()
    }
}

/// A server's TLS: its mode and its identity. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    mode: TlsMode,
    pub(super) acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerTls({})", self.mode.as_str())
    }
}

impl ServerTls {
    /// Reads the certificate chain and the private key (PEM). `mode` must not be
    /// `disabled` (a disabled server has no `ServerTls`); it is taken as `enforcing`.
    pub fn from_pem_files(mode: TlsMode, cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let chain = certificates(CERT, cert)?;
        let pem = read(KEY, key)?;
        let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Bad {
            what: KEY,
            path: key.to_owned(),
            problem: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        })?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|error| TlsError::Identity {
                cert: cert.to_owned(),
                key: key.to_owned(),
                error,
            })?;
        Ok(ServerTls {
            mode: match mode {
                TlsMode::Disabled => TlsMode::Enforcing,
                m => m,
            },
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub fn mode(&self) -> TlsMode {
        self.mode
    }
}

/// A client's TLS: the CA certificates servers are verified with. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    ca_file: PathBuf,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientTls(ca_file: {})", self.ca_file.display())
    }
}

impl ClientTls {
    /// Trusts the CA certificates of the PEM file at `path` (and nothing else).
    pub fn from_ca_file(path: &Path) -> Result<ClientTls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(CA, path)? {
            roots.add(cert).map_err(|e| TlsError::Bad {
                what: CA,
                path: path.to_owned(),
                problem: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            ca_file: path.to_owned(),
        })
    }

    /// The CA file servers are verified with.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The TLS handshake over a connected `stream` to `addr` (`host:port`), verifying the
    /// server's certificate for `host`.
    pub(super) async fn connect(
        &self,
        addr: &str,
        stream: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = server_name(addr, stream.peer_addr().ok())?;
        self.connector.connect(name, stream).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "TLS handshake failed: {e} (the server's certificate is checked against {} for {addr})",
                    self.ca_file.display()
                ),
            )
        })
    }
}

/// The name a server's certificate must have: the host part of `addr` (an IP address or a
/// DNS name); the peer's IP when `addr` has no host.
fn server_name(addr: &str, peer: Option<SocketAddr>) -> std::io::Result<ServerName<'static>> {
    let host = match addr.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => addr.rsplit_once(':').map_or(addr, |(h, _)| h),
    };
    if host.is_empty()
        && let Some(p) = peer
    {
        return Ok(ServerName::IpAddress(p.ip().into()));
    }
    ServerName::try_from(host.to_owned()).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{host:?} is not a name a TLS certificate can have: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_the_host_part() {
        let ip = |s: &str| server_name(s, None).unwrap();
        assert_eq!(
            ip("127.0.0.1:9876"),
            ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into())
        );
        assert_eq!(
            ip("[::1]:9876"),
            ServerName::IpAddress(std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST).into())
        );
        assert_eq!(
            ip("broker.example:10911"),
            ServerName::try_from("broker.example").unwrap()
        );
        assert!(server_name("bad name!:1", None).is_err());
    }

    #[test]
    fn settings_are_checked_and_files_named() {
        TlsConfig::default().validate().unwrap();
        assert!(TlsConfig::default().server().unwrap().is_none());
        let e = TlsConfig {
            mode: TlsMode::Enforcing,
            ..TlsConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("tls.cert_file"), "{e}");
        let e = TlsConfig {
            mode: TlsMode::Permissive,
            cert_file: Some("/nonexistent/cert.pem".into()),
            key_file: Some("/nonexistent/key.pem".into()),
            ca_file: None,
        }
        .server()
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("weir-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = ClientTls::from_ca_file(&junk).unwrap_err();
        assert!(
            e.to_string().contains("junk.pem") && e.to_string().contains("no certificate"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!("enforcing".parse(), Ok(TlsMode::Enforcing));
        assert!("on".parse::<TlsMode>().is_err());
    }
}
