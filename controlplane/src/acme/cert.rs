//! What is on disk: does `CertFile` hold a certificate (and `KeyFile` a key), and how long is it
//! still valid. A minimal DER walk to `notAfter` (no X.509 library for one field); every
//! length is checked, so a corrupt file is "unusable", never a panic.

use std::path::Path;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Renew when this much validity or less is left.
pub(crate) const RENEW_BEFORE_SECS: i64 = 30 * 86_400;

/// The certificate files as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OnDisk {
    /// Neither file, or one of them, is missing.
    Missing,
    /// Present but not a certificate and key v2sp can use (the reason).
    Unusable(String),
    /// A usable pair; the leaf certificate expires at this Unix time.
    Usable { not_after: i64 },
}

/// What to do with what is on disk, at time `now` (Unix seconds).
pub(crate) fn needs_new(on_disk: &OnDisk, now: i64) -> bool {
    match on_disk {
        OnDisk::Usable { not_after } => not_after.saturating_sub(now) <= RENEW_BEFORE_SECS,
        OnDisk::Missing | OnDisk::Unusable(_) => true,
    }
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The civil date (year, month 1–12, day 1–31) of a Unix day number (days since 1970-01-01;
/// H. Hinnant's `civil_from_days`, proleptic Gregorian).
pub(crate) fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, u8::try_from(m).unwrap_or(1), u8::try_from(d).unwrap_or(1))
}

/// Inspects `cert_file` and `key_file`.
pub(crate) fn on_disk(cert_file: &Path, key_file: &Path) -> OnDisk {
    if !cert_file.exists() || !key_file.exists() {
        return OnDisk::Missing;
    }
    let pem = match std::fs::read(cert_file) {
        Ok(p) => p,
        Err(e) => return OnDisk::Unusable(format!("{}: {e}", cert_file.display())),
    };
    let Some(Ok(leaf)) = CertificateDer::pem_slice_iter(&pem).next() else {
        return OnDisk::Unusable(format!("{}: no PEM certificate", cert_file.display()));
    };
    let Some(not_after) = not_after(&leaf) else {
        return OnDisk::Unusable(format!(
            "{}: cannot read the certificate's expiry",
            cert_file.display()
        ));
    };
    if PrivateKeyDer::from_pem_file(key_file).is_err() {
        return OnDisk::Unusable(format!("{}: no PEM private key", key_file.display()));
    }
    OnDisk::Usable { not_after }
}

/// One DER TLV: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, b) = b.split_first()?;
    let (len, b) = if first < 0x80 {
        (usize::from(first), b)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n].iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
        (len, &b[n..])
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

/// `tbsCertificate.validity.notAfter` of a DER certificate, as Unix seconds.
pub(crate) fn not_after(der: &[u8]) -> Option<i64> {
    let (0x30, cert, _) = tlv(der)? else { return None };
    let (0x30, tbs, _) = tlv(cert)? else { return None };
    let mut rest = tbs;
    // [0] version (optional), serialNumber, signature, issuer, then validity.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    for expected in [0x02, 0x30, 0x30] {
        let (tag, _, r) = tlv(rest)?;
        if tag != expected {
            return None;
        }
        rest = r;
    }
    let (0x30, validity, _) = tlv(rest)? else {
        return None;
    };
    let (_, _, after) = tlv(validity)?; // notBefore
    let (tag, time, _) = tlv(after)?;
    parse_time(tag, time)
}

/// UTCTime (`YYMMDDHHMMSSZ`, 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, 0x18).
fn parse_time(tag: u8, s: &[u8]) -> Option<i64> {
    let digits = |b: &[u8]| -> Option<i64> {
        b.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (year, rest) = match (tag, s.len()) {
        (0x17, 13) => {
            let yy = digits(s.get(..2)?)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        (0x18, 15) => (digits(s.get(..4)?)?, s.get(4..)?),
        _ => return None,
    };
    if rest.last() != Some(&b'Z') {
        return None;
    }
    let f = |i: usize| digits(rest.get(i..i + 2)?);
    let (mon, day, h, m, sec) = (f(0)?, f(2)?, f(4)?, f(6)?, f(8)?);
    if !(1..=12).contains(&mon) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, mon, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn times_parse() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(parse_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(parse_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(parse_time(0x18, b"20260301120000Z"), Some(1_772_366_400));
        for bad in [
            &b"2026030112000Z"[..],
            b"20261301120000Z",
            b"2026030112000xZ",
            b"",
        ] {
            assert_eq!(parse_time(0x18, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn not_after_of_generated_certificates() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        p.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let c = p.self_signed(&key).unwrap();
        assert_eq!(not_after(c.der()), Some(2_524_521_600));
        p.not_after = rcgen::date_time_ymd(2051, 1, 2); // GeneralizedTime from 2050 on
        let c = p.self_signed(&key).unwrap();
        assert_eq!(not_after(c.der()), Some(2_556_230_400));
        // Truncated or garbage DER: None, never a panic.
        let der = c.der().to_vec();
        for n in 0..der.len() {
            let _ = not_after(&der[..n]);
        }
        assert_eq!(not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn expiry_decision() {
        let now = 1_800_000_000;
        assert!(needs_new(&OnDisk::Missing, now));
        assert!(needs_new(&OnDisk::Unusable("x".into()), now));
        assert!(!needs_new(
            &OnDisk::Usable {
                not_after: now + RENEW_BEFORE_SECS + 1
            },
            now
        ));
        assert!(needs_new(
            &OnDisk::Usable {
                not_after: now + RENEW_BEFORE_SECS
            },
            now
        ));
        assert!(needs_new(&OnDisk::Usable { not_after: now - 1 }, now), "expired");
    }

    #[test]
    fn files_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        assert_eq!(on_disk(&c, &k), OnDisk::Missing);
        std::fs::write(&c, "junk").unwrap();
        std::fs::write(&k, "junk").unwrap();
        assert!(matches!(on_disk(&c, &k), OnDisk::Unusable(_)));
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        p.not_after = rcgen::date_time_ymd(2049, 12, 31);
        std::fs::write(&c, p.self_signed(&key).unwrap().pem()).unwrap();
        assert!(matches!(on_disk(&c, &k), OnDisk::Unusable(r) if r.contains("private key")));
        std::fs::write(&k, key.serialize_pem()).unwrap();
        assert_eq!(
            on_disk(&c, &k),
            OnDisk::Usable {
                not_after: 2_524_521_600
            }
        );
    }
}
