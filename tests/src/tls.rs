//! TLS for the tests: a CA and a server certificate it signs, made by the test itself
//! (rcgen) into a temporary folder, and an [`Env`] whose name server and broker take TLS.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use weir_broker::BrokerConfig;
use weir_protocol::net::ClientTls;
use weir_protocol::{TlsConfig, TlsMode};

use crate::{Client, Env};

/// PEM files: a CA, and a certificate it signed for `127.0.0.1` (an IP subject
/// alternative name) and `localhost`, with its key.
pub struct Pki {
    /// The CA's certificate: what clients trust.
    pub ca: PathBuf,
    /// The server's certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

impl Pki {
    /// A new CA (its own name, so two are different CAs) and a server certificate.
    pub fn new(ca_name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "weir test server");
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &ca).expect("server certificate");
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        Pki {
            ca: write("ca.pem", ca.pem()),
            cert: write("server.pem", cert.pem()),
            key: write("server.key", key.serialize_pem()),
            _dir: dir,
        }
    }

    /// A server's `[tls]` in `mode` with this certificate (and this CA for a broker's own
    /// connections).
    pub fn server_config(&self, mode: TlsMode) -> TlsConfig {
        TlsConfig {
            mode,
            cert_file: Some(self.cert.clone()),
            key_file: Some(self.key.clone()),
            ca_file: Some(self.ca.clone()),
        }
    }

    /// A client's TLS trusting this CA.
    pub fn client_tls(&self) -> ClientTls {
        ClientTls::from_ca_file(&self.ca).expect("CA file")
    }
}

impl Env {
    /// A name server and a broker both taking TLS in `mode` with `pki`'s certificate (the
    /// broker registering over TLS), the broker's settings then changed by `tweak`.
    pub async fn start_tls(pki: &Pki, mode: TlsMode, tweak: impl FnOnce(&mut BrokerConfig)) -> Env {
        let tls = pki.server_config(mode);
        let ns = weir_namesrv::start(weir_namesrv::NamesrvConfig {
            listen: "127.0.0.1:0".into(),
            broker_expiry_ms: 120_000,
            scan_interval_ms: 50,
            tls: TlsConfig {
                ca_file: None,
                ..tls.clone()
            },
            ..Default::default()
        })
        .await
        .expect("name server starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = crate::broker_config(dir.path(), &ns.local_addr().to_string());
        config.tls = tls;
        tweak(&mut config);
        let broker = weir_broker::start(config.clone())
            .await
            .expect("broker starts");
        Env {
            ns,
            broker: Some(broker),
            config,
            _dir: dir,
        }
    }

    /// A new TLS connection to the broker, trusting `tls`.
    pub async fn client_tls(&self, tls: &ClientTls) -> Client {
        Client::connect_tls(&self.broker().local_addr().to_string(), tls).await
    }
}

impl Client {
    /// A raw protocol connection over TLS to the broker (or name server) at `addr`.
    pub async fn connect_tls(addr: &str, tls: &ClientTls) -> Client {
        let conn = weir_protocol::Connection::connect_with(
            addr,
            std::sync::Arc::new(weir_protocol::NoHandler),
            weir_protocol::ConnConfig::default(),
            crate::T,
            Some(tls),
        )
        .await
        .expect("TLS connection to the broker");
        Client { conn }
    }
}
