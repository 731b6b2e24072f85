//! The `checkline-worker` command line: without a command the worker
//! decides queued orders until SIGTERM or Ctrl-C;
//! `checkline-worker dead-letters list|show SEQ|replay SEQ` inspects the
//! messages that could never be processed.
//!
//! Kept in the library so that the binary is one call, and the end-to-end
//! tests can build the very same program as a binary of their own.

use crate::{deadletter, WorkerConfig};
use anyhow::Context;
use checkline_shared::config::{CommonConfig, Env};
use checkline_shared::deadletter as dead_letters;
use checkline_shared::{queue, subjects::Subjects};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "The checkline worker; without a command it runs until stopped")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Messages that could never be processed.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// List them, oldest first.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one, with its payload.
    Show { sequence: u64 },
    /// Publish one back to its original subject and remove it.
    Replay { sequence: u64 },
}

/// Parses the command line and the environment, and runs what they say.
pub async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let env = Env::from_process();
    checkline_shared::telemetry::init(&env)?;
    match args.command {
        None => {
            let config = WorkerConfig::from_env(&env)?;
            crate::run(config, checkline_shared::shutdown::signal()).await?;
        }
        Some(Command::DeadLetters { action }) => {
            let common = CommonConfig::from_env(&env)?;
            let subjects = Subjects::new(&common.prefix);
            let client = queue::connect(&common, "checkline-worker dead-letters").await?;
            let js = async_nats::jetstream::new(client);
            let max_bytes = crate::config::dead_letter_max_bytes(&env)?;
            let mut stream =
                deadletter::ensure_stream(&js, &subjects, max_bytes, common.stream_replicas)
                    .await?;
            match action {
                DeadLetterAction::List { limit } => {
                    let letters = dead_letters::list(&mut stream, &subjects, limit)
                        .await?
                        .letters;
                    println!(
                        "{:>10}  {:<44}  {:>10}  reason",
                        "sequence", "original subject", "orig. seq"
                    );
                    for l in &letters {
                        println!(
                            "{:>10}  {:<44}  {:>10}  {}",
                            l.sequence,
                            l.original_subject,
                            original_sequence(l),
                            l.reason
                        );
                    }
                    println!("{} dead letter(s)", letters.len());
                }
                DeadLetterAction::Show { sequence } => {
                    let l = dead_letters::get(&stream, &subjects, sequence).await?;
                    println!("sequence           {}", l.sequence);
                    println!("reason             {}", l.reason);
                    println!("original subject   {}", l.original_subject);
                    println!("original sequence  {}", original_sequence(&l));
                    println!(
                        "payload ({} bytes):\n{}",
                        l.payload.len(),
                        String::from_utf8_lossy(&l.payload)
                    );
                }
                DeadLetterAction::Replay { sequence } => {
                    let publisher =
                        queue::Publisher::new(js.clone(), subjects.clone(), common.publish_timeout);
                    let replayed = dead_letters::replay(&publisher, &stream, &subjects, sequence)
                        .await
                        .with_context(|| format!("replaying dead letter {sequence}"))?;
                    let subject = replayed.subject;
                    println!("dead letter {sequence} published again to {subject}");
                }
            }
        }
    }
    Ok(())
}

/// The original sequence as the header wrote it; empty when missing.
fn original_sequence(letter: &dead_letters::DeadLetter) -> String {
    letter
        .original_sequence
        .map(|s| s.to_string())
        .unwrap_or_default()
}
