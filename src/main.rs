//! `agora`: one binary for the whole mesh. `--target` picks the components.

use std::{io::Read as _, path::PathBuf, process::ExitCode};

use agora::{
    app::{App, MODULES, Targets},
    config::Config,
};
use agora_kit::config::Env;
use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// mimalloc: the request path allocates many small, short-lived buffers
/// across threads, where glibc's allocator spent a tenth of the edge's CPU
/// (measured with `cargo bench --bench edge`; see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "agora",
    version,
    about = "The Agora gRPC mesh with a REST/JSON edge"
)]
struct Cli {
    /// Configuration file (default: ./agora.toml if present).
    #[arg(long, global = true, env = "AGORA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run components until SIGTERM/SIGINT.
    Serve {
        /// Comma list of targets, or `all`.
        #[arg(long, default_value = "all", env = "AGORA_TARGET")]
        target: Targets,
        /// An encoded FileDescriptorSet (`buf build -o FILE`) whose
        /// annotated services the edge serves besides its own; repeatable.
        /// Their upstreams are mapped by `AGORA_EDGE_<NAME>_PACKAGES`.
        #[arg(long = "descriptor-set", value_name = "FILE")]
        descriptor_sets: Vec<PathBuf>,
    },
    /// Run database migrations and exit.
    Migrate,
    /// List targets and what each depends on.
    Targets,
    /// Exits 0 when `url` (plain HTTP) answers 200 within two seconds: a
    /// health check for containers without a shell or curl (compose).
    Probe {
        #[arg(default_value = "http://127.0.0.1:9090/readyz")]
        url: String,
    },
    /// Account administration.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Analytics maintenance.
    Analytics {
        #[command(subcommand)]
        command: AnalyticsCommand,
    },
    /// Load generated data for trials and benchmarks.
    Seed {
        #[command(subcommand)]
        command: SeedCommand,
    },
}

#[derive(Subcommand)]
enum AnalyticsCommand {
    /// Rebuilds the rollups of past days from the raw events (idempotent;
    /// safe while analytics runs).
    Backfill {
        /// First day, YYYY-MM-DD (UTC).
        #[arg(long)]
        from: chrono::NaiveDate,
        /// Last day, YYYY-MM-DD (UTC); default today.
        #[arg(long)]
        to: Option<chrono::NaiveDate>,
    },
}

#[derive(Subcommand)]
enum SeedCommand {
    /// Add a category tree and generated products to the catalog.
    Catalog {
        /// How many products to add.
        #[arg(long, default_value_t = 1000)]
        products: usize,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Create an administrator. The password is read from stdin when piped;
    /// otherwise one is generated and printed once.
    CreateAdmin {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "Administrator")]
        display_name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agora: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Trace export runs on the runtime; the guard, dropped before the
    // runtime, flushes queued spans and log lines.
    let entered = runtime.enter();
    let services: Vec<&'static str> = match &cli.command {
        Command::Serve { target, .. } => target.0.iter().map(|m| m.service_name).collect(),
        _ => Vec::new(),
    };
    let _telemetry = agora_kit::telemetry::init(match &cli.command {
        Command::Serve { .. } => agora_kit::telemetry::Mode::Serve(&services),
        _ => agora_kit::telemetry::Mode::Cli,
    });
    drop(entered);
    let config = match Config::load(cli.config.as_deref(), &Env::from_process()) {
        Ok(mut c) => {
            if let Command::Serve {
                descriptor_sets, ..
            } = &cli.command
            {
                c.edge
                    .contracts
                    .descriptor_sets
                    .extend(descriptor_sets.iter().cloned());
            }
            c
        }
        Err(e) => {
            eprintln!("agora: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "agora failed");
            eprintln!("agora: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve { target, .. } => {
            agora_kit::metrics::handle();
            metrics::gauge!("agora_build_info",
                "version" => env!("CARGO_PKG_VERSION"),
                "commit" => option_env!("AGORA_GIT_COMMIT").unwrap_or("unknown"))
            .set(1.0);
            let stop = agora_kit::shutdown::signal().context("cannot listen for SIGTERM/SIGINT")?;
            let app = App::build(config, &target).await?;
            app.run_until_stopped(stop).await
        }
        Command::Migrate => {
            for db in MODULES.iter().filter_map(|m| m.database) {
                db.migrate(&config.database)
                    .await
                    .with_context(|| format!("migrating schema {}", db.schema))?;
            }
            println!("migrations applied");
            Ok(())
        }
        Command::Seed {
            command: SeedCommand::Catalog { products },
        } => {
            let store = agora_catalog::connect(&config.database).await?;
            let bar = indicatif::ProgressBar::new(products as u64).with_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} products ({per_sec}, {eta} left)",
                )?,
            );
            agora_catalog::seed::seed(store.pool(), products, |done| bar.set_position(done as u64))
                .await
                .map_err(anyhow::Error::new)
                .context("seeding failed")?;
            bar.finish();
            println!("added {products} products");
            Ok(())
        }
        Command::Analytics {
            command: AnalyticsCommand::Backfill { from, to },
        } => {
            let to = to.unwrap_or_else(|| chrono::Utc::now().date_naive());
            let store = agora_analytics::connect(&config.analytics, &config.database).await?;
            let days = (to - from).num_days().max(0) as u64 + 1;
            let bar = indicatif::ProgressBar::new(days).with_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} days, {msg} ({eta} left)",
                )?,
            );
            let events = agora_analytics::jobs::backfill(
                &store,
                from,
                to,
                config.analytics.retention(),
                |done, events| {
                    bar.set_position(done as u64);
                    bar.set_message(format!("{events} events"));
                },
            )
            .await
            .context("backfill failed")?;
            bar.finish();
            println!("rebuilt {days} days from {events} events ({from} to {to})");
            Ok(())
        }
        Command::Probe { url } => {
            let status = agora::probe::get(&url, std::time::Duration::from_secs(2)).await?;
            anyhow::ensure!(status == 200, "{url} answered {status}");
            Ok(())
        }
        Command::Targets => {
            for m in MODULES {
                let calls = if m.calls.is_empty() {
                    "-".to_owned()
                } else {
                    m.calls.join(",")
                };
                println!("{:<10} calls: {calls:<14} {}", m.name, m.about);
            }
            Ok(())
        }
        Command::Users {
            command:
                UsersCommand::CreateAdmin {
                    email,
                    display_name,
                },
        } => {
            let (password, generated) = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                (agora_users::secrets::new_secret("")?, true)
            } else {
                let mut buf = String::new();
                std::io::stdin().read_to_string(&mut buf)?;
                let pw = buf.trim_end_matches(['\r', '\n']).to_owned();
                if pw.is_empty() {
                    (agora_users::secrets::new_secret("")?, true)
                } else {
                    (pw, false)
                }
            };
            let user = agora_users::create_admin(
                &config.database,
                &email,
                password.clone(),
                &display_name,
            )
            .await?;
            println!("created admin {} ({})", user.email, user.id);
            if generated {
                println!("password (shown once): {password}");
            }
            Ok(())
        }
    }
}
