//! The TLS server session over our record deframer: hostile ClientHellos and records.
#![no_main]
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use v2sp_dataplane::tls::{deframe, provider, TlsSession};

fn config() -> &'static Arc<rustls::ServerConfig> {
    static CFG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        let ck = rcgen::generate_simple_self_signed(vec!["fuzz.example".into()]).expect("rcgen");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .expect("cert");
        Arc::new(cfg)
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = deframe::record_len(data);
    let Ok(mut s) = TlsSession::new(config()) else { return };
    let mut pending = Vec::new();
    let mut out = Vec::new();
    for part in v2sp_fuzz::chunks(data) {
        pending.extend_from_slice(part);
        match s.open(&pending, &mut out) {
            Ok(used) => {
                pending.drain(..used.min(pending.len()));
            }
            Err(_) => return,
        }
        let mut reply = Vec::new();
        s.pending_output(&mut reply);
    }
});
