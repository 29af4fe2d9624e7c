use clap::Parser as _;
use v2sp_shared::logging;

fn main() {
    // Signals are received by one thread with sigwait; block them before any thread exists.
    v2sp_control::sys::block_signals();
    let cli = v2sp_control::cli::Cli::parse();
    // `v2sp run` logs as its config's `Log` says (the environment still wins); every other
    // command uses the defaults. A config that does not load is reported by `run` itself.
    let config_log = match &cli.cmd {
        v2sp_control::cli::Cmd::Run { cfg, .. } => {
            v2sp_shared::config::load(&cfg.config).ok().map(|l| l.config.log)
        }
        _ => None,
    };
    let (settings, warnings) = logging::Settings::resolve(config_log.as_ref());
    let (_, problem) = logging::init(&settings);
    // The data plane that `v2sp run` spawns inherits these and logs the same way. Set while
    // this process is still single-threaded.
    for (k, v) in settings.child_env() {
        std::env::set_var(k, v);
    }
    for w in warnings.iter().chain(problem.iter()) {
        tracing::warn!("{w}");
    }
    std::process::exit(v2sp_control::cli::execute(cli));
}
