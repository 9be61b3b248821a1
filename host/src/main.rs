//! The `patchbay` command: parse the CLI, set up logging, call the library.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgAction, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Show-control host: routes OSC between channels declared in a YAML file.
#[derive(Parser)]
#[command(name = "patchbay", version, about)]
struct Cli {
    /// More log detail (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the channels and routes of CONFIG until Ctrl-C or SIGTERM.
    Run {
        /// The YAML config file.
        config: PathBuf,
        /// Also write the ready information (every channel's bound address) to this file as JSON.
        #[arg(long, value_name = "PATH")]
        ready_file: Option<PathBuf>,
        /// Stop instead of retrying when a channel's port (or the metrics port) is taken.
        #[arg(long)]
        strict: bool,
    },
    /// Check CONFIG and print every error with file:line:column and YAML path (exit 1 on errors).
    Check {
        /// The YAML config file.
        config: PathBuf,
        /// Also print what applying CONFIG over the running OLD config would change, without applying.
        #[arg(long, value_name = "OLD")]
        against: Option<PathBuf>,
    },
    /// Send one OSC message: patchbay send 127.0.0.1:9000 /cue/go i:1 f:0.5 s:go T
    Send {
        /// Destination HOST:PORT.
        target: String,
        /// OSC address, e.g. /cue/go.
        address: String,
        /// Arguments: TYPE:VALUE (i f s S h d t c b r m), bare T F N I, `[` `]` for arrays, or a plain
        /// value (integer, decimal, else string).
        #[arg(allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print every OSC message arriving on a UDP port, one line each.
    Dump {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0")]
        bind: IpAddr,
        /// UDP port (0 picks a free one; the bound port is printed on stderr).
        port: u16,
    },
    /// Send a peerpy discovery PING and list who answers: patchbay peers [255.255.255.255]
    Peers {
        /// Where to send the PING: IP (port from --port) or IP:PORT. The default stays on this
        /// machine; a show network's broadcast address (255.255.255.255) reaches its peers.
        #[arg(default_value = "127.255.255.255")]
        address: String,
        /// Discovery port (peerpy uses 1024).
        #[arg(long, default_value_t = patchbay::channel::peer::discovery::PEERPY_PORT)]
        port: u16,
        /// How long to collect answers, in milliseconds.
        #[arg(long, default_value_t = 500)]
        wait_ms: u64,
        /// Local address to send from.
        #[arg(long, default_value = "0.0.0.0")]
        bind: IpAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    match execute(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("patchbay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            ready_file,
            strict,
        } => {
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                tokio::spawn(stop_on_signal(shutdown.clone()));
                match patchbay::run(
                    patchbay::RunOptions {
                        config,
                        ready_file,
                        strict,
                    },
                    shutdown,
                )
                .await
                {
                    Ok(()) => Ok(ExitCode::SUCCESS),
                    Err(e) => {
                        eprintln!("patchbay: {e}");
                        Ok(ExitCode::FAILURE)
                    }
                }
            })
        }
        Command::Check { config, against } => match patchbay::config::load(&config) {
            Ok(plan) => {
                println!(
                    "ok: {} is valid ({} channels, {} routes)",
                    config.display(),
                    plan.channels.len(),
                    plan.routes.len()
                );
                if let Some(old_path) = against {
                    let old = match patchbay::config::load(&old_path) {
                        Ok(old) => old,
                        Err(errors) => {
                            println!("{errors}");
                            eprintln!("patchbay: the OLD config {} has errors", old_path.display());
                            return Ok(ExitCode::FAILURE);
                        }
                    };
                    let diff = patchbay::reload::PlanDiff::between(&old, &plan);
                    println!("changes against {}: {diff}", old_path.display());
                    if let Some(lost) = diff.large_removal(&old) {
                        println!("warning: this removes {lost}");
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                println!("{errors}");
                eprintln!(
                    "patchbay: {} error(s) in {}",
                    errors.0.len(),
                    config.display()
                );
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Send {
            target,
            address,
            args,
        } => {
            let bytes = patchbay::tools::send::send(&target, &address, &args)?;
            tracing::debug!(bytes, "Sent.");
            Ok(ExitCode::SUCCESS)
        }
        Command::Peers {
            address,
            port,
            wait_ms,
            bind,
        } => {
            let options = patchbay::tools::peers::PeersOptions {
                target: patchbay::tools::peers::parse_target(&address, port)?,
                bind,
                wait: std::time::Duration::from_millis(wait_ms),
            };
            patchbay::tools::peers::run_peers(&options, std::io::stdout(), std::io::stderr())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dump { bind, port } => {
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                tokio::spawn(stop_on_signal(shutdown.clone()));
                patchbay::tools::dump::run_dump(bind, port, std::io::stdout(), shutdown).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Ctrl-C or SIGTERM: a clean stop.
async fn stop_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("Stopping: signal received.");
    shutdown.cancel();
}
