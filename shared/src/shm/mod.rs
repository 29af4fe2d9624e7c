//! Shared-memory contract between control plane and data plane (see `docs/design.md`).

/// A resolved user, copied out of the shared table so a connection never holds a reference
/// into a buffer that may be recycled. `slot`/`gen` let a connection re-resolve its limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserRef {
    /// Node slot (index into the control segment's node slots).
    pub node: u16,
    /// Record index in the node's active user table when resolved.
    pub slot: u32,
    /// Panel user id.
    pub user_id: u32,
    /// Table generation the lookup was made in.
    pub gen: u64,
    /// Protocol secret (see `cred`), `secret_len` bytes used.
    pub secret: [u8; 32],
    pub secret_len: u8,
    pub speed_limit_mbps: u32,
    pub device_limit: u32,
}

impl UserRef {
    pub fn secret(&self) -> &[u8] {
        &self.secret[..usize::from(self.secret_len).min(32)]
    }
}
