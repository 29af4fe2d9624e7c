//! Operator verbs of the Go v2sp (`start`, `stop`, `restart`, `log`, `update`, `uninstall`):
//! thin wrappers over systemctl, journalctl and `install.sh`. Each prints the command it runs.

use std::path::Path;
use std::process::Command;

use crate::cli::Cmd;

/// Where `install.sh` keeps a copy of itself for `v2sp uninstall`.
pub const INSTALLED_SCRIPT: &str = "/usr/local/share/v2sp/install.sh";

/// The commands a verb runs, in order (the next runs only if the previous succeeded, except
/// for the final `is-active` report).
pub fn plan(cmd: &Cmd) -> Vec<Vec<String>> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match cmd {
        Cmd::Start => vec![
            v(&["systemctl", "start", "v2sp.service", "v2sp-dataplane.service"]),
            v(&["systemctl", "is-active", "v2sp.service", "v2sp-dataplane.service"]),
        ],
        Cmd::Stop => vec![v(&[
            "systemctl",
            "stop",
            "v2sp-dataplane.service",
            "v2sp.service",
        ])],
        Cmd::Restart { dataplane } => {
            let mut p = vec![v(&["systemctl", "restart", "v2sp.service"])];
            if *dataplane {
                p.push(v(&["systemctl", "restart", "v2sp-dataplane.service"]));
            }
            p.push(v(&[
                "systemctl",
                "is-active",
                "v2sp.service",
                "v2sp-dataplane.service",
            ]));
            p
        }
        Cmd::Log { lines, no_follow } => {
            let mut c = v(&[
                "journalctl",
                "-u",
                "v2sp.service",
                "-u",
                "v2sp-dataplane.service",
                "--no-pager",
                "-n",
            ]);
            c.push(lines.to_string());
            if !no_follow {
                c.push("-f".into());
            }
            vec![c]
        }
        _ => Vec::new(),
    }
}

/// Runs each command of a plan with inherited stdio; the exit code of the first failure.
pub fn run_plan(plan: &[Vec<String>]) -> i32 {
    for c in plan {
        let Some((prog, args)) = c.split_first() else {
            continue;
        };
        eprintln!("+ {}", c.join(" "));
        match Command::new(prog).args(args).status() {
            Ok(s) if s.success() => {}
            Ok(s) => return s.code().unwrap_or(1),
            Err(e) => {
                eprintln!("error: cannot run {prog}: {e} (these commands need systemd)");
                return 127;
            }
        }
    }
    0
}

/// `v2sp update`: fetch `<url>/install.sh` and run it with `--from <url>`.
pub fn update(from: Option<&str>, restart_dataplane: bool) -> i32 {
    let Some(url) = from.map(|u| u.trim_end_matches('/')).filter(|u| !u.is_empty()) else {
        eprintln!(
            "error: no release URL: pass --from URL (the release's download directory, holding \
             SHA256SUMS) or set V2SP_RELEASE_URL"
        );
        return 2;
    };
    let dir = match tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let script = dir.join("install.sh");
    let script_s = script.display().to_string();
    let mut install = vec![
        "bash".to_string(),
        script_s.clone(),
        "--from".into(),
        url.to_string(),
    ];
    if restart_dataplane {
        install.push("--restart-dataplane".into());
    }
    let plan = vec![
        vec![
            "curl".into(),
            "-fsSL".into(),
            "-o".into(),
            script_s,
            format!("{url}/install.sh"),
        ],
        install,
    ];
    let rc = run_plan(&plan);
    let _ = std::fs::remove_dir_all(&dir);
    rc
}

/// `v2sp uninstall`: the installed `install.sh --uninstall`, after a confirmation.
pub fn uninstall(yes: bool) -> i32 {
    if !Path::new(INSTALLED_SCRIPT).exists() {
        if Path::new("/var/lib/dpkg/info/v2sp.list").exists() {
            eprintln!("v2sp was installed from the Debian package: apt remove v2sp (apt purge v2sp also deletes /etc/v2sp, the journal and the user)");
        } else {
            eprintln!("error: {INSTALLED_SCRIPT} not found: run deploy/install.sh --uninstall from a checkout or release tarball");
        }
        return 1;
    }
    if !yes {
        use std::io::{BufRead as _, IsTerminal as _, Write as _};
        if !std::io::stdin().is_terminal() {
            eprintln!("error: not a terminal: confirm with --yes");
            return 2;
        }
        print!("Remove v2sp (units, binaries, sysctl file; /etc/v2sp and /var/lib/v2sp are kept)? [y/N] ");
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("not removed");
            return 1;
        }
    }
    run_plan(&[vec!["bash".into(), INSTALLED_SCRIPT.into(), "--uninstall".into()]])
}

fn tempdir() -> std::io::Result<std::path::PathBuf> {
    let base = std::env::temp_dir();
    for i in 0..100u32 {
        let d = base.join(format!("v2sp-update-{}-{i}", std::process::id()));
        match std::fs::create_dir(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free temporary directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_run_what_their_help_says() {
        let p = |c: Cmd| plan(&c).iter().map(|c| c.join(" ")).collect::<Vec<_>>();
        assert_eq!(
            p(Cmd::Start),
            [
                "systemctl start v2sp.service v2sp-dataplane.service",
                "systemctl is-active v2sp.service v2sp-dataplane.service"
            ]
        );
        assert_eq!(
            p(Cmd::Stop),
            ["systemctl stop v2sp-dataplane.service v2sp.service"]
        );
        assert_eq!(
            p(Cmd::Restart { dataplane: false })[0],
            "systemctl restart v2sp.service"
        );
        assert_eq!(
            p(Cmd::Restart { dataplane: true })[1],
            "systemctl restart v2sp-dataplane.service"
        );
        assert_eq!(
            p(Cmd::Log {
                lines: 100,
                no_follow: false
            }),
            ["journalctl -u v2sp.service -u v2sp-dataplane.service --no-pager -n 100 -f"]
        );
    }
}
