//! From the positioned JSON tree to [`Config`]: Go json v1 semantics (keys case-insensitive,
//! the last of duplicate keys wins, `null` keeps the default, no quoted numbers), unknown keys
//! collected as warnings, per-node validation with exact positions.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::error::{ConfigError, ConfigWarning};
use super::json::{self, JKind, JMember, JVal, LineIndex};
use super::model::*;
use super::preprocess;

/// Larger files are refused (a config is a few KiB; this bounds memory on a wrong path).
const MAX_FILE_BYTES: u64 = 16 << 20;
/// `Include` chains longer than this are refused.
const MAX_INCLUDE_DEPTH: usize = 8;

/// One source file: its name and the map from byte offsets to line/column.
pub(crate) struct Src {
    file: PathBuf,
    lines: LineIndex,
}

impl Src {
    fn err(&self, pos: usize, path: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.lines.line_col(pos);
        ConfigError::Invalid {
            file: self.file.clone(),
            line,
            column,
            path: path.to_owned(),
            message: message.into(),
        }
    }

    fn warning(&self, pos: usize, path: &str, message: impl Into<String>) -> ConfigWarning {
        let (line, column) = self.lines.line_col(pos);
        ConfigWarning {
            file: self.file.clone(),
            line,
            column,
            path: path.to_owned(),
            message: message.into(),
        }
    }

    fn location(&self, pos: usize) -> String {
        let (line, column) = self.lines.line_col(pos);
        format!("{}:{line}:{column}", self.file.display())
    }
}

/// Read a file with a size cap.
pub(crate) fn read_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let read_err = |source| ConfigError::Read {
        file: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::Syntax {
            file: path.to_owned(),
            line: 1,
            column: 1,
            message: format!("file is larger than {MAX_FILE_BYTES} bytes; is this really the config file?"),
        });
    }
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) => {
            let offset = e.utf8_error().valid_up_to();
            let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let prefix_len = lossy.len().min(offset);
            let (line, column) = LineIndex::new(lossy.get(..prefix_len).unwrap_or("")).line_col(prefix_len);
            Err(ConfigError::Syntax {
                file: path.to_owned(),
                line,
                column,
                message: "invalid UTF-8 (the file must be UTF-8 text)".to_owned(),
            })
        }
    }
}

/// Pre-process and parse one file's text.
fn parse_text(text: &str, file: &Path) -> Result<(Src, JVal), ConfigError> {
    let lines = LineIndex::new(text);
    let syntax = |offset: usize, message: String| {
        let (line, column) = lines.line_col(offset);
        ConfigError::Syntax {
            file: file.to_owned(),
            line,
            column,
            message,
        }
    };
    // A UTF-8 byte order mark is not JSON; editors add it. Blank it like a comment.
    let body = match text.strip_prefix('\u{feff}') {
        Some(rest) => format!("   {rest}"),
        None => text.to_owned(),
    };
    let blanked = preprocess::blank_comments(&body)
        .map_err(|e| syntax(e.offset, "unterminated /* comment (missing */)".to_owned()))?;
    let root = json::parse(&blanked).map_err(|e| syntax(e.offset, e.message))?;
    Ok((
        Src {
            file: file.to_owned(),
            lines,
        },
        root,
    ))
}

/// Decode the main config text. `origin` names the file in messages and anchors `Include`s.
pub(crate) fn decode(text: &str, origin: &Path) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
    let (src, root) = parse_text(text, origin)?;
    let warnings = RefCell::new(Vec::new());
    let d = Dec {
        src: &src,
        warnings: &warnings,
        origin,
    };
    let config = decode_top(d, &root)?;
    Ok((config, warnings.into_inner()))
}

#[derive(Clone, Copy)]
struct Dec<'a> {
    src: &'a Src,
    warnings: &'a RefCell<Vec<ConfigWarning>>,
    /// The main config file (includes are resolved relative to the including file).
    origin: &'a Path,
}

impl Dec<'_> {
    fn warn(&self, pos: usize, path: &str, message: impl Into<String>) {
        self.warnings
            .borrow_mut()
            .push(self.src.warning(pos, path, message));
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// A JSON object being decoded: remembers which members were consumed.
struct Obj<'a> {
    d: Dec<'a>,
    path: String,
    members: &'a [JMember],
    used: Vec<bool>,
    known: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    fn new(d: Dec<'a>, path: &str, v: &'a JVal) -> Result<Self, ConfigError> {
        match &v.kind {
            JKind::Obj(members) => Ok(Obj {
                d,
                path: path.to_owned(),
                members,
                used: vec![false; members.len()],
                known: Vec::new(),
            }),
            _ => Err(d
                .src
                .err(v.pos, path, format!("expected an object, found {}", v.describe()))),
        }
    }

    fn sub(&self, name: &str) -> String {
        join(&self.path, name)
    }

    /// The value of `names[0]` (or one of its aliases), matched case-insensitively; with
    /// duplicates the last one wins (Go json v1) and the earlier ones are warned about.
    /// `null` counts as absent.
    fn take_any(&mut self, names: &[&'static str]) -> Option<&'a JVal> {
        self.known.extend_from_slice(names);
        let mut found: Option<&'a JMember> = None;
        for (member, used) in self.members.iter().zip(self.used.iter_mut()) {
            if names.iter().any(|n| member.key.eq_ignore_ascii_case(n)) {
                *used = true;
                if let Some(prev) = found {
                    self.d.warn(
                        prev.key_pos,
                        &join(&self.path, &prev.key),
                        format!(
                            "duplicate key; the later {:?} at {} wins",
                            member.key,
                            self.d.src.location(member.key_pos)
                        ),
                    );
                }
                found = Some(member);
            }
        }
        found.map(|m| &m.value).filter(|v| v.kind != JKind::Null)
    }

    fn take(&mut self, name: &'static str) -> Option<&'a JVal> {
        self.take_any(&[name])
    }

    fn get<T>(
        &mut self,
        name: &'static str,
        conv: fn(&Src, &str, &JVal) -> Result<T, ConfigError>,
    ) -> Result<Option<T>, ConfigError> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => conv(self.d.src, &self.sub(name), v).map(Some),
        }
    }

    fn string(&mut self, name: &'static str) -> Result<Option<String>, ConfigError> {
        self.get(name, as_string)
    }

    fn boolean(&mut self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        Ok(self.get(name, as_bool)?.unwrap_or(default))
    }

    fn int(&mut self, name: &'static str) -> Result<Option<i64>, ConfigError> {
        self.get(name, as_i64)
    }

    fn uint(&mut self, name: &'static str) -> Result<Option<u64>, ConfigError> {
        self.get(name, as_u64)
    }

    fn u32(&mut self, name: &'static str) -> Result<Option<u32>, ConfigError> {
        self.get(name, as_u32)
    }

    /// A Go `int` that only makes sense ≥ 0: negative values are a warning and mean 0.
    fn count(&mut self, name: &'static str) -> Result<u64, ConfigError> {
        let Some(v) = self.take(name) else { return Ok(0) };
        let path = self.sub(name);
        let n = as_i64(self.d.src, &path, v)?;
        if n < 0 {
            self.d.warn(v.pos, &path, format!("negative value {n} means 0"));
        }
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn child(&mut self, name: &'static str) -> Result<Option<Obj<'a>>, ConfigError> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => Obj::new(self.d, &self.sub(name), v).map(Some),
        }
    }

    /// Report every member nobody asked for.
    fn finish(self) {
        for (member, used) in self.members.iter().zip(&self.used) {
            if !used {
                let hint = hint_for(&member.key, &self.known);
                self.d.warn(
                    member.key_pos,
                    &join(&self.path, &member.key),
                    format!("unknown key {:?} (ignored){hint}", member.key),
                );
            }
        }
    }
}

/// "did you mean" for an unknown key.
fn hint_for(key: &str, known: &[&'static str]) -> String {
    let lower = key.to_ascii_lowercase();
    let special = match lower.as_str() {
        "minreporttraffic" => Some("; did you mean ReportMinTraffic? (Go v2sp ignores this key too)"),
        "tcpfastopen" => Some("; did you mean EnableTFO?"),
        "sniffenabled" => Some("; sniffing is on unless DisableSniffing is true"),
        "connectionconfig" => Some("; did you mean XrayConnectionConfig? (Go v2sp ignores this key too)"),
        _ => None,
    };
    if let Some(s) = special {
        return s.to_owned();
    }
    known
        .iter()
        .filter(|k| edit_distance(&lower, &k.to_ascii_lowercase()) <= 2)
        .min_by_key(|k| edit_distance(&lower, &k.to_ascii_lowercase()))
        .map(|k| format!("; did you mean {k}?"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(usize::MAX / 2) + usize::from(ca != *cb);
            let del = prev.get(j + 1).copied().unwrap_or(usize::MAX / 2) + 1;
            let ins = cur.get(j).copied().unwrap_or(usize::MAX / 2) + 1;
            cur.push(sub.min(del).min(ins));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

// ---------- scalar conversions (Go json v1: strict types) ----------

fn as_string(src: &Src, path: &str, v: &JVal) -> Result<String, ConfigError> {
    match &v.kind {
        JKind::Str(s) => Ok(s.clone()),
        _ => Err(src.err(v.pos, path, format!("expected a string, found {}", v.describe()))),
    }
}

fn as_bool(src: &Src, path: &str, v: &JVal) -> Result<bool, ConfigError> {
    match &v.kind {
        JKind::Bool(b) => Ok(*b),
        _ => Err(src.err(
            v.pos,
            path,
            format!("expected true or false, found {}", v.describe()),
        )),
    }
}

fn as_i64(src: &Src, path: &str, v: &JVal) -> Result<i64, ConfigError> {
    match &v.kind {
        JKind::Num(raw) if raw.contains(['.', 'e', 'E']) => {
            Err(src.err(v.pos, path, format!("expected an integer, found {raw}")))
        }
        JKind::Num(raw) => raw
            .parse::<i64>()
            .map_err(|_| src.err(v.pos, path, format!("integer {raw} is out of range"))),
        _ => Err(src.err(
            v.pos,
            path,
            format!("expected an integer, found {}", v.describe()),
        )),
    }
}

fn as_u64(src: &Src, path: &str, v: &JVal) -> Result<u64, ConfigError> {
    let n = as_i64(src, path, v)?;
    u64::try_from(n).map_err(|_| src.err(v.pos, path, format!("must not be negative, found {n}")))
}

fn as_u32(src: &Src, path: &str, v: &JVal) -> Result<u32, ConfigError> {
    let n = as_i64(src, path, v)?;
    u32::try_from(n).map_err(|_| {
        src.err(
            v.pos,
            path,
            format!("must be between 0 and {}, found {n}", u32::MAX),
        )
    })
}

/// A port or address given as a string or a number (sing `ServerPort`, xray `Dest`).
fn as_string_or_int(src: &Src, path: &str, v: &JVal) -> Result<String, ConfigError> {
    match &v.kind {
        JKind::Str(s) => Ok(s.clone()),
        JKind::Num(_) => as_u64(src, path, v).map(|n| n.to_string()),
        _ => Err(src.err(
            v.pos,
            path,
            format!("expected a string or an integer, found {}", v.describe()),
        )),
    }
}

fn absolute_path(src: &Src, path: &str, v: &JVal) -> Result<PathBuf, ConfigError> {
    let s = as_string(src, path, v)?;
    if s.starts_with('/') {
        Ok(PathBuf::from(s))
    } else {
        Err(src.err(
            v.pos,
            path,
            format!("must be an absolute path, found {}", v.describe()),
        ))
    }
}

/// `["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]`, each in normal form `ip/len`.
fn as_networks(src: &Src, path: &str, v: &JVal) -> Result<Vec<String>, ConfigError> {
    let JKind::Arr(items) = &v.kind else {
        return Err(src.err(
            v.pos,
            path,
            format!("expected an array of CIDRs, found {}", v.describe()),
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let s = as_string(src, &p, item)?;
        let (ip, len) = crate::audit::parse_network(&s).map_err(|e| src.err(item.pos, &p, e))?;
        out.push(format!("{ip}/{len}"));
    }
    Ok(out)
}

fn ip_or_unspecified(src: &Src, path: &str, v: &JVal) -> Result<IpAddr, ConfigError> {
    let s = as_string(src, path, v)?;
    if s.is_empty() {
        return Ok(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    }
    s.parse::<IpAddr>().map_err(|_| {
        src.err(
            v.pos,
            path,
            format!("expected an IP address, found {}", v.describe()),
        )
    })
}

// ---------- top level ----------

fn decode_top(d: Dec<'_>, root: &JVal) -> Result<Config, ConfigError> {
    if !matches!(root.kind, JKind::Obj(_)) {
        return Err(d.src.err(
            root.pos,
            "(top level)",
            format!(
                "expected an object with Log, Cores and Nodes, found {}",
                root.describe()
            ),
        ));
    }
    let mut top = Obj::new(d, "", root)?;
    let mut config = Config::default();

    if let Some(mut log) = top.child("Log")? {
        if let Some(v) = log.take("Level") {
            let path = log.sub("Level");
            let level = as_string(d.src, &path, v)?;
            config.log.level = match level.to_ascii_lowercase().as_str() {
                "debug" => LogLevel::Debug,
                "info" => LogLevel::Info,
                "warn" | "warning" => LogLevel::Warn,
                "error" => LogLevel::Error,
                _ => {
                    d.warn(
                        v.pos,
                        &path,
                        format!(
                            "unknown log level {level:?}; using info (expected debug, info, warn or error)"
                        ),
                    );
                    LogLevel::Info
                }
            };
        }
        config.log.output = log.string("Output")?.unwrap_or_default();
        if let Some(v) = log.take("Format") {
            let path = log.sub("Format");
            let format = as_string(d.src, &path, v)?;
            config.log.format = match LogFormat::parse(&format) {
                Some(f) => f,
                None => {
                    d.warn(
                        v.pos,
                        &path,
                        format!("unknown log format {format:?}; using text (expected text or json)"),
                    );
                    LogFormat::Text
                }
            };
        }
        log.finish();
    }

    if let Some(v) = top.take("Cores") {
        let JKind::Arr(items) = &v.kind else {
            return Err(d.src.err(
                v.pos,
                "Cores",
                format!("expected an array, found {}", v.describe()),
            ));
        };
        for (i, item) in items.iter().enumerate() {
            config.cores.push(decode_core(d, &format!("Cores[{i}]"), item)?);
        }
    }

    if let Some(v) = top.take("StateDir") {
        config.state_dir = absolute_path(d.src, "StateDir", v)?;
    }

    if let Some(mut m) = top.child("Metrics")? {
        if let Some(v) = m.take("Listen") {
            let path = m.sub("Listen");
            let s = as_string(d.src, &path, v)?;
            if !s.is_empty() {
                let addr: std::net::SocketAddr = s.parse().map_err(|_| {
                    d.src.err(
                        v.pos,
                        &path,
                        format!("expected host:port (an IP address and a port), found {s:?}"),
                    )
                })?;
                let ip = addr.ip();
                let private = ip.is_loopback()
                    || match ip {
                        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local(),
                        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
                    };
                if !private {
                    d.warn(
                        v.pos,
                        &path,
                        format!("the metrics endpoint has no authentication and {addr} is not a loopback or private address"),
                    );
                }
                config.metrics.listen = Some(addr);
            }
        }
        config.metrics.top_users = m.u32("TopUsers")?.unwrap_or(0);
        m.finish();
    }

    let mut explicit_timeouts = false;
    if let Some(mut dp) = top.child("Dataplane")? {
        explicit_timeouts = decode_dataplane(&mut dp, &mut config.dataplane)?;
        dp.finish();
    }
    if !explicit_timeouts {
        let from_core = config
            .cores
            .iter()
            .enumerate()
            .find_map(|(i, c)| c.connection.as_ref().map(|x| (i, x)));
        if let Some((i, x)) = from_core {
            let t = &mut config.dataplane.timeouts;
            t.handshake = x.handshake;
            t.conn_idle = x.conn_idle;
            t.uplink_only = x.uplink_only;
            t.downlink_only = x.downlink_only;
            config.dataplane.timeouts_from = TimeoutsSource::XrayConnectionConfig(i);
        }
    }

    // tag -> (key path, file:line:col) of the node that has it, for the duplicate-tag check
    let mut seen: HashMap<String, (String, String)> = HashMap::new();
    match top.take("Nodes") {
        None => d.warn(root.pos, "Nodes", "no Nodes: this agent will serve nothing"),
        Some(v) => {
            let JKind::Arr(items) = &v.kind else {
                return Err(d.src.err(
                    v.pos,
                    "Nodes",
                    format!("expected an array, found {}", v.describe()),
                ));
            };
            for (i, item) in items.iter().enumerate() {
                let path = format!("Nodes[{i}]");
                let mut node = decode_node(d, &path, item, d.origin, 0)?;
                node.origin.index = i;
                let tag = node.tag();
                let tag_path = if node.name.is_some() {
                    format!("{path}.Name")
                } else {
                    path.clone()
                };
                let here = d.src.location(item.pos);
                if let Some((other_path, other_loc)) = seen.get(&tag) {
                    let what = if node.name.is_some() {
                        "node Name"
                    } else {
                        "node tag (ApiHost, NodeType, NodeID)"
                    };
                    return Err(d.src.err(
                        item.pos,
                        &tag_path,
                        format!("duplicate {what} {tag:?}: {other_path} at {other_loc} has the same one"),
                    ));
                }
                seen.insert(tag, (path, here));
                config.nodes.push(node);
            }
        }
    }
    top.finish();
    Ok(config)
}

fn decode_dataplane(dp: &mut Obj<'_>, out: &mut DataplaneSettings) -> Result<bool, ConfigError> {
    let src = dp.d.src;
    if let Some(n) = dp.u32("Workers")? {
        out.workers = n;
    }
    if let Some(v) = dp.take("IO") {
        let path = dp.sub("IO");
        out.io = match as_string(src, &path, v)?.to_ascii_lowercase().as_str() {
            "auto" | "" => IoMode::Auto,
            "uring" | "io_uring" => IoMode::Uring,
            "epoll" => IoMode::Epoll,
            _ => {
                return Err(src.err(
                    v.pos,
                    &path,
                    format!(
                        "expected \"auto\", \"uring\" or \"epoll\", found {}",
                        v.describe()
                    ),
                ))
            }
        };
    }
    if let Some(v) = dp.take("ShmDir") {
        out.shm_dir = absolute_path(src, &dp.sub("ShmDir"), v)?;
    }
    out.allow_private_destinations = dp.boolean("AllowPrivateDestinations", false)?;
    if let Some(n) = dp.u32("MaxHandshakes")? {
        out.handshake_limits.per_worker = n;
    }
    if let Some(n) = dp.u32("MaxHandshakesPerIP")? {
        out.handshake_limits.per_ip = n;
    }
    if let Some(n) = dp.u32("DrainSeconds")? {
        out.drain_seconds = n;
    }
    let Some(mut t) = dp.child("Timeouts")? else {
        return Ok(false);
    };
    let defaults = Timeouts::default();
    out.timeouts = Timeouts {
        handshake: t.u32("Handshake")?.unwrap_or(defaults.handshake),
        conn_idle: t.u32("ConnIdle")?.unwrap_or(defaults.conn_idle),
        uplink_only: t.u32("UplinkOnly")?.unwrap_or(defaults.uplink_only),
        downlink_only: t.u32("DownlinkOnly")?.unwrap_or(defaults.downlink_only),
        connect: t.u32("Connect")?.unwrap_or(defaults.connect),
    };
    out.timeouts_from = TimeoutsSource::Dataplane;
    t.finish();
    Ok(true)
}

fn decode_core(d: Dec<'_>, path: &str, v: &JVal) -> Result<CoreConfig, ConfigError> {
    let mut o = Obj::new(d, path, v)?;
    let (core_type, type_pos) = match o.take("Type") {
        Some(t) => (as_string(d.src, &o.sub("Type"), t)?.to_ascii_lowercase(), t.pos),
        None => (String::new(), v.pos),
    };
    let core_type = if core_type.is_empty() {
        "xray".to_owned()
    } else {
        core_type
    };
    if !matches!(core_type.as_str(), "xray" | "sing" | "hysteria2") {
        d.warn(
            type_pos,
            &o.sub("Type"),
            format!("unknown core type {core_type:?} (Cores are informational in v2sp)"),
        );
    }
    let mut c = CoreConfig::defaults_for(&core_type);
    c.name = o.string("Name")?.unwrap_or_default();
    if let Some(mut log) = o.child("Log")? {
        if let Some(s) = log.string("Level")? {
            c.log.level = s;
        }
        c.log.access_path = log.string("AccessPath")?.unwrap_or_default();
        c.log.error_path = log.string("ErrorPath")?.unwrap_or_default();
        c.log.output = log.string("Output")?.unwrap_or_default();
        c.log.disable = log.boolean("Disable", false)?;
        c.log.timestamp = log.boolean("Timestamp", true)?;
        log.finish();
    }
    if let Some(s) = o.string("AssetPath")? {
        c.asset_path = s;
    }
    c.dns_config_path = o.string("DnsConfigPath")?.unwrap_or_default();
    c.route_config_path = o.string("RouteConfigPath")?.unwrap_or_default();
    c.inbound_config_path = o.string("InboundConfigPath")?.unwrap_or_default();
    c.outbound_config_path = o.string("OutboundConfigPath")?.unwrap_or_default();
    if let Some(mut x) = o.child("XrayConnectionConfig")? {
        let dflt = XrayConnectionConfig::default();
        let buffer_size = match x.take("bufferSize") {
            None => dflt.buffer_size,
            Some(b) => {
                let path = x.sub("bufferSize");
                let n = as_i64(d.src, &path, b)?;
                i32::try_from(n)
                    .map_err(|_| d.src.err(b.pos, &path, format!("integer {n} is out of range")))?
            }
        };
        c.connection = Some(XrayConnectionConfig {
            handshake: x.u32("handshake")?.unwrap_or(dflt.handshake),
            conn_idle: x.u32("connIdle")?.unwrap_or(dflt.conn_idle),
            uplink_only: x.u32("uplinkOnly")?.unwrap_or(dflt.uplink_only),
            downlink_only: x.u32("downlinkOnly")?.unwrap_or(dflt.downlink_only),
            buffer_size,
        });
        // xray's policy keys that v2sp always forces on
        x.boolean("statsUserUplink", true)?;
        x.boolean("statsUserDownlink", true)?;
        x.finish();
    }
    c.original_path = o.string("OriginalPath")?.unwrap_or_default();
    if let Some(mut n) = o.child("NTP")? {
        let dflt = NtpConfig::default();
        let server_port = match n.take("ServerPort") {
            None => dflt.server_port,
            Some(p) => {
                let path = n.sub("ServerPort");
                let port = as_u64(d.src, &path, p)?;
                u16::try_from(port)
                    .map_err(|_| d.src.err(p.pos, &path, format!("port {port} is out of range")))?
            }
        };
        c.ntp = Some(NtpConfig {
            enable: n.boolean("Enable", false)?,
            server: n.string("Server")?.unwrap_or(dflt.server),
            server_port,
        });
        n.finish();
    }
    c.binary_path = o.string("BinaryPath")?.unwrap_or_default();
    c.config_dir = o.string("ConfigDir")?.unwrap_or_default();
    o.finish();
    Ok(c)
}

// ---------- nodes ----------

/// Decode one `Nodes[i]` entry (any of the three forms). `including` is the file whose
/// text `v` comes from (includes are resolved relative to it).
fn decode_node(
    d: Dec<'_>,
    path: &str,
    v: &JVal,
    including: &Path,
    depth: usize,
) -> Result<NodeEntry, ConfigError> {
    let mut outer = Obj::new(d, path, v)?;
    if let Some(inc) = outer.take("Include") {
        let inc_path = outer.sub("Include");
        let target = as_string(d.src, &inc_path, inc)?;
        if !target.is_empty() {
            for (m, used) in outer.members.iter().zip(&outer.used) {
                if !used {
                    d.warn(
                        m.key_pos,
                        &join(path, &m.key),
                        format!("key {:?} is ignored because Include is set", m.key),
                    );
                }
            }
            return decode_include(d, path, inc, &inc_path, &target, including, depth);
        }
    }
    let mut node = NodeEntry {
        origin: NodeOrigin {
            file: d.src.file.clone(),
            line: 0,
            column: 0,
            index: 0,
        },
        ..NodeEntry::default()
    };
    (node.origin.line, node.origin.column) = d.src.lines.line_col(v.pos);

    match outer.child("ApiConfig")? {
        Some(mut api) => {
            read_api(&mut api, &mut node, v.pos)?;
            api.finish();
        }
        None => read_api(&mut outer, &mut node, v.pos)?,
    }
    match outer.child("Options")? {
        Some(mut opts) => {
            read_options(&mut opts, &mut node)?;
            opts.finish();
        }
        None => read_options(&mut outer, &mut node)?,
    }
    outer.finish();
    Ok(node)
}

fn decode_include(
    d: Dec<'_>,
    path: &str,
    inc: &JVal,
    inc_path: &str,
    target: &str,
    including: &Path,
    depth: usize,
) -> Result<NodeEntry, ConfigError> {
    let lower = target.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Err(d.src.err(
            inc.pos,
            inc_path,
            format!(
                "remote includes ({target}) are not supported; download the file and Include its local path"
            ),
        ));
    }
    if depth >= MAX_INCLUDE_DEPTH {
        return Err(d.src.err(
            inc.pos,
            inc_path,
            format!("Include nested deeper than {MAX_INCLUDE_DEPTH} files (a loop?)"),
        ));
    }
    let file = match including.parent() {
        Some(dir) if Path::new(target).is_relative() => dir.join(target),
        _ => PathBuf::from(target),
    };
    let text = match read_file(&file) {
        Ok(t) => t,
        Err(ConfigError::Read { source, .. }) => {
            return Err(d.src.err(
                inc.pos,
                inc_path,
                format!("cannot read included file {}: {source}", file.display()),
            ))
        }
        Err(e) => return Err(e),
    };
    let (src, root) = parse_text(&text, &file)?;
    let inner = Dec {
        src: &src,
        warnings: d.warnings,
        origin: d.origin,
    };
    decode_node(inner, path, &root, &file, depth + 1)
}

fn read_api(o: &mut Obj<'_>, node: &mut NodeEntry, node_pos: usize) -> Result<(), ConfigError> {
    let src = o.d.src;
    let mut host_pos = node_pos;
    if let Some(v) = o.take("ApiHost") {
        let path = o.sub("ApiHost");
        node.api_host = as_string(src, &path, v)?;
        host_pos = v.pos;
        check_api_host(&node.api_host).map_err(|m| src.err(v.pos, &path, m))?;
    }
    node.api_key = o.string("ApiKey")?.unwrap_or_default();
    if let Some(v) = o.take("MachineID") {
        let path = o.sub("MachineID");
        let m = as_i64(src, &path, v)?;
        node.machine_id = Some(
            u32::try_from(m)
                .ok()
                .filter(|&m| m > 0)
                .ok_or_else(|| src.err(v.pos, &path, format!("must be a positive integer, found {m}")))?,
        );
    }
    match o.take("NodeID") {
        None if node.machine_id.is_some() => {}
        None => {
            return Err(src.err(
                node_pos,
                &o.sub("NodeID"),
                "missing: every node needs the NodeID it has on the panel",
            ))
        }
        Some(v) => {
            let path = o.sub("NodeID");
            node.node_id = as_i64(src, &path, v)?;
            if node.node_id <= 0 {
                return Err(src.err(
                    v.pos,
                    &path,
                    format!("must be a positive integer, found {}", node.node_id),
                ));
            }
        }
    }
    if let Some(v) = o.take("NodeType") {
        let path = o.sub("NodeType");
        let raw = as_string(src, &path, v)?;
        node.node_type = match raw.trim().to_ascii_lowercase().as_str() {
            "v2ray" => "vmess".to_owned(),
            t @ ("" | "vmess" | "vless" | "trojan" | "shadowsocks" | "hysteria2" | "hysteria" | "anytls" | "tuic") => t.to_owned(),
            _ => {
                return Err(src.err(
                    v.pos,
                    &path,
                    format!(
                        "unsupported node type {}; expected one of vmess, vless, trojan, shadowsocks, hysteria2, hysteria, anytls, tuic (v2ray = vmess) or \"\" to use the panel's",
                        v.describe()
                    ),
                ))
            }
        };
    }
    if let Some(t) = o.int("Timeout")? {
        node.timeout_secs = u64::try_from(t)
            .ok()
            .filter(|t| *t > 0)
            .unwrap_or(NONPOSITIVE_TIMEOUT_SECS);
    }
    if let Some(v) = o.take("ApiSendIP") {
        let path = o.sub("ApiSendIP");
        let s = as_string(src, &path, v)?;
        if !s.is_empty() {
            s.parse::<IpAddr>().map_err(|_| {
                src.err(
                    v.pos,
                    &path,
                    format!("expected an IP address, found {}", v.describe()),
                )
            })?;
            node.api_send_ip = Some(s);
        }
    }
    if let Some(v) = o.take("ApiCAFile") {
        let s = as_string(src, &o.sub("ApiCAFile"), v)?;
        node.api_ca_file = Some(s).filter(|s| !s.trim().is_empty());
    }
    if let Some(v) = o.take("ApiDialect") {
        let path = o.sub("ApiDialect");
        node.api_dialect = match as_string(src, &path, v)?.to_ascii_lowercase().as_str() {
            "" | "auto" => ApiDialect::Auto,
            "single" => ApiDialect::Single,
            "uniproxy" => ApiDialect::UniProxy,
            _ => {
                return Err(src.err(
                    v.pos,
                    &path,
                    format!(
                        "expected \"auto\", \"single\" or \"uniproxy\", found {}",
                        v.describe()
                    ),
                ))
            }
        };
    }
    if let Some(v) = o.take("ApiVersion") {
        let path = o.sub("ApiVersion");
        node.api_version = match as_string(src, &path, v)?.to_ascii_lowercase().as_str() {
            "" | "auto" => ApiVersion::Auto,
            "v1" | "1" => ApiVersion::V1,
            "v2" | "2" => ApiVersion::V2,
            _ => {
                return Err(src.err(
                    v.pos,
                    &path,
                    format!("expected \"auto\", \"v1\" or \"v2\", found {}", v.describe()),
                ))
            }
        };
    }
    node.rule_list_path = o.string("RuleListPath")?.filter(|s| !s.is_empty());
    let remote = !node.api_host.to_ascii_lowercase().starts_with("file:");
    if remote && node.api_key.is_empty() {
        o.d.warn(
            host_pos,
            &o.sub("ApiKey"),
            "ApiKey is empty; the panel will refuse this node's requests",
        );
    }
    Ok(())
}

/// `ApiHost` must be an `http(s)://host[:port][/path][?query]` URL or `file:///abs/path`.
fn check_api_host(host: &str) -> Result<(), String> {
    let Some((scheme, rest)) = host.split_once("://") else {
        return Err(format!(
            "{host:?} is not a URL; expected http://…, https://… or file:///path/to/nodes.json"
        ));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "https" => {}
        "file" => {
            return if rest.is_empty() || rest == "/" {
                Err(format!(
                    "{host:?}: a file ApiHost needs a path, like file:///etc/v2sp/nodes.json \
                     (or file://nodes.json, relative to the config file's directory)"
                ))
            } else {
                Ok(())
            }
        }
        other => {
            return Err(format!(
                "unsupported URL scheme {other:?}; expected http, https or file"
            ))
        }
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (hostname, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Err(format!("{host:?}: unterminated [IPv6] address"));
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{host:?}: invalid IPv6 address {addr:?}"));
        }
        match after.strip_prefix(':') {
            Some(p) => (addr, Some(p)),
            None if after.is_empty() => (addr, None),
            None => return Err(format!("{host:?}: unexpected {after:?} after the IPv6 address")),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if hostname.is_empty() {
        return Err(format!("{host:?} has no host name"));
    }
    if hostname.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{host:?}: the host name contains whitespace"));
    }
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(format!("{host:?}: invalid port {p:?}")),
        }
    }
    Ok(())
}

fn read_options(o: &mut Obj<'_>, node: &mut NodeEntry) -> Result<(), ConfigError> {
    let src = o.d.src;
    node.name = o.string("Name")?.filter(|s| !s.is_empty());
    if let Some(v) = o.take("Core") {
        let path = o.sub("Core");
        node.core = as_string(src, &path, v)?.to_ascii_lowercase();
        if !matches!(node.core.as_str(), "" | "xray") {
            o.d.warn(
                v.pos,
                &path,
                format!("Core {:?} is ignored: v2sp has one engine", node.core),
            );
        }
    }
    node.core_name = o.string("CoreName")?.unwrap_or_default();
    if let Some(ip) = o.get("ListenIP", ip_or_unspecified)? {
        node.listen_ip = ip;
    }
    if let Some(ip) = o.get("SendIP", ip_or_unspecified)? {
        node.send_ip = ip;
    }
    node.device_online_min_traffic_kb = o.count("DeviceOnlineMinTraffic")?;
    node.report_min_traffic_kb = o.count("ReportMinTraffic")?;
    node.enable_proxy_protocol = o.boolean("EnableProxyProtocol", false)?;
    let epp_pos = o.take("EnableProxyProtocol").map_or(0, |v| v.pos);
    let from_pos = o.take("ProxyProtocolFrom").map(|v| v.pos);
    node.proxy_protocol_from = o.get("ProxyProtocolFrom", as_networks)?.unwrap_or_default();
    match from_pos {
        Some(pos) if !node.enable_proxy_protocol && !node.proxy_protocol_from.is_empty() => o.d.warn(
            pos,
            &o.sub("ProxyProtocolFrom"),
            "ignored: EnableProxyProtocol is not true",
        ),
        None if node.enable_proxy_protocol => o.d.warn(
            epp_pos,
            &o.sub("ProxyProtocolFrom"),
            "missing: PROXY headers are accepted from loopback addresses only; list your balancers' addresses (CIDRs) here",
        ),
        _ => {}
    }
    node.trusted_proxies = o.get("TrustedProxies", as_networks)?.unwrap_or_default();
    node.enable_dns = o.boolean("EnableDNS", false)?;
    if let Some(v) = o.take("DNSType") {
        let path = o.sub("DNSType");
        let s = as_string(src, &path, v)?;
        const KNOWN: [&str; 4] = ["AsIs", "UseIP", "UseIPv4", "UseIPv6"];
        node.dns_type = match KNOWN.iter().find(|k| k.eq_ignore_ascii_case(&s)) {
            Some(k) => (*k).to_owned(),
            None => {
                if !s.is_empty() {
                    o.d.warn(
                        v.pos,
                        &path,
                        format!("unknown DNSType {s:?} (expected AsIs, UseIP, UseIPv4 or UseIPv6)"),
                    );
                }
                s
            }
        };
    }
    node.enable_tfo = o.boolean("EnableTFO", false)?;
    node.enable_uot = o.boolean("EnableUot", false)?;
    node.disable_iv_check = o.boolean("DisableIVCheck", false)?;
    node.disable_sniffing = o.boolean("DisableSniffing", false)?;
    node.enable_fallback = o.boolean("EnableFallback", false)?;
    if let Some(v) = o.take("FallBackConfigs") {
        node.fallbacks = decode_fallbacks(o.d, &o.sub("FallBackConfigs"), v)?;
        if !node.fallbacks.is_empty() && !node.enable_fallback {
            o.d.warn(
                v.pos,
                &o.sub("FallBackConfigs"),
                "fallbacks are ignored because EnableFallback is false",
            );
        }
    }
    node.enable_sniff = o.boolean("EnableSniff", false)?;
    node.sniff_override_destination = o.boolean("SniffOverrideDestination", true)?;
    node.domain_strategy = o.string("DomainStrategy")?.unwrap_or_default();
    if let Some(mut m) = o.child("MultiplexConfig")? {
        let mut mux = MultiplexConfig {
            enable: m.boolean("Enable", false)?,
            padding: m.boolean("Padding", false)?,
            ..Default::default()
        };
        if let Some(mut b) = m.child("Brutal")? {
            mux.brutal = BrutalConfig {
                enable: b.boolean("Enable", false)?,
                up_mbps: b.uint("UpMbps")?.unwrap_or(0),
                down_mbps: b.uint("DownMbps")?.unwrap_or(0),
            };
            b.finish();
        }
        m.finish();
        node.multiplex = Some(mux);
    }
    node.hysteria2_config_path = o.string("Hysteria2ConfigPath")?.filter(|s| !s.is_empty());
    if let Some(v) = o.take("HopPorts") {
        let path = o.sub("HopPorts");
        let s = as_string(src, &path, v)?;
        if !s.trim().is_empty() {
            let range = crate::dpconfig::PortRange::parse(&s).map_err(|e| src.err(v.pos, &path, e))?;
            node.hop_ports = Some(range);
            if !matches!(node.node_type.as_str(), "" | "hysteria2" | "hysteria") {
                o.d.warn(
                    v.pos,
                    &path,
                    format!(
                        "ignored: port hopping is for Hysteria 2 nodes (this one is {})",
                        node.node_type
                    ),
                );
            }
        }
    }
    if let Some(v) = o.take("Masquerade") {
        let path = o.sub("Masquerade");
        let s = as_string(src, &path, v)?;
        if !s.trim().is_empty() {
            let m = crate::dpconfig::Masquerade::parse(s.trim()).map_err(|e| src.err(v.pos, &path, e))?;
            node.masquerade = Some(m);
            if !matches!(node.node_type.as_str(), "" | "hysteria2" | "hysteria") {
                o.d.warn(
                    v.pos,
                    &path,
                    format!(
                        "ignored: masquerade is for Hysteria 2 nodes (this one is {})",
                        node.node_type
                    ),
                );
            }
        }
    }
    if let Some(mut l) = o.child("LimitConfig")? {
        node.limit = decode_limit(&mut l)?;
        l.finish();
    }
    if let Some(v) = o.take("CertConfig") {
        let mut c = Obj::new(o.d, &o.sub("CertConfig"), v)?;
        node.cert = decode_cert(&mut c, v.pos)?;
        c.finish();
    }
    Ok(())
}

fn decode_limit(l: &mut Obj<'_>) -> Result<LimitConfig, ConfigError> {
    let mut out = LimitConfig {
        enable_realtime: l.boolean("EnableRealtime", false)?,
        speed_limit_mbps: l.count("SpeedLimit")?,
        ..LimitConfig::default()
    };
    // Go: `IPLimit int json:"DeviceLimit"`; accept the field name as an alias.
    if let Some(v) = l.take_any(&["DeviceLimit", "IPLimit"]) {
        let path = l.sub("DeviceLimit");
        let n = as_i64(l.d.src, &path, v)?;
        if n < 0 {
            l.d.warn(v.pos, &path, format!("negative value {n} means 0"));
        }
        out.device_limit = u64::try_from(n).unwrap_or(0);
    }
    out.conn_limit = l.count("ConnLimit")?;
    out.enable_ip_recorder = l.boolean("EnableIpRecorder", false)?;
    out.ip_recorder = l.take("IpRecorderConfig").map(JVal::to_value);
    out.enable_dynamic_speed_limit = l.boolean("EnableDynamicSpeedLimit", false)?;
    if let Some(mut x) = l.child("DynamicSpeedLimitConfig")? {
        out.dynamic_speed_limit = Some(DynamicSpeedLimitConfig {
            periodic_secs: x.count("Periodic")?,
            traffic: x.count("Traffic")?,
            speed_limit_mbps: x.count("SpeedLimit")?,
            expire_time_min: x.count("ExpireTime")?,
        });
        x.finish();
    }
    Ok(out)
}

fn decode_cert(c: &mut Obj<'_>, cert_pos: usize) -> Result<CertConfig, ConfigError> {
    let src = c.d.src;
    let mut out = CertConfig::default();
    let mut mode_pos = cert_pos;
    if let Some(v) = c.take("CertMode") {
        let path = c.sub("CertMode");
        mode_pos = v.pos;
        out.mode_set = true;
        out.cert_mode = match as_string(src, &path, v)?.trim().to_ascii_lowercase().as_str() {
            "" | "none" => CertMode::None,
            "file" => CertMode::File,
            "self" => CertMode::SelfSigned,
            "http" => CertMode::Http,
            "dns" => CertMode::Dns,
            "tls" => CertMode::Tls,
            _ => {
                return Err(src.err(
                    v.pos,
                    &path,
                    format!(
                        "unknown CertMode {}; expected none, file, self, http, dns or tls",
                        v.describe()
                    ),
                ))
            }
        };
    }
    out.cert_domain = c.string("CertDomain")?.unwrap_or_default();
    out.cert_file = c.string("CertFile")?.unwrap_or_default();
    out.key_file = c.string("KeyFile")?.unwrap_or_default();
    out.provider = c.string("Provider")?.unwrap_or_default();
    out.email = c.string("Email")?.unwrap_or_default();
    out.reject_unknown_sni = c.boolean("RejectUnknownSni", false)?;
    out.acme_directory = c.string("ACMEDirectory")?.unwrap_or_default().trim().to_string();
    out.acme_root_ca = c.string("ACMERootCA")?.unwrap_or_default().trim().to_string();
    if let Some(v) = c.take("ACMEHTTPListen") {
        let path = c.sub("ACMEHTTPListen");
        let s = as_string(src, &path, v)?;
        if !s.trim().is_empty() {
            let addr: std::net::SocketAddr = s.trim().parse().map_err(|_| {
                src.err(
                    v.pos,
                    &path,
                    format!("expected host:port (an IP address and a port), found {s:?}"),
                )
            })?;
            out.acme_http_listen = Some(addr);
        }
    }
    if let Some(v) = c.take("DNSEnv") {
        let path = c.sub("DNSEnv");
        let JKind::Obj(members) = &v.kind else {
            return Err(src.err(
                v.pos,
                &path,
                format!("expected an object of strings, found {}", v.describe()),
            ));
        };
        let mut env = BTreeMap::new();
        for m in members {
            let p = join(&path, &m.key);
            env.insert(m.key.clone(), as_string(src, &p, &m.value)?);
        }
        out.dns_env = env;
    }

    let mode = out.cert_mode.as_str();
    let path = c.sub("CertMode");
    if out.cert_mode != CertMode::None {
        let mut missing: Vec<&str> = Vec::new();
        if out.cert_file.is_empty() {
            missing.push("CertFile");
        }
        if out.key_file.is_empty() {
            missing.push("KeyFile");
        }
        if matches!(
            out.cert_mode,
            CertMode::SelfSigned | CertMode::Http | CertMode::Dns | CertMode::Tls
        ) && out.cert_domain.is_empty()
        {
            missing.push("CertDomain");
        }
        if out.cert_mode == CertMode::Dns && out.provider.is_empty() {
            missing.push("Provider");
        }
        if !missing.is_empty() {
            return Err(src.err(
                mode_pos,
                &path,
                format!("CertMode {mode:?} needs {} to be set", missing.join(" and ")),
            ));
        }
    }
    Ok(out)
}

fn decode_fallbacks(d: Dec<'_>, path: &str, v: &JVal) -> Result<Vec<Fallback>, ConfigError> {
    match &v.kind {
        // xray form: [{SNI, Alpn, Path, Dest, ProxyProtocolVer}]
        JKind::Arr(items) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let mut o = Obj::new(d, &format!("{path}[{i}]"), item)?;
                let fb = Fallback {
                    sni: o.string("SNI")?.unwrap_or_default(),
                    alpn: o.string("Alpn")?.unwrap_or_default(),
                    path: o.string("Path")?.unwrap_or_default(),
                    dest: o.get("Dest", as_string_or_int)?.unwrap_or_default(),
                    proxy_protocol_ver: o.uint("ProxyProtocolVer")?.unwrap_or(0),
                };
                if fb.dest.is_empty() {
                    return Err(d
                        .src
                        .err(item.pos, &o.sub("Dest"), "missing: every fallback needs a Dest"));
                }
                if fb.proxy_protocol_ver > 2 {
                    return Err(d.src.err(
                        item.pos,
                        &o.sub("ProxyProtocolVer"),
                        format!("must be 0, 1 or 2, found {}", fb.proxy_protocol_ver),
                    ));
                }
                o.finish();
                out.push(fb);
            }
            Ok(out)
        }
        // sing form: {FallBack:{Server,ServerPort}, FallBackForALPN:{<alpn>:{Server,ServerPort}}}
        JKind::Obj(_) => {
            let mut o = Obj::new(d, path, v)?;
            let mut out = Vec::new();
            if let Some(fb) = o.take("FallBack") {
                out.push(sing_target(d, &o.sub("FallBack"), fb, String::new())?);
            }
            if let Some(per_alpn) = o.take("FallBackForALPN") {
                let ppath = o.sub("FallBackForALPN");
                let JKind::Obj(members) = &per_alpn.kind else {
                    return Err(d.src.err(
                        per_alpn.pos,
                        &ppath,
                        format!("expected an object, found {}", per_alpn.describe()),
                    ));
                };
                for m in members {
                    out.push(sing_target(d, &join(&ppath, &m.key), &m.value, m.key.clone())?);
                }
            }
            o.finish();
            Ok(out)
        }
        _ => Err(d.src.err(
            v.pos,
            path,
            format!(
                "expected an array (xray form) or an object (sing form), found {}",
                v.describe()
            ),
        )),
    }
}

fn sing_target(d: Dec<'_>, path: &str, v: &JVal, alpn: String) -> Result<Fallback, ConfigError> {
    let mut o = Obj::new(d, path, v)?;
    let server = o.string("Server")?.unwrap_or_default();
    let port = o.get("ServerPort", as_string_or_int)?.unwrap_or_default();
    o.finish();
    if server.is_empty() || port.is_empty() {
        return Err(d
            .src
            .err(v.pos, path, "a fallback needs both Server and ServerPort"));
    }
    let dest = if server.contains(':') {
        format!("[{server}]:{port}")
    } else {
        format!("{server}:{port}")
    };
    Ok(Fallback {
        alpn,
        dest,
        ..Fallback::default()
    })
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn api_host_forms() {
        for ok in [
            "http://127.0.0.1",
            "https://panel.example.com/api/v1/server",
            "https://panel.example.com:8443/?x=1",
            "http://[::1]:80/api",
            "http://user@host",
            "file:///etc/v2sp/nodes.json",
            "file://nodes.json",
            "http://host:",
        ] {
            assert_eq!(check_api_host(ok), Ok(()), "{ok}");
        }
        for bad in [
            "panel.example.com",
            "ftp://x",
            "http://",
            "http://:80",
            "http://host:99999",
            "http://host:abc/",
            "http://[::1",
            "file://",
            "http://ho st",
        ] {
            assert!(check_api_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn acme_keys_decode_case_insensitively_with_defaults() {
        let node = |cert: &str| {
            format!(
                r#"{{"Nodes":[{{"ApiHost":"http://127.0.0.1","ApiKey":"k","NodeID":1,"NodeType":"trojan","CertConfig":{cert}}}]}}"#
            )
        };
        let base = r#""CertMode":"http","CertDomain":"a.example","CertFile":"/x/a.crt","KeyFile":"/x/a.key""#;
        let l = crate::config::parse_str(&node(&format!("{{{base}}}")), Path::new("t.json")).unwrap();
        let c = &l.config.nodes[0].cert;
        assert_eq!(c.cert_mode, CertMode::Http);
        assert_eq!(c.acme_directory(), DEFAULT_ACME_DIRECTORY);
        assert_eq!(c.acme_http_listen().to_string(), DEFAULT_ACME_HTTP_LISTEN);
        assert!(c.acme_root_ca.is_empty());

        let text = node(&format!(
            r#"{{{base},"acmedirectory":" https://127.0.0.1:14000/dir ","AcmeRootCA":"/x/root.pem","ACMEHTTPLISTEN":"127.0.0.1:5002"}}"#
        ));
        let l = crate::config::parse_str(&text, Path::new("t.json")).unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let c = &l.config.nodes[0].cert;
        assert_eq!(c.acme_directory(), "https://127.0.0.1:14000/dir");
        assert_eq!(c.acme_root_ca, "/x/root.pem");
        assert_eq!(c.acme_http_listen().to_string(), "127.0.0.1:5002");

        let bad = node(&format!(r#"{{{base},"ACMEHTTPListen":":80"}}"#));
        let e = crate::config::parse_str(&bad, Path::new("t.json")).unwrap_err();
        assert!(e.to_string().contains("ACMEHTTPListen"), "{e}");
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn trusted_proxies_are_cidrs() {
        let doc = r#"{"Nodes":[{"ApiHost":"http://127.0.0.1","ApiKey":"k","NodeID":1,"NodeType":"vless",
            "TrustedProxies":["173.245.48.0/20","127.0.0.1"]}]}"#;
        let l = crate::config::parse_str(doc, Path::new("t.json")).unwrap();
        assert_eq!(
            l.config.nodes[0].trusted_proxies,
            ["173.245.48.0/20", "127.0.0.1/32"]
        );
        let bad = doc.replace("127.0.0.1\"]", "cdn\"]");
        let e = crate::config::parse_str(&bad, Path::new("t.json")).unwrap_err();
        assert!(e.to_string().contains("TrustedProxies[1]"), "{e}");
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn proxy_protocol_from_is_cidrs_and_its_absence_is_warned() {
        let node = |extra: &str| {
            format!(
                r#"{{"Nodes":[{{"ApiHost":"http://127.0.0.1","ApiKey":"k","NodeID":1,"NodeType":"trojan"{extra}}}]}}"#
            )
        };
        let l = crate::config::parse_str(
            &node(r#","EnableProxyProtocol":true,"ProxyProtocolFrom":["10.0.0.0/8","192.0.2.7","2001:db8::/32"]"#),
            Path::new("t.json"),
        )
        .unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        assert_eq!(
            l.config.nodes[0].proxy_protocol_from,
            ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]
        );
        // On without balancers: loopback only, said in a warning.
        let l =
            crate::config::parse_str(&node(r#","EnableProxyProtocol":true"#), Path::new("t.json")).unwrap();
        assert!(
            l.warnings
                .iter()
                .any(|w| w.to_string().contains("ProxyProtocolFrom")),
            "{:?}",
            l.warnings
        );
        let e = crate::config::parse_str(
            &node(r#","EnableProxyProtocol":true,"ProxyProtocolFrom":["10.0.0.0/33"]"#),
            Path::new("t.json"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("ProxyProtocolFrom[0]"), "{e}");
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn masquerade_is_a_checked_url() {
        use crate::dpconfig::Masquerade;
        let node = |ty: &str, m: &str| {
            format!(
                r#"{{"Nodes":[{{"ApiHost":"http://127.0.0.1","ApiKey":"k","NodeID":1,"NodeType":"{ty}","Masquerade":"{m}"}}]}}"#
            )
        };
        let parse = |m: &str| {
            let l = crate::config::parse_str(&node("hysteria2", m), Path::new("t.json")).unwrap();
            assert!(l.warnings.is_empty(), "{:?}", l.warnings);
            l.config.nodes[0].masquerade.clone()
        };
        assert_eq!(
            parse("file:///var/www/"),
            Some(Masquerade::File {
                dir: "/var/www".into()
            })
        );
        assert_eq!(
            parse("https://www.example.com/site/"),
            Some(Masquerade::Proxy {
                tls: true,
                host: "www.example.com".into(),
                port: 443,
                base: "/site".into(),
                authority: "www.example.com".into()
            })
        );
        assert_eq!(
            parse("http://[::1]:8080"),
            Some(Masquerade::Proxy {
                tls: false,
                host: "::1".into(),
                port: 8080,
                base: String::new(),
                authority: "[::1]:8080".into()
            })
        );
        assert_eq!(
            parse("string:hello"),
            Some(Masquerade::String {
                content: "hello".into()
            })
        );
        assert_eq!(parse(""), None);
        for bad in [
            "file://var/www",
            "ftp://x",
            "https://",
            "http://h:0/",
            "http://h:99999/",
            "https://u@h/",
            "https://h/?q",
            "/var/www",
        ] {
            let e = crate::config::parse_str(&node("hysteria2", bad), Path::new("t.json")).unwrap_err();
            assert!(e.to_string().contains("Masquerade"), "{bad}: {e}");
        }
        let l = crate::config::parse_str(&node("vless", "string:x"), Path::new("t.json")).unwrap();
        assert!(l.warnings.iter().any(|w| w.to_string().contains("Masquerade")));
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn hop_ports_are_a_checked_range() {
        use crate::dpconfig::PortRange;
        let node = |ty: &str, extra: &str| {
            format!(
                r#"{{"Nodes":[{{"ApiHost":"http://127.0.0.1","ApiKey":"k","NodeID":1,"NodeType":"{ty}"{extra}}}]}}"#
            )
        };
        let l = crate::config::parse_str(
            &node("hysteria2", r#","HopPorts":"20000-50000""#),
            Path::new("t.json"),
        )
        .unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        assert_eq!(
            l.config.nodes[0].hop_ports,
            Some(PortRange {
                first: 20000,
                last: 50000
            })
        );
        // In Options too, one port as a range of one, spaces; empty means none.
        let l = crate::config::parse_str(
            &node("hysteria2", r#","Options":{"HopPorts":" 443 - 443 "}"#),
            Path::new("t.json"),
        )
        .unwrap();
        assert_eq!(
            l.config.nodes[0].hop_ports.map(|r| r.to_string()).as_deref(),
            Some("443-443")
        );
        let l = crate::config::parse_str(&node("", r#","HopPorts":"""#), Path::new("t.json")).unwrap();
        assert_eq!(l.config.nodes[0].hop_ports, None);
        for bad in [
            "50000-20000",
            "0-10",
            "1-65536",
            "20000",
            "20000:20010",
            "a-b",
            "-5",
            "1-2-3",
        ] {
            let e = crate::config::parse_str(
                &node("hysteria2", &format!(r#","HopPorts":"{bad}""#)),
                Path::new("t.json"),
            )
            .unwrap_err();
            assert!(e.to_string().contains("HopPorts"), "{bad}: {e}");
        }
        // Another protocol: loaded, with a warning (the control plane ignores it).
        let l = crate::config::parse_str(
            &node("trojan", r#","HopPorts":"20000-20010""#),
            Path::new("t.json"),
        )
        .unwrap();
        assert!(
            l.warnings.iter().any(|w| w.to_string().contains("HopPorts")),
            "{:?}",
            l.warnings
        );
        assert!(PortRange::parse("1-65535").unwrap().contains(65535));
        assert!(!PortRange::parse("10-20").unwrap().contains(21));
    }

    #[test]
    fn edit_distance_works() {
        assert_eq!(edit_distance("nodeid", "nodeid"), 0);
        assert_eq!(edit_distance("nodid", "nodeid"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            hint_for("ApiHots", &["ApiHost", "ApiKey"]),
            "; did you mean ApiHost?"
        );
    }
}
