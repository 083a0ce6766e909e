//! bootd: network boot for diskless fleets. This binary is the operator CLI
//! and the daemon; the protocol work lives in the library crates.

mod api;
mod bootlog;
mod cmd_df;
mod cmd_image;
mod cmd_node;
mod cmd_server;
mod cmd_template;
mod cmd_token;
mod datadir;
mod dhcp;
mod events;
mod export;
mod fleet;
mod http;
mod imagebuild;
mod import;
mod iotrace;
mod lifecycle;
mod metrics;
mod names;
mod output;
mod peers;
mod progress;
mod serve;
mod service;
mod space;
mod store;
mod tftp;

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
    /// The registry: sqlite:PATH (default: bootd.db in the data directory)
    /// or postgres://USER@HOST[:PORT]/DB[?sslmode=verify-full&sslrootcert=CA.pem]
    /// (password from PGPASSWORD).
    /// Images and overlays stay in the data directory either way.
    #[arg(long, env = "BOOTD_REGISTRY", hide_env_values = true, global = true)]
    registry: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one raw file as LUN 0 of one iSCSI target until SIGINT/SIGTERM.
    Export(export::ExportArgs),
    /// Serve every node's disk (its overlay) as LUN 0 of its own target.
    Serve(Box<serve::config::ServeConfig>),
    /// Golden images.
    #[command(subcommand)]
    Image(cmd_image::ImageCmd),
    /// Boot recipes: an image plus an optional iPXE script.
    #[command(subcommand)]
    Template(cmd_template::TemplateCmd),
    /// Machines, each with its own copy-on-write disk.
    #[command(subcommand)]
    Node(cmd_node::NodeCmd),
    /// The servers sharing this registry.
    #[command(subcommand)]
    Server(cmd_server::ServerCmd),
    /// Bearer tokens for the operator API (`serve --api-listen`).
    #[command(subcommand)]
    Token(cmd_token::TokenCmd),
    /// Physical vs logical bytes of the fleet's disks.
    Df {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // Everything bootd creates (the registry with its CHAP secrets, the
    // overlays, lease and trace files) is the owner's alone, whichever
    // command creates it and whatever umask the caller had.
    // SAFETY: umask only sets the process's file mode mask; it cannot fail.
    unsafe { libc::umask(0o077) };
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BOOTD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // The URL is parsed here, not by clap: clap's errors would echo it,
    // password and all.
    let registry = match cli.registry.as_deref() {
        None => Ok(store::url::Registry::DataDir),
        Some(url) => store::url::Registry::parse(url, std::env::var("PGPASSWORD").ok()),
    };
    let registry = match registry {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bootd: {e}");
            return ExitCode::from(2);
        }
    };
    let open = |dir: &std::path::Path| {
        datadir::DataDir::open(dir).map(|d| d.with_registry(registry.clone()))
    };
    let result = match cli.command {
        Command::Export(args) => export::run(&cli.data_dir, args),
        Command::Serve(args) => open(&cli.data_dir).and_then(|d| serve::run(d, *args)),
        Command::Image(cmd) => open(&cli.data_dir).and_then(|d| cmd_image::run(&d, cmd)),
        Command::Template(cmd) => open(&cli.data_dir).and_then(|d| cmd_template::run(&d, cmd)),
        Command::Node(cmd) => open(&cli.data_dir).and_then(|d| cmd_node::run(&d, cmd)),
        Command::Server(cmd) => open(&cli.data_dir).and_then(|d| cmd_server::run(&d, cmd)),
        Command::Token(cmd) => open(&cli.data_dir).and_then(|d| cmd_token::run(&d, cmd)),
        Command::Df { json } => open(&cli.data_dir).and_then(|d| cmd_df::run(&d, json)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bootd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version print as clap does; a usage error becomes one line on
/// stderr, like every other failure.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let line = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!(
        "bootd: {} (see --help)",
        line.strip_prefix("error: ").unwrap_or(&line)
    );
    ExitCode::from(2)
}
