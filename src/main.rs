//! `token-broker`: thin entry point. Parses the command line, resolves settings,
//! sets up logging, and runs the command.

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use token_broker::cli::{self, Cli};
use token_broker::settings::Settings;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::resolve(&cli.settings) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // `serve` logs at the configured level; other commands only warn, so their
    // stdout stays clean for scripts.
    let filter = if matches!(cli.command, cli::Command::Serve { .. }) {
        settings.log_filter.clone()
    } else {
        std::env::var("TOKEN_BROKER_LOG").unwrap_or_else(|_| "warn".into())
    };
    token_broker::telemetry::init(settings.log_format, &filter, std::io::stderr);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli, settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            std::process::ExitCode::from(f.code.clamp(1, 255) as u8)
        }
    }
}
