//! Audit (block) rules: the panel's `routes` with `action: "block"`, compiled once per node and
//! tested against every destination a user asks for (TCP, each UDP datagram's destination,
//! each mux sub-stream) before anything is resolved or dialed.
//!
//! Pattern forms (one `match` entry each):
//!
//! | entry | matches |
//! |---|---|
//! | `regexp:<re>` or any entry not listed below | `<re>` searched (unanchored, case-sensitive) in the destination text: the domain as the client sent it, or the IP's text form. This is what the Go agents do (spec §E.1). |
//! | `domain:example.com` | `example.com` and every subdomain (case-insensitive) |
//! | `*.example.com` | the same. Go agents read this as a regex and either panicked (XrayR#197) or matched nothing |
//! | `full:example.com` | exactly that domain (case-insensitive) |
//! | `keyword:goog` | domains containing it (case-insensitive) |
//! | `10.0.0.0/8`, `2001:db8::/32`, `1.2.3.4`, also with `cidr:`/`ip:` | IP destinations in that network. Go agents had no IP networks in panel rules; a bare address was a regex that matched its own text |
//! | `protocol:<name>` | the protocol sniffed from the client's first bytes (`http`, `tls`, `bittorrent`) |
//!
//! The data plane sniffs a TCP connection's first bytes (waiting briefly for them) when a
//! node has `protocol:` rules, or domain rules and the client named an IP: the TLS SNI or HTTP
//! Host is then checked against the domain rules too, as Xray's sniffing does.
//!
//! An entry that cannot be compiled (bad regex, bad network) is reported and skipped; it never
//! blocks everything or stops the node. Regexes run on the `regex` crate (linear time, size
//! limited), so a hostile pattern from a panel cannot stall a core.

use std::net::IpAddr;

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

/// Compiled program size limit per regex (the crate's default is 10 MiB; panel rules are short).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// One usable `match` entry, normalized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    Regex(String),
    /// Lower-cased, no leading dot.
    DomainSuffix(String),
    DomainFull(String),
    Keyword(String),
    Network(IpAddr, u8),
    Protocol(String),
}

impl Pattern {
    /// Parses one entry. `Err` says why it cannot be used.
    pub fn parse(entry: &str) -> Result<Pattern, String> {
        let e = entry.trim();
        if e.is_empty() {
            return Err("empty pattern".into());
        }
        let (kind, rest) = match e.split_once(':') {
            Some((k, r))
                if matches!(
                    k,
                    "regexp" | "domain" | "full" | "keyword" | "cidr" | "ip" | "protocol"
                ) =>
            {
                (k, r)
            }
            _ => ("", e),
        };
        match kind {
            "regexp" => regex(rest).map(|_| Pattern::Regex(rest.to_string())),
            "domain" => domain(rest).map(Pattern::DomainSuffix),
            "full" => domain(rest).map(Pattern::DomainFull),
            "keyword" if !rest.is_empty() => Ok(Pattern::Keyword(rest.to_ascii_lowercase())),
            "keyword" => Err("empty keyword".into()),
            "cidr" | "ip" => network(rest),
            "protocol" if !rest.is_empty() => Ok(Pattern::Protocol(rest.to_string())),
            "protocol" => Err("empty protocol name".into()),
            _ => {
                if let Some(d) = rest.strip_prefix("*.") {
                    if let Ok(d) = domain(d) {
                        return Ok(Pattern::DomainSuffix(d));
                    }
                }
                if let Ok(n) = network(rest) {
                    return Ok(n);
                }
                regex(rest).map(|_| Pattern::Regex(rest.to_string()))
            }
        }
    }

    /// One `domains` entry of a panel `dns` route, with Xray's DNS meaning: a plain string is
    /// a substring of the name (`keyword:`), not a regex; `geosite:`/`geoip:` lists are not
    /// available here and are refused.
    pub fn parse_dns_domain(entry: &str) -> Result<Pattern, String> {
        let e = entry.trim();
        match e.split_once(':') {
            Some(("geosite" | "geoip" | "ext", _)) => Err(format!("{e:?}: geo lists are not supported")),
            Some(("regexp" | "domain" | "full" | "keyword", _)) => match Pattern::parse(e)? {
                p @ (Pattern::Regex(_)
                | Pattern::DomainSuffix(_)
                | Pattern::DomainFull(_)
                | Pattern::Keyword(_)) => Ok(p),
                _ => Err(format!("{e:?} is not a domain pattern")),
            },
            _ if e.is_empty() => Err("empty pattern".into()),
            _ => Ok(Pattern::Keyword(e.to_ascii_lowercase())),
        }
    }

    /// The entry that parses back to this pattern (what the control plane publishes).
    pub fn to_entry(&self) -> String {
        match self {
            Pattern::Regex(r) => format!("regexp:{r}"),
            Pattern::DomainSuffix(d) => format!("domain:{d}"),
            Pattern::DomainFull(d) => format!("full:{d}"),
            Pattern::Keyword(k) => format!("keyword:{k}"),
            Pattern::Network(ip, len) => format!("cidr:{ip}/{len}"),
            Pattern::Protocol(p) => format!("protocol:{p}"),
        }
    }
}

fn regex(r: &str) -> Result<Regex, String> {
    if r.is_empty() {
        return Err("empty regex (it would match everything)".into());
    }
    RegexBuilder::new(r)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("bad regex: {e}"))
}

fn domain(d: &str) -> Result<String, String> {
    let d = d.trim_start_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(d)
    } else {
        Err(format!("not a domain name: {d:?}"))
    }
}

fn network(s: &str) -> Result<Pattern, String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| format!("not an IP network: {s:?}"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|&l| l <= max)
            .ok_or_else(|| format!("bad prefix length in {s:?}"))?,
    };
    Ok(Pattern::Network(ip, len))
}

/// Parses `ip` or `ip/len` (`ProxyProtocolFrom` entries, `cidr:` rules).
pub fn parse_network(s: &str) -> Result<(IpAddr, u8), String> {
    match network(s.trim())? {
        Pattern::Network(ip, len) => Ok((ip, len)),
        _ => Err(format!("not an IP network: {s:?}")),
    }
}

/// Whether `ip` is in `net/len` (an IPv4-mapped IPv6 address counts as its IPv4 address).
pub fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    // An IPv4-mapped IPv6 destination is compared as the IPv4 address it is.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// What a destination is checked against: the name the client sent, or an IP.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    Domain(&'a str),
    Ip(IpAddr),
}

/// A node's compiled block rules.
#[derive(Debug, Default)]
pub struct AuditRules {
    /// Rule ids, one per pattern below, for logs.
    regex_ids: Vec<i64>,
    regexes: Option<RegexSet>,
    other: Vec<(i64, Pattern)>,
}

/// A `match` entry that was skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub rule_id: i64,
    pub entry: String,
    pub why: String,
}

impl AuditRules {
    /// Compiles `(rule id, entry)` pairs; unusable entries come back in the second value.
    pub fn compile<'a>(entries: impl IntoIterator<Item = (i64, &'a str)>) -> (AuditRules, Vec<Skipped>) {
        let mut rules = AuditRules::default();
        let mut skipped = Vec::new();
        let mut regex_src = Vec::new();
        for (id, entry) in entries {
            match Pattern::parse(entry) {
                Ok(Pattern::Regex(r)) => {
                    rules.regex_ids.push(id);
                    regex_src.push(r);
                }
                Ok(p) => rules.other.push((id, p)),
                Err(why) => skipped.push(Skipped {
                    rule_id: id,
                    entry: entry.to_string(),
                    why,
                }),
            }
        }
        if !regex_src.is_empty() {
            // Each regex compiled alone above, so the set only fails on its combined size.
            match RegexSetBuilder::new(&regex_src)
                .size_limit(REGEX_SIZE_LIMIT * 8)
                .build()
            {
                Ok(set) => rules.regexes = Some(set),
                Err(e) => {
                    for (id, r) in rules.regex_ids.drain(..).zip(regex_src) {
                        skipped.push(Skipped {
                            rule_id: id,
                            entry: format!("regexp:{r}"),
                            why: format!("the node's regexes together are too large: {e}"),
                        });
                    }
                }
            }
        }
        (rules, skipped)
    }

    pub fn is_empty(&self) -> bool {
        self.regexes.is_none() && self.other.is_empty()
    }

    /// True if the node has `protocol:` rules (checked against the sniffed first bytes).
    pub fn has_protocol_rules(&self) -> bool {
        self.other.iter().any(|(_, p)| matches!(p, Pattern::Protocol(_)))
    }

    /// True if some rule tests domain names (a sniffed SNI or Host can be checked against it).
    pub fn has_domain_rules(&self) -> bool {
        self.regexes.is_some()
            || self.other.iter().any(|(_, p)| {
                matches!(
                    p,
                    Pattern::DomainSuffix(_) | Pattern::DomainFull(_) | Pattern::Keyword(_)
                )
            })
    }

    /// Whether the first bytes of a connection to this destination must be sniffed: for a
    /// `protocol:` rule always, for domain rules when the client named an IP (a client that
    /// resolved the name itself still sends it in its TLS SNI or HTTP Host).
    pub fn wants_sniff(&self, dest_is_ip: bool) -> bool {
        self.has_protocol_rules() || (dest_is_ip && self.has_domain_rules())
    }

    /// The id of the first `protocol:` rule naming `protocol` (exact, case-sensitive, as in
    /// the Go agents).
    pub fn blocks_protocol(&self, protocol: &str) -> Option<i64> {
        self.other.iter().find_map(|(id, p)| match p {
            Pattern::Protocol(name) if name == protocol => Some(*id),
            _ => None,
        })
    }

    /// The id of the first rule that blocks `t`, if any.
    pub fn blocks(&self, t: Target<'_>) -> Option<i64> {
        let text;
        let subject: &str = match t {
            Target::Domain(d) => d,
            Target::Ip(ip) => {
                text = ip.to_string();
                &text
            }
        };
        if let Some(set) = &self.regexes {
            if let Some(i) = set.matches(subject).iter().next() {
                return self.regex_ids.get(i).copied();
            }
        }
        let lower = match t {
            Target::Domain(d) => Some(d.trim_end_matches('.').to_ascii_lowercase()),
            Target::Ip(_) => None,
        };
        for (id, p) in &self.other {
            let hit = match (p, &lower, t) {
                (Pattern::DomainSuffix(s), Some(d), _) => {
                    d == s
                        || (d.len() > s.len()
                            && d.ends_with(s.as_str())
                            && d.as_bytes()[d.len() - s.len() - 1] == b'.')
                }
                (Pattern::DomainFull(s), Some(d), _) => d == s,
                (Pattern::Keyword(k), Some(d), _) => d.contains(k.as_str()),
                (Pattern::Network(net, len), None, Target::Ip(ip)) => in_network(ip, *net, *len),
                _ => false,
            };
            if hit {
                return Some(*id);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rules(entries: &[&str]) -> AuditRules {
        let (r, skipped) = AuditRules::compile(entries.iter().enumerate().map(|(i, e)| (i as i64 + 1, *e)));
        assert!(skipped.is_empty(), "{skipped:?}");
        r
    }

    fn dom(r: &AuditRules, d: &str) -> Option<i64> {
        r.blocks(Target::Domain(d))
    }

    fn ip(r: &AuditRules, s: &str) -> Option<i64> {
        r.blocks(Target::Ip(s.parse().unwrap()))
    }

    /// The panel example from the spec (§B): `regexp:(.+\.|^)example\.(com|net)`.
    #[test]
    fn go_compatible_regex_is_an_unanchored_search() {
        let r = rules(&["regexp:(.+\\.|^)example\\.(com|net)", "speedtest"]);
        assert_eq!(dom(&r, "example.com"), Some(1));
        assert_eq!(dom(&r, "www.example.net"), Some(1));
        assert_eq!(dom(&r, "example.org"), None);
        assert_eq!(dom(&r, "www.speedtest.net"), Some(2));
        // Case-sensitive, as in Go.
        assert_eq!(dom(&r, "WWW.SPEEDTEST.NET"), None);
        // IPs are matched as text.
        let r = rules(&["^10\\."]);
        assert_eq!(ip(&r, "10.1.2.3"), Some(1));
        assert_eq!(ip(&r, "110.1.2.3"), None);
    }

    #[test]
    fn domain_forms() {
        let r = rules(&[
            "domain:Example.com",
            "full:exact.org",
            "keyword:torrent",
            "*.google.com",
        ]);
        for (d, want) in [
            ("example.com", Some(1)),
            ("a.b.EXAMPLE.com", Some(1)),
            ("example.com.", Some(1)),
            ("notexample.com", None),
            ("exact.org", Some(2)),
            ("www.exact.org", None),
            ("my-torrent-site.io", Some(3)),
            ("google.com", Some(4)),
            ("mail.google.com", Some(4)),
            ("google.com.evil.io", None),
        ] {
            assert_eq!(dom(&r, d), want, "{d}");
        }
        // Domain rules never match an IP destination.
        assert_eq!(ip(&r, "1.2.3.4"), None);
    }

    #[test]
    fn networks() {
        let r = rules(&["10.0.0.0/8", "cidr:2001:db8::/32", "ip:192.0.2.7", "0.0.0.0/0"]);
        assert_eq!(ip(&r, "10.200.0.1"), Some(1));
        assert_eq!(ip(&r, "::ffff:10.0.0.1"), Some(1), "IPv4-mapped");
        assert_eq!(ip(&r, "2001:db8:1::1"), Some(2));
        assert_eq!(ip(&r, "2001:db9::1"), None);
        assert_eq!(ip(&r, "192.0.2.7"), Some(3));
        assert_eq!(ip(&r, "8.8.8.8"), Some(4), "/0 is every IPv4 address");
        assert_eq!(dom(&r, "10.0.0.0"), None, "a domain is not an IP");
    }

    #[test]
    fn bad_entries_are_skipped_with_a_reason() {
        let (r, skipped) = AuditRules::compile([
            (1, "regexp:(unclosed"),
            (2, "*.google.com"),
            (3, "regexp:"),
            (4, "cidr:10.0.0.0/33"),
            (5, "domain:bad domain"),
            (6, "protocol:bittorrent"),
        ]);
        let ids: Vec<i64> = skipped.iter().map(|s| s.rule_id).collect();
        assert_eq!(ids, [1, 3, 4, 5], "{skipped:?}");
        assert!(skipped[0].why.contains("bad regex"));
        assert_eq!(dom(&r, "www.google.com"), Some(2));
        assert!(r.has_protocol_rules());
        // A protocol rule alone blocks no destination.
        assert_eq!(dom(&r, "anything.com"), None);
    }

    #[test]
    fn entries_round_trip_through_their_normal_form() {
        for e in [
            "regexp:^a",
            "domain:x.io",
            "full:x.io",
            "keyword:k",
            "cidr:10.0.0.0/8",
            "protocol:tls",
        ] {
            let p = Pattern::parse(e).unwrap();
            assert_eq!(Pattern::parse(&p.to_entry()).unwrap(), p, "{e}");
        }
        assert_eq!(Pattern::parse("*.a.io").unwrap().to_entry(), "domain:a.io");
        assert_eq!(Pattern::parse("1.2.3.4").unwrap().to_entry(), "cidr:1.2.3.4/32");
    }

    proptest::proptest! {
        /// Panel input: any entry either compiles or is skipped with a reason, and matching
        /// any destination against the result never panics.
        #[test]
        fn any_entry_is_handled(entry in ".{0,64}", host in "[a-z0-9.-]{0,40}", a in proptest::prelude::any::<u32>()) {
            let (r, skipped) = AuditRules::compile([(1, entry.as_str())]);
            proptest::prop_assert!(skipped.len() <= 1);
            let _ = r.blocks(Target::Domain(&host));
            let _ = r.blocks(Target::Ip(IpAddr::V4(a.into())));
            if let Ok(p) = Pattern::parse(&entry) {
                proptest::prop_assert_eq!(Pattern::parse(&p.to_entry()), Ok(p));
            }
        }
    }

    #[test]
    fn dns_route_domains_use_xray_dns_meaning() {
        let p = |e: &str| Pattern::parse_dns_domain(e).map(|p| p.to_entry());
        assert_eq!(p("google"), Ok("keyword:google".into()));
        assert_eq!(p("domain:Example.com"), Ok("domain:example.com".into()));
        assert_eq!(p("full:a.io"), Ok("full:a.io".into()));
        assert_eq!(p("regexp:^x\\."), Ok("regexp:^x\\.".into()));
        assert!(p("geosite:cn").is_err());
        assert!(p("").is_err());
    }

    #[test]
    fn empty_rules_block_nothing() {
        let r = AuditRules::default();
        assert!(r.is_empty());
        assert_eq!(dom(&r, "example.com"), None);
        assert_eq!(ip(&r, "10.0.0.1"), None);
    }
}
