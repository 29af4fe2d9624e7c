//! Log output of both binaries (`v2sp` and `v2sp-dataplane`): where lines go, what they look
//! like, which levels pass.
//!
//! One line per event, written with a single `write` (both processes may append to the same
//! `Log.Output` file):
//!
//! ```text
//! text:     2026-12-07T03:30:16.123456Z  INFO v2sp_control::agent: message key=value
//! journal:  <6>INFO v2sp_control::agent: message key=value   (journald adds the time)
//! json:     {"timestamp":"…","level":"INFO","target":"v2sp_control::agent","fields":{"message":"…","key":"value"}}
//! ```
//!
//! * Colour (ANSI escapes) only when the output is a terminal and `NO_COLOR` is unset: never in
//!   a file, a pipe or the journal.
//! * `<N>` syslog priority prefixes (error 3, warn 4, info 6, debug/trace 7), which journald
//!   turns into the entry's priority (`journalctl -p warning`), when the output is the stream
//!   systemd connected to the journal (`JOURNAL_STREAM` names its device and inode), or when
//!   `V2SP_LOG_PRIORITY=on`; `off` disables them. With them the timestamp is left out (the
//!   journal has its own). In JSON the prefix comes before the object; journald strips it.
//!
//! Settings, strongest first: environment (`V2SP_LOG` filter, else `RUST_LOG`;
//! `V2SP_LOG_FORMAT` = `text`|`json`; `V2SP_LOG_OUTPUT` = path, `stdout` or `stderr`), then
//! the config's `Log` (`Level`, `Format`, `Output`), then `info` as text on stderr.

use std::fmt;
use std::fs::File;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{LogConfig, LogFormat};

/// Environment variable: log filter (`EnvFilter` syntax: `info`, `warn,v2sp_control=debug`).
pub const ENV_FILTER: &str = "V2SP_LOG";
/// Environment variable: `text` or `json`.
pub const ENV_FORMAT: &str = "V2SP_LOG_FORMAT";
/// Environment variable: a file path (appended to), `stdout` or `stderr` (also `""`).
pub const ENV_OUTPUT: &str = "V2SP_LOG_OUTPUT";
/// Environment variable: journald priority prefixes, `auto` (default), `on` or `off`.
pub const ENV_PRIORITY: &str = "V2SP_LOG_PRIORITY";

/// Where log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Stderr,
    Stdout,
    /// Appended to (created 0640 if missing).
    File(PathBuf),
}

impl Output {
    /// `Log.Output` / `V2SP_LOG_OUTPUT`: `""` and `stderr` are stderr, `stdout` is stdout,
    /// anything else a file path.
    pub fn parse(s: &str) -> Output {
        match s.trim() {
            "" | "stderr" | "/dev/stderr" => Output::Stderr,
            "stdout" | "/dev/stdout" => Output::Stdout,
            p => Output::File(PathBuf::from(p)),
        }
    }

    /// The string [`Output::parse`] reads back (for handing the setting to a child process).
    pub fn as_setting(&self) -> String {
        match self {
            Output::Stderr => "stderr".into(),
            Output::Stdout => "stdout".into(),
            Output::File(p) => p.display().to_string(),
        }
    }
}

/// `V2SP_LOG_PRIORITY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// Prefixes when the output stream is the journal's (`JOURNAL_STREAM`).
    Auto,
    On,
    Off,
}

/// The resolved log settings of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `EnvFilter` directives.
    pub filter: String,
    pub format: LogFormat,
    pub output: Output,
    pub priority: Priority,
}

impl Settings {
    /// Settings from the process environment over `config` (the config's `Log`, if this
    /// process has one). Unknown values of the variables are reported in the second element
    /// (log them once logging is up) and ignored.
    pub fn resolve(config: Option<&LogConfig>) -> (Settings, Vec<String>) {
        Self::resolve_with(config, |k| std::env::var(k).ok())
    }

    /// [`Settings::resolve`] with the environment given as a function (tests).
    pub fn resolve_with(
        config: Option<&LogConfig>,
        env: impl Fn(&str) -> Option<String>,
    ) -> (Settings, Vec<String>) {
        let mut warnings = Vec::new();
        let default = LogConfig::default();
        let cfg = config.unwrap_or(&default);
        let filter = env(ENV_FILTER)
            .or_else(|| env("RUST_LOG"))
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| cfg.level.as_str().to_string());
        let format = match env(ENV_FORMAT).as_deref().map(str::trim) {
            None | Some("") => cfg.format,
            Some(s) => match LogFormat::parse(s) {
                Some(f) => f,
                None => {
                    warnings.push(format!(
                        "{ENV_FORMAT}={s:?} is not text or json; using {}",
                        cfg.format.as_str()
                    ));
                    cfg.format
                }
            },
        };
        let output = Output::parse(&env(ENV_OUTPUT).unwrap_or_else(|| cfg.output.clone()));
        let priority = match env(ENV_PRIORITY).as_deref().map(str::trim) {
            None | Some("" | "auto") => Priority::Auto,
            Some("on" | "1" | "true" | "yes") => Priority::On,
            Some("off" | "0" | "false" | "no") => Priority::Off,
            Some(s) => {
                warnings.push(format!("{ENV_PRIORITY}={s:?} is not auto, on or off; using auto"));
                Priority::Auto
            }
        };
        (
            Settings {
                filter,
                format,
                output,
                priority,
            },
            warnings,
        )
    }

    /// The environment that makes a child process (the data plane started by `v2sp run`)
    /// resolve to these same settings.
    pub fn child_env(&self) -> [(&'static str, String); 4] {
        [
            (ENV_FILTER, self.filter.clone()),
            (ENV_FORMAT, self.format.as_str().to_string()),
            (ENV_OUTPUT, self.output.as_setting()),
            (
                ENV_PRIORITY,
                match self.priority {
                    Priority::Auto => "auto",
                    Priority::On => "on",
                    Priority::Off => "off",
                }
                .to_string(),
            ),
        ]
    }
}

/// How lines are drawn, decided once at start from the settings and the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    pub json: bool,
    pub ansi: bool,
    pub priority: bool,
    pub timestamp: bool,
}

/// `JOURNAL_STREAM` (`<dev>:<inode>`, set by systemd when stdout/stderr go to the journal)
/// names `stream`'s file.
fn is_journal_stream(stream: &impl std::os::fd::AsFd) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // fstat on a duplicate of the descriptor (same open file, no unsafe needed).
    let Ok(fd) = stream.as_fd().try_clone_to_owned() else {
        return false;
    };
    match File::from(fd).metadata() {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

impl Style {
    /// The style for `settings` on this process's actual output.
    pub fn detect(settings: &Settings) -> Style {
        let (tty, journal) = match settings.output {
            Output::Stderr => (
                std::io::stderr().is_terminal(),
                is_journal_stream(&std::io::stderr()),
            ),
            Output::Stdout => (
                std::io::stdout().is_terminal(),
                is_journal_stream(&std::io::stdout()),
            ),
            Output::File(_) => (false, false),
        };
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let priority = match settings.priority {
            Priority::Auto => journal,
            Priority::On => true,
            Priority::Off => false,
        };
        let json = settings.format == LogFormat::Json;
        Style {
            json,
            ansi: tty && !no_color && !json,
            priority,
            timestamp: !priority,
        }
    }
}

/// Syslog priority of a level, as journald reads it from a `<N>` line prefix.
pub fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Installs the global subscriber. A file output that cannot be opened falls back to stderr;
/// the error is returned next to the style used, for the caller to log.
pub fn init(settings: &Settings) -> (Style, Option<String>) {
    let mut settings = settings.clone();
    let mut problems = Vec::new();
    let writer = match &settings.output {
        Output::Stderr => BoxMakeWriter::new(std::io::stderr),
        Output::Stdout => BoxMakeWriter::new(std::io::stdout),
        Output::File(p) => match open_log_file(p) {
            Ok(f) => BoxMakeWriter::new(Arc::new(f)),
            Err(e) => {
                problems.push(format!(
                    "cannot open log output {}: {e}; logging to stderr",
                    p.display()
                ));
                settings.output = Output::Stderr;
                BoxMakeWriter::new(std::io::stderr)
            }
        },
    };
    let style = Style::detect(&settings);
    let filter = match tracing_subscriber::EnvFilter::try_new(&settings.filter) {
        Ok(f) => f,
        Err(e) => {
            problems.push(format!(
                "log filter {:?} is invalid ({e}); using info",
                settings.filter
            ));
            tracing_subscriber::EnvFilter::new("info")
        }
    };
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(style.ansi)
        .event_format(Line { style })
        .try_init();
    if let Err(e) = installed {
        problems.push(format!("logging already initialised: {e}"));
    }
    let problems = (!problems.is_empty()).then(|| problems.join("; "));
    (style, problems)
}

fn open_log_file(p: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(p)
}

/// The event formatter (see the module documentation for the shapes).
pub struct Line {
    pub style: Style,
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let level = *meta.level();
        if self.style.priority {
            write!(w, "<{}>", syslog_priority(level))?;
        }
        if self.style.json {
            let mut fields = JsonFields::default();
            event.record(&mut fields);
            // Written by hand so that the keys keep this order (timestamp first).
            let str_json = |v: &str| serde_json::to_string(v).map_err(|_| fmt::Error);
            w.write_char('{')?;
            if self.style.timestamp {
                let mut ts = String::new();
                SystemTime.format_time(&mut Writer::new(&mut ts))?;
                write!(w, "\"timestamp\":{},", str_json(&ts)?)?;
            }
            write!(
                w,
                "\"level\":{},\"target\":{},\"fields\":{}",
                str_json(level.as_str())?,
                str_json(meta.target())?,
                serde_json::to_string(&fields.0).map_err(|_| fmt::Error)?
            )?;
            let spans: Vec<serde_json::Value> = ctx
                .event_scope()
                .into_iter()
                .flat_map(|scope| scope.from_root())
                .map(|span| {
                    let ext = span.extensions();
                    let fields = ext.get::<FormattedFields<N>>().map(|f| f.fields.clone());
                    serde_json::json!({"name": span.name(), "fields": fields.unwrap_or_default()})
                })
                .collect();
            if !spans.is_empty() {
                write!(
                    w,
                    ",\"spans\":{}",
                    serde_json::to_string(&spans).map_err(|_| fmt::Error)?
                )?;
            }
            return writeln!(w, "}}");
        }
        if self.style.timestamp {
            SystemTime.format_time(&mut w)?;
            w.write_char(' ')?;
        }
        // Padded to line up after a timestamp; not after a `<N>` prefix, so that the journal's
        // message starts with the level.
        let name = level.as_str();
        let width = if self.style.timestamp { 5 } else { 0 };
        if self.style.ansi {
            let colour = match level {
                Level::ERROR => "31",
                Level::WARN => "33",
                Level::INFO => "32",
                Level::DEBUG => "34",
                _ => "35",
            };
            write!(w, "\x1b[{colour}m{name:>width$}\x1b[0m ")?;
        } else {
            write!(w, "{name:>width$} ")?;
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                w.write_str(span.name())?;
                let ext = span.extensions();
                if let Some(f) = ext.get::<FormattedFields<N>>() {
                    if !f.is_empty() {
                        write!(w, "{{{f}}}")?;
                    }
                }
                w.write_char(':')?;
            }
            w.write_char(' ')?;
        }
        if self.style.ansi {
            write!(w, "\x1b[2m{}:\x1b[0m ", meta.target())?;
        } else {
            write!(w, "{}: ", meta.target())?;
        }
        ctx.format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// An event's fields as JSON values.
#[derive(Default)]
struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_error(&mut self, f: &Field, v: &(dyn std::error::Error + 'static)) {
        self.0.insert(f.name().into(), v.to_string().into());
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        self.0.insert(f.name().into(), format!("{v:?}").into());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::LogLevel;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn config_then_environment() {
        let cfg = LogConfig {
            level: LogLevel::Warn,
            format: LogFormat::Json,
            output: "/var/log/v2sp.log".into(),
        };
        let (s, w) = Settings::resolve_with(Some(&cfg), env(&[]));
        assert!(w.is_empty());
        assert_eq!(s.filter, "warn");
        assert_eq!(s.format, LogFormat::Json);
        assert_eq!(s.output, Output::File("/var/log/v2sp.log".into()));
        assert_eq!(s.priority, Priority::Auto);

        let (s, _) = Settings::resolve_with(Some(&cfg), env(&[("RUST_LOG", "debug")]));
        assert_eq!(s.filter, "debug");
        let (s, w) = Settings::resolve_with(
            Some(&cfg),
            env(&[
                ("RUST_LOG", "debug"),
                ("V2SP_LOG", "error"),
                ("V2SP_LOG_FORMAT", "text"),
                ("V2SP_LOG_OUTPUT", "stdout"),
                ("V2SP_LOG_PRIORITY", "on"),
            ]),
        );
        assert!(w.is_empty());
        assert_eq!(
            s,
            Settings {
                filter: "error".into(),
                format: LogFormat::Text,
                output: Output::Stdout,
                priority: Priority::On
            }
        );
        let (s, w) = Settings::resolve_with(None, env(&[("V2SP_LOG_FORMAT", "xml")]));
        assert_eq!(
            (s.filter.as_str(), s.format, s.output),
            ("info", LogFormat::Text, Output::Stderr)
        );
        assert_eq!(w.len(), 1, "{w:?}");
    }

    #[test]
    fn child_env_round_trips() {
        let s = Settings {
            filter: "info,v2sp_dataplane=debug".into(),
            format: LogFormat::Json,
            output: Output::File("/tmp/x.log".into()),
            priority: Priority::Off,
        };
        let vars = s.child_env();
        let (back, w) = Settings::resolve_with(None, |k| {
            vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        });
        assert!(w.is_empty());
        assert_eq!(back, s);
    }

    #[test]
    fn files_and_pipes_get_no_colour() {
        let s = Settings {
            filter: "info".into(),
            format: LogFormat::Text,
            output: Output::File("/tmp/x.log".into()),
            priority: Priority::Auto,
        };
        let st = Style::detect(&s);
        assert!(!st.ansi && !st.priority && st.timestamp && !st.json);
        let st = Style::detect(&Settings {
            priority: Priority::On,
            ..s
        });
        assert!(st.priority && !st.timestamp);
    }

    #[test]
    fn priorities() {
        assert_eq!(syslog_priority(Level::ERROR), 3);
        assert_eq!(syslog_priority(Level::WARN), 4);
        assert_eq!(syslog_priority(Level::INFO), 6);
        assert_eq!(syslog_priority(Level::DEBUG), 7);
        assert_eq!(syslog_priority(Level::TRACE), 7);
    }
}
