//! `[tls]` for `amqps://` URLs, as fedora-messaging uses it: `ca_cert`, when
//! set, is the only trusted authority (else the system's store);
//! `certfile` and `keyfile`, when both are set, are the client certificate,
//! and login is SASL EXTERNAL (the certificate is the identity, so URLs
//! such as Fedora's public `amqps://fedora:@…` carry no password). rustls
//! speaks TLS 1.2 and 1.3 only and always verifies the host name.
//!
//! Every file is read before connecting: a missing or unreadable one is an
//! error naming the key and the file (exit 1).

use std::path::{Path, PathBuf};

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};

use crate::config;
use crate::exit::{Exit, Fatal};

/// Where Linux distributions keep the system's trusted authorities, in
/// the order rustls-native-certs looks (after `SSL_CERT_FILE`).
const SYSTEM_BUNDLES: [&str; 5] = [
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// What the connection needs from `[tls]`.
pub struct TlsSetup {
    pub config: OwnedTLSConfig,
    /// Whether a client certificate is presented (login with EXTERNAL).
    pub client_certificate: bool,
}

/// Reads the files `[tls]` names, or the system's trust store.
pub fn load(tls: &config::Tls) -> Result<TlsSetup, Fatal> {
    let trusted = match &tls.ca_cert {
        Some(path) => read_pem("ca_cert", path, "CERTIFICATE")?,
        None => system_bundle()?,
    };
    let identity = match (&tls.certfile, &tls.keyfile) {
        (Some(certfile), Some(keyfile)) => Some(OwnedIdentity::PKCS8 {
            pem: read_pem("certfile", certfile, "CERTIFICATE")?.into_bytes(),
            key: read_pem("keyfile", keyfile, "PRIVATE KEY")?.into_bytes(),
        }),
        (Some(_), None) | (None, Some(_)) => {
            log::warn!(
                "[tls] needs both certfile and keyfile for a client certificate; with only one, none is used (as in fedora-messaging)"
            );
            None
        }
        (None, None) => None,
    };
    Ok(TlsSetup {
        client_certificate: identity.is_some(),
        config: OwnedTLSConfig {
            identity,
            cert_chain: Some(trusted),
        },
    })
}

fn read_pem(key: &str, path: &Path, kind: &str) -> Result<String, Fatal> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        Fatal::new(
            Exit::Error,
            format!(
                "[tls] {key} {}: {error}: fix the path or the file's permissions",
                path.display()
            ),
        )
    })?;
    if !text.contains("-----BEGIN ") || !text.contains(kind) {
        return Err(Fatal::new(
            Exit::Error,
            format!(
                "[tls] {key} {}: not a PEM file holding a {}",
                path.display(),
                kind.to_lowercase()
            ),
        ));
    }
    Ok(text)
}

fn system_bundle() -> Result<String, Fatal> {
    let candidates: Vec<PathBuf> = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
        .collect();
    match candidates.iter().find(|path| path.is_file()) {
        Some(path) => read_pem(
            "ca_cert (the system's, as none is set)",
            path,
            "CERTIFICATE",
        ),
        None => Err(Fatal::new(
            Exit::Error,
            format!(
                "no system certificate bundle found (looked at {}): set [tls] ca_cert",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_name_the_key_and_the_file() {
        let tls = config::Tls {
            ca_cert: Some("/nonexistent/ca.pem".into()),
            ..config::Tls::default()
        };
        let error = load(&tls).err().unwrap();
        assert_eq!(error.exit, Exit::Error);
        assert!(
            error
                .message
                .starts_with("[tls] ca_cert /nonexistent/ca.pem: "),
            "{}",
            error.message
        );
    }

    #[test]
    fn a_file_that_is_not_pem_is_refused() {
        let dir = std::env::temp_dir().join(format!("fm-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let tls = config::Tls {
            ca_cert: Some(path.clone()),
            ..config::Tls::default()
        };
        let error = load(&tls).err().unwrap();
        assert!(
            error
                .message
                .contains("not a PEM file holding a certificate"),
            "{}",
            error.message
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
