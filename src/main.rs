//! The `titan` binary: command-line wiring only. Each subcommand calls into the crate whose noun it is.

use clap::Parser;

/// Titan: a multi-region container scheduler.
#[derive(Parser, Debug)]
#[command(name = "titan", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
