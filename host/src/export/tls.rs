//! The rustls client configuration of an `https://` endpoint, built once at start so that a
//! missing file, a file without certificates or a key that does not match its certificate stops
//! the agent with the reason instead of failing every request later.
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use super::config::{Protocol, TlsSettings};
use super::ExportError;

fn tls_err(what: String) -> ExportError {
    ExportError::Tls(what)
}

/// The client config (ring as the crypto provider, TLS 1.2 and 1.3, ALPN for the protocol) and
/// the name the receiver's certificate must carry.
pub(crate) fn client_config(
    settings: &TlsSettings,
    protocol: Protocol,
    host: &str,
) -> Result<(Arc<ClientConfig>, ServerName<'static>), ExportError> {
    let roots = match &settings.ca_file {
        Some(path) => roots_from_file(path)?,
        None => system_roots()?,
    };
    // Explicitly ring: no process-wide default provider is assumed or installed.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(format!("TLS versions: {e}")))?
        .with_root_certificates(roots);
    let mut config = match (&settings.client_cert_file, &settings.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = certs_from_file(cert, "client certificate")?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| tls_err(format!("client key {}: {e}", key.display())))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                tls_err(format!(
                    "client certificate {} with key {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err(tls_err(
                "a client certificate needs its key (client_key_file / \
                 OTEL_EXPORTER_OTLP_CLIENT_KEY)"
                    .into(),
            ))
        }
        (None, Some(_)) => {
            return Err(tls_err(
                "a client key needs its certificate (client_cert_file / \
                 OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE)"
                    .into(),
            ))
        }
    };
    config.alpn_protocols = vec![match protocol {
        Protocol::Grpc => b"h2".to_vec(),
        Protocol::HttpProtobuf => b"http/1.1".to_vec(),
    }];
    let name = settings.server_name.as_deref().unwrap_or(host);
    let server_name = ServerName::try_from(name.to_string())
        .map_err(|e| tls_err(format!("server name `{name}`: {e}")))?;
    Ok((Arc::new(config), server_name))
}

fn certs_from_file(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, ExportError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_err(format!("{what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_err(format!(
            "{what} {}: no PEM certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, ExportError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_file(path, "CA file")? {
        roots
            .add(cert)
            .map_err(|e| tls_err(format!("CA file {}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// The platform's trusted roots (`/etc/ssl/certs`, `SSL_CERT_FILE`, …), read once at start.
fn system_roots() -> Result<RootCertStore, ExportError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(tls_err(format!(
            "no system CA certificates found{why}; install ca-certificates or set a CA file \
             (ca_file / OTEL_EXPORTER_OTLP_CERTIFICATE)"
        )));
    }
    Ok(roots)
}
