//! TLS on the listener: the certificate chain and key (and the optional client CA for mTLS)
//! read from PEM files and checked when the configuration is loaded, so a pair that does not
//! parse or does not match is refused like any bad configuration, and a reload that brings
//! one keeps the running pair. The listener asks `Certificates` for the pair at each
//! handshake, so a reload swaps it for new connections without touching open ones.
//!
//! rustls types only; `server` hands `Certificates` to pingora's listener.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// Largest PEM file read (a chain of a few certificates is a few KB).
const MAX_PEM: u64 = 1 << 20;

/// One loaded, checked pair and client CA.
pub struct Material {
    key: Arc<CertifiedKey>,
    client: Option<Arc<dyn ClientCertVerifier>>,
    /// The leaf certificate's serial number (hex), for logs.
    pub serial: String,
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material")
            .field("serial", &self.serial)
            .field("client_auth", &self.client.is_some())
            .finish()
    }
}

/// Equal when the same certificate and the same client-auth mode: a reload compares configs.
impl PartialEq for Material {
    fn eq(&self, other: &Self) -> bool {
        self.key.cert == other.key.cert && self.client.is_some() == other.client.is_some()
    }
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path)
        .map_err(|e| format!("{what} {}: cannot read: {e}", path.display()))?;
    let mut v = Vec::new();
    f.take(MAX_PEM + 1)
        .read_to_end(&mut v)
        .map_err(|e| format!("{what} {}: cannot read: {e}", path.display()))?;
    if v.len() as u64 > MAX_PEM {
        return Err(format!(
            "{what} {}: over {MAX_PEM} bytes: not a PEM file",
            path.display()
        ));
    }
    Ok(v)
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no CERTIFICATE block in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// Reads and checks a certificate chain (leaf first), its private key (PKCS#8, PKCS#1 or
/// SEC1; ECDSA, RSA or Ed25519) and, for mTLS, the CA that client certificates must chain to.
pub fn load(
    cert_file: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
) -> Result<Material, String> {
    let chain = certificates(cert_file, "cert_file")?;
    let key_pem = read_pem(key_file, "key_file")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "key_file {}: no usable PEM private key in it: {e}",
            key_file.display()
        )
    })?;
    let provider = provider();
    let serial = serial_of(&chain[0]).unwrap_or_else(|| "?".into());
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        format!(
            "cert_file {} and key_file {} do not make a pair: {e}",
            cert_file.display(),
            key_file.display()
        )
    })?;
    let client = match client_ca {
        None => None,
        Some(p) => {
            let mut roots = RootCertStore::empty();
            for c in certificates(p, "client_ca_file")? {
                roots
                    .add(c)
                    .map_err(|e| format!("client_ca_file {}: {e}", p.display()))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("client_ca_file {}: {e}", p.display()))?;
            Some(v)
        }
    };
    Ok(Material {
        key: Arc::new(key),
        client,
        serial,
    })
}

/// The serial number of a DER certificate, read from its TBSCertificate (hex), for logs;
/// `None` for bytes that are not one.
pub fn serial_of(cert: &CertificateDer<'_>) -> Option<String> {
    // SEQUENCE { SEQUENCE (tbs) { [0] version?, INTEGER serial, ... } }
    fn header(b: &[u8]) -> Option<(u8, usize, usize)> {
        let tag = *b.first()?;
        let first = *b.get(1)? as usize;
        if first < 0x80 {
            return Some((tag, 2, first));
        }
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        Some((tag, 2 + n, len))
    }
    let b = cert.as_ref();
    let (_, h, _) = header(b)?;
    let tbs = b.get(h..)?;
    let (_, h, _) = header(tbs)?;
    let mut rest = tbs.get(h..)?;
    let (tag, h, len) = header(rest)?;
    if tag == 0xa0 {
        rest = rest.get(h + len..)?;
    }
    let (tag, h, len) = header(rest)?;
    let value = rest.get(h..h + len)?;
    if tag != 0x02 || value.is_empty() {
        return None;
    }
    // DER pads a positive INTEGER whose high bit is set with a zero byte; openssl shows none
    let first = value
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(value.len() - 1);
    Some(hex::encode(&value[first..]))
}

/// The pair (and client CA) the listener uses now; `install` swaps them for new handshakes.
pub struct Certificates {
    current: ArcSwap<Material>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("serial", &self.current.load().serial)
            .finish()
    }
}

impl Certificates {
    pub fn new(m: Arc<Material>) -> Arc<Certificates> {
        Arc::new(Certificates {
            current: ArcSwap::new(m),
        })
    }

    /// Uses `m` for every handshake from now on. Whether client certificates are asked for
    /// is fixed when the listener starts: turning mTLS on or off needs a restart.
    pub fn install(&self, m: Arc<Material>) -> Result<(), String> {
        if m.client.is_some() != self.current.load().client.is_some() {
            return Err(
                "listen_tls.client_ca_file was added or removed: that needs a restart".into(),
            );
        }
        self.current.store(m);
        Ok(())
    }

    pub fn serial(&self) -> String {
        self.current.load().serial.clone()
    }

    /// The server-certificate resolver for the listener.
    pub fn resolver(self: &Arc<Self>) -> Arc<dyn ResolvesServerCert> {
        Arc::new(Resolver(self.clone()))
    }

    /// The client-certificate verifier, when the listener asks for client certificates.
    pub fn client_verifier(self: &Arc<Self>) -> Option<Arc<dyn ClientCertVerifier>> {
        self.current
            .load()
            .client
            .is_some()
            .then(|| Arc::new(ClientCa(self.clone())) as Arc<dyn ClientCertVerifier>)
    }

    fn client(&self) -> Arc<dyn ClientCertVerifier> {
        self.current
            .load()
            .client
            .clone()
            .expect("a ClientCa exists only when the material has a client CA (install keeps it)")
    }
}

#[derive(Debug)]
struct Resolver(Arc<Certificates>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load().key.clone())
    }
}

/// Delegates to the client CA of the material in force, so a reload changes it too.
#[derive(Debug)]
struct ClientCa(Arc<Certificates>);

impl ClientCertVerifier for ClientCa {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional (RFC 8446 4.2.4); the CA may change under us, so send none.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .client()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.client().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.client().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.client().supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str, serial: u64) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn pairs_are_checked_and_named_in_errors() {
        let d = tempfile::tempdir().unwrap();
        let (c1, k1) = pair(d.path(), "one", 0x1234);
        let (_, k2) = pair(d.path(), "two", 0x99);
        let m = load(&c1, &k1, None).unwrap();
        assert_eq!(m.serial, "1234");
        let e = load(&c1, &k2, None).unwrap_err();
        assert!(e.contains("do not make a pair"), "{e}");
        let junk = d.path().join("junk");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = load(&junk, &k1, None).unwrap_err();
        assert!(e.contains("no CERTIFICATE block"), "{e}");
        let e = load(&c1, &junk, None).unwrap_err();
        assert!(e.contains("no usable PEM private key"), "{e}");
        let e = load(&d.path().join("absent"), &k1, None).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        let big = d.path().join("big");
        std::fs::write(&big, vec![b'a'; (MAX_PEM + 10) as usize]).unwrap();
        assert!(load(&big, &k1, None)
            .unwrap_err()
            .contains("not a PEM file"));
        // a damaged certificate block is refused, not half-read
        let text = std::fs::read_to_string(&c1).unwrap();
        let cut = d.path().join("cut.crt");
        std::fs::write(&cut, &text[..text.len() / 2]).unwrap();
        assert!(load(&cut, &k1, None).is_err());
        // a client CA makes a verifier, and swapping it in keeps client auth on
        let with_ca = Arc::new(load(&c1, &k1, Some(&c1)).unwrap());
        let certs = Certificates::new(with_ca.clone());
        assert!(certs.client_verifier().is_some());
        assert!(certs
            .install(Arc::new(load(&c1, &k1, None).unwrap()))
            .is_err());
        assert!(certs.install(with_ca).is_ok());
    }

    #[test]
    fn the_serial_reader_survives_any_bytes() {
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37).wrapping_add(n)).collect();
            let _ = serial_of(&CertificateDer::from(junk));
        }
        assert_eq!(
            serial_of(&CertificateDer::from(vec![0x30, 0x84, 0xff])),
            None
        );
    }
}
