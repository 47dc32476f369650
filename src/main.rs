//! The `ricochet` binary: command-line parsing and wiring only.

use std::io::{Read, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use ricochet::config::{Config, ConfigFile, Driver};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ricochet",
    version,
    about = "High-throughput postback (webhook) dispatcher"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the dispatcher in the foreground.
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        socket: Option<PathBuf>,
        /// TCP ingest address (same line protocol).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Admin API address.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Worker threads (0 = one per core).
        #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=ricochet::config::MAX_WORKERS as u64))]
        workers: Option<usize>,
        #[arg(long, value_enum)]
        driver: Option<Driver>,
    },
    /// Stream NDJSON events from FILE (or stdin) and print a summary.
    Send {
        #[arg(long, conflicts_with = "connect")]
        socket: Option<PathBuf>,
        #[arg(long)]
        connect: Option<String>,
        /// Print every ack line.
        #[arg(short, long)]
        verbose: bool,
        file: Option<PathBuf>,
    },
    /// Validate a config and compile every template.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the exact HTTP request an endpoint would receive for an event.
    Render {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        endpoint: String,
        event_file: Option<PathBuf>,
    },
}

/// Standard error for the log, dropping what it cannot write: with stderr closed (a log
/// pipe's reader gone) the server runs on, where tracing-subscriber would report the
/// failed write with `eprintln!`, which panics then.
struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Prints a line on stdout; a closed stdout (`ricochet send -v | head`) drops it.
fn say(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(|| LogSink)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RICOCHET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Serve {
            config,
            data_dir,
            socket,
            listen,
            admin,
            workers,
            driver,
        } => {
            let (mut cfg, specs) = match config {
                Some(p) => ricochet::server::load(&p)?,
                None => (Config::default(), Vec::new()),
            };
            let s = &mut cfg.server;
            if let Some(v) = data_dir {
                s.data_dir = v;
            }
            if let Some(v) = socket {
                s.socket = v;
            }
            if let Some(v) = listen {
                s.listen = Some(v);
            }
            if let Some(v) = admin {
                s.admin = v;
            }
            if let Some(v) = workers {
                s.workers = v;
            }
            if let Some(v) = driver {
                s.driver = v;
            }
            ricochet::server::serve(cfg, specs)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Send {
            socket,
            connect,
            verbose,
            file,
        } => {
            let target = match (socket, connect) {
                (_, Some(addr)) => ricochet::client::Target::Tcp(addr),
                (Some(p), None) => ricochet::client::Target::Unix(p),
                (None, None) => ricochet::client::Target::Unix(PathBuf::from("ricochet.sock")),
            };
            let input: Box<dyn Read + Send> = match file {
                // `-` is stdin, as for most tools.
                Some(p) if p.as_os_str() == "-" => Box::new(std::io::stdin()),
                Some(p) => Box::new(
                    std::fs::File::open(&p)
                        .with_context(|| format!("cannot open {}", p.display()))?,
                ),
                None => Box::new(std::io::stdin()),
            };
            let sent = ricochet::client::send(&target, input, |ack| {
                if verbose {
                    say(ack);
                }
            });
            let unanswered = |s: &ricochet::client::Summary, broke: bool, sent_exact: bool| {
                if let Some(advice) = ricochet::client::resume_advice(s, broke, sent_exact) {
                    eprintln!("{advice}");
                }
            };
            let summary = match sent {
                Ok(s) => s,
                Err(e) => {
                    // What was answered before the break still counts for the producer.
                    say(&e.summary);
                    unanswered(&e.summary, true, !e.sent_at_least);
                    return Err(anyhow::Error::new(e.error).context("send failed"));
                }
            };
            say(&summary);
            unanswered(&summary, false, true);
            Ok(if summary.err > 0 || summary.unanswered() > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Check { config } => {
            let file = ConfigFile::read(&config)?;
            match ricochet::server::check(&file) {
                Ok(specs) => {
                    say(format_args!(
                        "{}: ok ({} endpoints)",
                        config.display(),
                        specs.len()
                    ));
                    Ok(ExitCode::SUCCESS)
                }
                Err(problems) => {
                    for p in problems {
                        say(p);
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Cmd::Render {
            config,
            endpoint,
            event_file,
        } => {
            let cfg = Config::load(&config)?;
            let mut line = Vec::new();
            match event_file.filter(|p| p.as_os_str() != "-") {
                Some(p) => {
                    line =
                        std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?
                }
                None => {
                    std::io::stdin().read_to_end(&mut line)?;
                }
            }
            let out = ricochet::render::render_request(&cfg, &endpoint, &line)?;
            if let Some(why) = &out.not_routed {
                let _ = writeln!(std::io::stderr(), "note: {why}");
            }
            std::io::stdout().write_all(&out.request)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
