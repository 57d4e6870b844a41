//! `experiment`: runs every policy against its own real server and prints the table.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use experiment::{Binaries, Params, judge, output, run, table};

/// Runs report-apis and report-collector on loopback with time compressed, once per concurrency
/// policy, and prints what each policy did to the server. The real binaries are looked up beside
/// this executable (build them with `cargo build --release -p report-apis -p report-collector`)
/// or taken from REPORT_APIS_BIN and REPORT_COLLECTOR_BIN.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    params: Params,
    /// Folder for results.md and pending.svg.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    out: PathBuf,
    /// Keep the config files, lock files, reports and logs of every run in this folder.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// The report-apis executable (default: beside this one, or REPORT_APIS_BIN).
    #[arg(long, value_name = "PATH")]
    report_apis: Option<PathBuf>,
    /// The report-collector executable (default: beside this one, or REPORT_COLLECTOR_BIN).
    #[arg(long, value_name = "PATH")]
    report_collector: Option<PathBuf>,
    /// Exit 1 when a conclusion does not hold.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run_cli(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("experiment: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_cli(cli: Cli) -> anyhow::Result<ExitCode> {
    let params = cli.params;
    params.validate().map_err(anyhow::Error::msg)?;
    let binaries = match (cli.report_apis, cli.report_collector) {
        (Some(report_apis), Some(report_collector)) => Binaries {
            report_apis,
            report_collector,
        },
        (None, None) => {
            experiment::binaries::build_with_cargo()?;
            Binaries::locate()?
        }
        _ => anyhow::bail!("give both --report-apis and --report-collector, or neither"),
    };
    let temp = tempfile::Builder::new()
        .prefix("experiment-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let work_dir = cli.work_dir.unwrap_or_else(|| temp.path().to_path_buf());
    eprintln!(
        "experiment: {} arms side by side for {} s (plus up to {} s for the last runs to end)...",
        experiment::Arm::selected(!params.without_postgres).len(),
        params.span.as_secs_f64(),
        params.drain.as_secs_f64()
    );
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let outcome = runtime.block_on(run(&params, &binaries, &work_dir))?;
    let verdict = judge(&outcome);
    println!(
        "{}\n\n{}\n{}",
        table::parameters(&outcome),
        table::markdown_table(&outcome),
        verdict
    );
    let (page, chart) = output::save(&outcome, &verdict, &cli.out)?;
    eprintln!(
        "experiment: wrote {} and {}",
        page.display(),
        chart.display()
    );
    Ok(if cli.check && !verdict.holds() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
