//! TLS to the lock's database: the CA file read and the rustls configuration built from it.
//! A leaf: the configuration checks `tls-ca-file` with [`ca_roots`], the lock connects with
//! [`tls_config`], and neither has to import the other for it.

use std::sync::Arc;

/// The most `tls-ca-file` may hold. Debian's whole bundle of system roots (the default) is
/// 215 KiB; 1 MiB leaves it room to grow, and a path naming the wrong file is refused at once.
pub const MAX_CA_FILE_SIZE: u64 = 1 << 20;

/// A rustls configuration that verifies the server's chain against `ca_file` and its name
/// against the host in `postgres.connect` (rustls' WebPKI verifier does both).
pub fn tls_config(ca_file: &std::path::Path) -> Result<rustls::ClientConfig, String> {
    let roots = ca_roots(ca_file)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The CA certificates of `ca_file` (PEM) that rustls can use; at least one, or an error
/// naming the file. Also what `check-config` checks `tls-ca-file` with. The file is read as
/// [`report_common::files`] reads any file: never blocking, a regular file of at most
/// [`MAX_CA_FILE_SIZE`].
pub fn ca_roots(ca_file: &std::path::Path) -> Result<rustls::RootCertStore, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let bytes = report_common::files::read(ca_file, MAX_CA_FILE_SIZE).map_err(|e| {
        match report_common::files::refusal(&e) {
            Some(refused) => format!("tls-ca-file {refused}"),
            None => format!("cannot read tls-ca-file {}: {e}", ca_file.display()),
        }
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| format!("tls-ca-file {}: {e}", ca_file.display()))?;
        // A bundle may hold a certificate rustls cannot use; the others still serve.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!(
            "tls-ca-file {} holds no usable CA certificate (PEM)",
            ca_file.display()
        ));
    }
    Ok(roots)
}
