//! `banger`, the CLI. Thin: parse, ask the daemon, print.

mod cli;
mod client;
mod cmd;
mod completion;
mod doctor;
mod output;
mod workspace;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Answer shell completion requests before normal parsing.
    completion::handle_env();
    let cli = cli::Cli::parse();
    match cmd::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // The whole chain, outermost first: "what failed: because: because".
            let mut msg = format!("{} {e}", output::red("error:"));
            for cause in e.chain().skip(1) {
                msg.push_str(&format!("\n  caused by: {cause}"));
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}
