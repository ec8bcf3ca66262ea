//! `token-broker`: thin entry point. Parses the command line, resolves settings,
//! sets up logging, and runs the command.

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use token_broker::cli::{self, Cli};
use token_broker::settings::Settings;

fn main() -> std::process::ExitCode {
    // `--server URL`: the remote CLI (HTTP API, a tenant's key; no settings, no database).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if token_broker::remote::wanted(&args) {
        let cli = token_broker::remote::RemoteCli::parse_from(args);
        token_broker::telemetry::init(
            Default::default(),
            &std::env::var("TOKEN_BROKER_LOG").unwrap_or_else(|_| "warn".into()),
            std::io::stderr,
        );
        return finish(
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(token_broker::remote::run(cli))),
        );
    }
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
    finish(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(cli::run(cli, settings))),
    )
}

/// The exit code (and stderr line) for a command's result.
fn finish(r: std::io::Result<cli::CmdResult>) -> std::process::ExitCode {
    match r {
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::from(1)
        }
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(f)) => {
            eprintln!("error: {}", f.message);
            std::process::ExitCode::from(f.code.clamp(1, 255) as u8)
        }
    }
}
