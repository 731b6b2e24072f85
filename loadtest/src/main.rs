//! `checkline-loadtest`: the load generator and invariant checker for checkline.
//!
//! It drives the public HTTP API the way a crowd of storefront clients would
//! (distinct customers, idempotency keys, honouring `Retry-After`), learns the
//! decision of every accepted order, prints a throughput and latency report, and
//! then audits the contract's invariants against PostgreSQL and the API.
//!
//! Each load shape is a scenario under [`scenario`]; the building blocks
//! (tokens, HTTP client, submission with retries, the closed- and open-loop
//! engine, decision tracking, latency histograms, report, invariant
//! evaluation) are shared between scenarios, and with the row-locking
//! [`baseline`] that `--baseline` compares checkline against.
//!
//! Exit codes: `0` every check passed, `1` at least one check failed, `2` the
//! run could not be carried out (bad flags or configuration, API or database
//! unreachable, set-up refused).

mod auth;
mod baseline;
mod buyer;
mod cart;
mod checks;
mod cli;
mod client;
mod db;
mod decisions;
mod latency;
mod load;
mod read;
mod report;
mod scenario;
mod schedule;
#[cfg(test)]
mod stub_api;
mod wire;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if let cli::Command::Tokens(args) = &cli.command {
        return match print_tokens(&cli.connection, args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("checkline-loadtest: error: {err:#}");
                ExitCode::from(scenario::EXIT_NOT_RUN)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("checkline-loadtest: error: starting the async runtime: {err}");
            return ExitCode::from(scenario::EXIT_NOT_RUN);
        }
    };
    match runtime.block_on(scenario::run(cli)) {
        Ok(verdict) => ExitCode::from(verdict.exit_code()),
        Err(err) => {
            eprintln!("checkline-loadtest: error: {err:#}");
            ExitCode::from(scenario::EXIT_NOT_RUN)
        }
    }
}

/// `checkline-loadtest tokens`: the tokens, one per line, on stdout.
fn print_tokens(connection: &cli::ConnectionArgs, args: &cli::TokensArgs) -> anyhow::Result<()> {
    use std::io::Write;

    let secret = cli::Connection::from_args(connection)?.jwt_secret;
    let tokens = auth::token_list(&auth::TokenMinter::new(&secret), args)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for token in tokens {
        writeln!(out, "{token}")?;
    }
    out.flush()?;
    Ok(())
}
