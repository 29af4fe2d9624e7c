//! The key of QUIC stateless resets, one per shm directory, so that every data-plane process
//! of an upgrade signs resets the same way.
//!
//! quinn derives each connection id's reset token from its endpoint's reset key. After an
//! upgrade the successor receives the packets of connections it does not know and answers
//! with a stateless reset; with a key of its own that reset carries a token the client was
//! never given, so the client ignores it and waits for its idle timeout (~30 s with sing-box)
//! before it dials again. With the predecessor's key the token is the one the client holds:
//! the connection ends at once and the client reconnects to the successor.
//!
//! The file is 32 random bytes, created once (written to a temporary name and linked into
//! place, so a reader never sees half a key) in the directory [`super::segment::check_dir`]
//! has checked (owned by this user, mode 0700). A file of another length is replaced.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{names, ShmError};

/// Bytes in the key.
pub const RESET_KEY_LEN: usize = 32;

/// The shm directory's QUIC reset key, created on first use.
pub fn quic_reset_key(dir: &Path) -> Result<[u8; RESET_KEY_LEN], ShmError> {
    super::segment::check_dir(dir)?;
    // The temporary name is per process (`.tmp<pid>`, what the control plane sweeps after a
    // crash): threads of one process take turns.
    static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = CREATING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let path = dir.join(names::QUIC_RESET_KEY);
    // Bounded: each round reads the key, or creates it, or lost a creation race to a process
    // whose key the next round reads.
    for _ in 0..3 {
        let replace = match read_key(&path) {
            Ok(Some(k)) => return Ok(k),
            Ok(None) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(ShmError::io(&path, e)),
        };
        let key = random_key();
        let tmp = dir.join(format!("{}.tmp{}", names::QUIC_RESET_KEY, std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&key).and_then(|()| f.sync_all()));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(ShmError::io(&tmp, e));
        }
        // A wrong-sized file is replaced; otherwise the first process to link wins.
        let placed = if replace {
            std::fs::rename(&tmp, &path)
        } else {
            std::fs::hard_link(&tmp, &path)
        };
        let _ = std::fs::remove_file(&tmp);
        match placed {
            Ok(()) => return Ok(key),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(ShmError::io(&path, e)),
        }
    }
    Err(ShmError::Busy {
        what: format!("{} keeps changing", path.display()),
    })
}

/// The key in `path`: `Ok(None)` when the file has another length.
fn read_key(path: &Path) -> std::io::Result<Option<[u8; RESET_KEY_LEN]>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut buf = Vec::with_capacity(RESET_KEY_LEN + 1);
    f.take(RESET_KEY_LEN as u64 + 1).read_to_end(&mut buf)?;
    Ok(<[u8; RESET_KEY_LEN]>::try_from(buf.as_slice()).ok())
}

fn random_key() -> [u8; RESET_KEY_LEN] {
    let mut k = [0u8; RESET_KEY_LEN];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut k));
    if read.is_err() {
        // No /dev/urandom: the key only has to be unpredictable to clients, which cannot read
        // the shm directory.
        let seed = format!(
            "{:?} {} {:?}",
            std::time::SystemTime::now(),
            std::process::id(),
            std::thread::current().id()
        );
        k = *blake3::hash(seed.as_bytes()).as_bytes();
    }
    k
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dir() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    #[test]
    fn one_key_per_directory_created_once() {
        let d = dir();
        let a = quic_reset_key(d.path()).unwrap();
        let b = quic_reset_key(d.path()).unwrap();
        assert_eq!(a, b, "a second process reads the first one's key");
        assert_ne!(a, quic_reset_key(dir().path()).unwrap());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join(names::QUIC_RESET_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temporary is left behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_damaged_key_is_replaced_and_a_bad_directory_refused() {
        let d = dir();
        std::fs::write(d.path().join(names::QUIC_RESET_KEY), b"short").unwrap();
        let k = quic_reset_key(d.path()).unwrap();
        assert_eq!(quic_reset_key(d.path()).unwrap(), k);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(quic_reset_key(d.path()).is_err());
    }

    #[test]
    fn racing_processes_agree() {
        let d = dir();
        let p = d.path().to_path_buf();
        let keys: Vec<_> = (0..8)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || quic_reset_key(&p).unwrap())
            })
            .map(|t| t.join().unwrap())
            .collect();
        assert!(keys.iter().all(|k| *k == keys[0]));
    }
}
