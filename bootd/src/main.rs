//! bootd: network boot for diskless fleets. This binary is the operator CLI
//! and the daemon; the protocol work lives in the library crates.

mod export;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "bootd",
    version,
    about = "Boot fleets of diskless machines from one golden image"
)]
struct Cli {
    /// Where bootd keeps its state.
    #[arg(
        long,
        env = "BOOTD_DATA_DIR",
        default_value = "/var/lib/bootd",
        global = true
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one raw file as LUN 0 of one iSCSI target until SIGINT/SIGTERM.
    Export(export::ExportArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BOOTD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Export(args) => export::run(&cli.data_dir, args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bootd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
