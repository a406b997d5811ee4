//! `pool-agent`: the CLI. All logic lives in the library.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    pool_agent::cli::main(pool_agent::cli::args::Cli::parse())
}
