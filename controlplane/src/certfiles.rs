//! Certificate and key files written whole or not at all: under a temporary name, synced, then
//! renamed into place. The data plane reloads a pair when either mtime changes, so it must
//! never see a half-written file; the key goes first and is 0600.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Writes `body` to `<path>.v2sp-tmp` (mode `mode`, synced) and returns that path.
pub(crate) fn write_tmp(path: &Path, body: &[u8], mode: u32) -> Result<PathBuf, String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".v2sp-tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(body)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    Ok(tmp)
}

/// Both files written in full under temporary names, then renamed into place, key first (the
/// data plane keeps the old pair if the two do not match).
pub(crate) fn write_pair(cert_file: &Path, chain: &str, key_file: &Path, key: &str) -> Result<(), String> {
    for p in [cert_file, key_file] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    let key_tmp = write_tmp(key_file, key.as_bytes(), 0o600)?;
    let cert_tmp = write_tmp(cert_file, chain.as_bytes(), 0o644)?;
    std::fs::rename(&key_tmp, key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
    std::fs::rename(&cert_tmp, cert_file).map_err(|e| format!("{}: {e}", cert_file.display()))
}
