use clap::Parser as _;

fn main() {
    // Signals are received by one thread with sigwait; block them before any thread exists.
    v2sp_control::sys::block_signals();
    let filter = tracing_subscriber::EnvFilter::try_from_env("V2SP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    std::process::exit(v2sp_control::cli::execute(v2sp_control::cli::Cli::parse()));
}
