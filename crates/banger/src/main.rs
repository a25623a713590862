//! `banger`, the CLI. Thin: parse, ask the daemon, print.

#[macro_use]
mod output;
mod api_path;
mod cli;
mod client;
mod cmd;
mod completion;
mod doctor;
mod doctor_egress;
mod terminal;
mod typo;
mod workspace;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

fn main() -> ExitCode {
    // Answer shell completion requests before normal parsing.
    completion::handle_env();
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let args: Vec<String> = std::env::args().skip(1).collect();
            typo::suggest(e, &cli::Cli::command(), &args).exit()
        }
    };
    match cmd::run(cli) {
        Ok(code) => code,
        // The reader of our output went away (`| head -1`): nothing is
        // left to say to anyone. 141 is what a shell reports for SIGPIPE.
        Err(e) if output::is_broken_pipe(&e) => ExitCode::from(141),
        Err(e) => {
            // The whole chain, outermost first: "what failed: because: because".
            let mut msg = format!("{} {e}", output::paint_err("error:", "31"));
            for cause in e.chain().skip(1) {
                msg.push_str(&format!("\n  caused by: {cause}"));
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}
