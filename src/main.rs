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
    /// Run the dispatcher in the foreground; logs go to stderr. SIGTERM, SIGINT (Ctrl-C) or
    /// SIGHUP stops it: in-flight attempts finish (10 s at most), then it exits 0.
    Serve {
        /// The config file: `[server]` and the `[[endpoint]]`s. Without it, the defaults
        /// and no file endpoints (a start without it deletes the endpoints an earlier
        /// file gave).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The store's directory [default: ./ricochet-data, or the file's `data_dir`].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The ingest Unix socket [default: ./ricochet.sock, or the file's `socket`].
        #[arg(long)]
        socket: Option<PathBuf>,
        /// TCP ingest address, IP:PORT (same line protocol) [default: none, or the file's `listen`].
        #[arg(long, value_parser = ricochet::config::parse_socket_addr)]
        listen: Option<SocketAddr>,
        /// Admin API address, IP:PORT [default: 127.0.0.1:7878, or the file's `admin`].
        #[arg(long, value_parser = ricochet::config::parse_socket_addr)]
        admin: Option<SocketAddr>,
        /// Worker threads (0 = one per core) [default: 0, or the file's `workers`].
        #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=ricochet::config::MAX_WORKERS as u64))]
        workers: Option<usize>,
        /// The I/O driver [default: auto (io_uring where the kernel allows, else epoll), or
        /// the file's `driver`; MONOIO_FORCE_LEGACY_DRIVER=1 forces legacy].
        #[arg(long, value_enum)]
        driver: Option<Driver>,
    },
    /// Stream NDJSON events from FILE (or stdin) and print a summary
    /// (`sent N ok N dup N err N`). Exit 0 when every line was answered `ok` or `dup`,
    /// 1 otherwise. Without -v the first ten `err` answers go to stderr.
    Send {
        /// The server's Unix socket [default: ./ricochet.sock].
        #[arg(long, conflicts_with = "connect")]
        socket: Option<PathBuf>,
        /// The server's TCP listener, HOST:PORT, instead of the socket.
        #[arg(long)]
        connect: Option<String>,
        /// Print every answer line.
        #[arg(short, long)]
        verbose: bool,
        /// One event per line; `-` or none: standard input.
        file: Option<PathBuf>,
    },
    /// Validate a config and compile every template: every problem, one per line with
    /// its line:column, on stdout (exit 1); warnings too.
    Check {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the exact HTTP request an endpoint would receive for an event.
    Render {
        /// The config file that defines the endpoint.
        #[arg(long)]
        config: PathBuf,
        /// The endpoint's name.
        #[arg(long)]
        endpoint: String,
        /// One event line as ingest takes it; `-` or none: standard input.
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
    let value = std::env::var("RICOCHET_LOG").ok();
    let (directives, mut warn) = ricochet::config::log_filter(value.as_deref());
    let filter = tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        warn = Some(format!("RICOCHET_LOG: {e}: logging at info"));
        tracing_subscriber::EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_writer(|| LogSink)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .init();
    if let Some(w) = warn {
        tracing::warn!("{w}");
    }
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
            // First: a stop while the config file is read and compiled waits for the
            // server to be ready, as one later does.
            let signals = ricochet::server::StopSignals::catch()?;
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
            ricochet::server::serve(cfg, specs, signals)?;
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
            let stdin = || ricochet::client::Named::new(std::io::stdin(), "standard input");
            let input: Box<dyn Read + Send> = match file {
                // `-` is stdin, as for most tools.
                Some(p) if p.as_os_str() == "-" => Box::new(stdin()),
                Some(p) => Box::new(ricochet::client::Named::new(
                    std::fs::File::open(&p)
                        .with_context(|| format!("cannot open {}", p.display()))?,
                    p.display().to_string(),
                )),
                None => Box::new(stdin()),
            };
            // Without `-v`, the first `err` answers go to stderr with their line's
            // number among the non-blank lines (the answers come in their order).
            const ERRS_SHOWN: u64 = 10;
            let (mut answers, mut errs) = (0u64, 0u64);
            let sent = ricochet::client::send(&target, input, |ack| {
                answers += 1;
                if verbose {
                    say(ack);
                } else if ack.starts_with("err") {
                    errs += 1;
                    if errs <= ERRS_SHOWN {
                        eprintln!("non-blank line {answers}: {ack}");
                    }
                }
            });
            if errs > ERRS_SHOWN {
                eprintln!(
                    "… and {} more `err` answers (`-v` prints every answer)",
                    errs - ERRS_SHOWN
                );
            }
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
            let file = match ConfigFile::read(&config) {
                Ok(file) => file,
                // A problem of the file, said where the others are (stdout, exit 1).
                Err(e @ ricochet::config::ConfigError::Parse { .. }) => {
                    say(e);
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e.into()),
            };
            match ricochet::server::check(&file) {
                Ok(specs) => {
                    for w in file.warnings() {
                        say(w);
                    }
                    let n = specs.len();
                    let s = if n == 1 { "" } else { "s" };
                    say(format_args!("{}: ok ({n} endpoint{s})", config.display()));
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
            for why in out.not_routed.iter().chain(&out.refused) {
                let _ = writeln!(std::io::stderr(), "note: {why}");
            }
            std::io::stdout().write_all(&out.request)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
