//! How an order's authorizations are answered: one [`Solver`] per challenge type. The order
//! ([`super::client::order`]) asks the solver to present the answer for each authorization,
//! waits until the solver says the CA can see it, tells the CA to validate, and finally has
//! the solver clean up (whatever happened).
//!
//! - [`Http01`]: the HTTP-01 responder on `ACMEHTTPListen` (RFC 8555 §8.3).
//! - [`super::dns01::Dns01`]: a TXT record at `_acme-challenge.<domain>` (RFC 8555 §8.4), put
//!   there by a DNS provider and checked at the zone's servers before validation.
//! - [`super::tlsalpn::TlsAlpn01`]: a challenge certificate the data plane serves on the node's
//!   port to `acme-tls/1` handshakes (RFC 8737).

use std::net::SocketAddr;
use std::time::Instant;

use super::client::{fail, AcmeError};
use super::responder::Responder;

/// One authorization to answer.
pub(crate) struct Presented<'a> {
    /// The identifier's value (for a wildcard order, the name without `*.`).
    pub domain: &'a str,
    pub token: &'a str,
    pub key_authorization: &'a str,
}

/// A challenge type's answering side.
pub(crate) trait Solver {
    /// The ACME challenge type (`http-01`, `dns-01`, `tls-alpn-01`).
    fn challenge_type(&self) -> &'static str;
    /// Makes the answer for one authorization available.
    fn present(&mut self, p: &Presented<'_>) -> Result<(), AcmeError>;
    /// Returns once everything presented can be seen by the CA (DNS propagation, the data
    /// plane serving the challenge), or fails at `deadline`.
    fn wait_ready(&mut self, _deadline: Instant) -> Result<(), AcmeError> {
        Ok(())
    }
    /// Removes everything presented; failures are logged, never fatal (the certificate is
    /// what matters, and a stale TXT record or file is harmless).
    fn cleanup(&mut self);
}

/// HTTP-01: the responder listens from the first authorization to the end of the order.
pub(crate) struct Http01 {
    listen: SocketAddr,
    responder: Option<Responder>,
}

impl Http01 {
    pub(crate) fn new(listen: SocketAddr) -> Http01 {
        Http01 {
            listen,
            responder: None,
        }
    }
}

impl Solver for Http01 {
    fn challenge_type(&self) -> &'static str {
        "http-01"
    }

    fn present(&mut self, p: &Presented<'_>) -> Result<(), AcmeError> {
        if self.responder.is_none() {
            self.responder = Some(Responder::start(self.listen).map_err(|e| {
                fail(
                    "http-01 responder",
                    format!("cannot listen on {} (ACMEHTTPListen): {e}", self.listen),
                )
            })?);
        }
        if let Some(r) = &self.responder {
            r.add(p.token, p.key_authorization);
        }
        Ok(())
    }

    fn cleanup(&mut self) {
        self.responder = None;
    }
}
