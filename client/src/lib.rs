//! What a miner's side of a link needs, shared by `otedama miner` and the load generator
//! so that both speak to the pool exactly alike: today the QUIC client's TLS and transport
//! settings.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

/// Where Debian keeps the system's CA bundle, trusted when no certificate is given.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// A keep-alive well inside the pool's idle timeout, so a quiet miner keeps its link.
pub const QUIC_KEEP_ALIVE_S: u64 = 10;

/// TLS for stratum2+quic: TLS 1.3, the `sv2` ALPN, early data on (a resumed session sends
/// its first frames in 0-RTT), trusting the PEM certificates in `ca` or the system's CA
/// bundle.
pub fn quic_client_config(ca: Option<&Path>) -> anyhow::Result<quinn::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let path = ca.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
    {
        roots.add(certificate.with_context(|| format!("parsing {}", path.display()))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![otedama_shared::sv2::QUIC_ALPN.to_vec()];
    tls.enable_early_data = true;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(QUIC_KEEP_ALIVE_S)));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that is no certificate is an error that names it, not an empty trust store.
    #[test]
    fn a_missing_certificate_file_is_named() {
        let error = quic_client_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(
            format!("{error:#}").contains("/nonexistent/ca.pem"),
            "{error:#}"
        );
    }
}
