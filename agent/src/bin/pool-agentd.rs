//! `pool-agentd`: the daemon. All logic lives in the library.

use clap::Parser;
use pool_agent::cli::args::DaemonArgs;
use pool_agent::daemon::{self, DaemonOptions};
use std::process::ExitCode;

fn main() -> ExitCode {
    pool_agent::core::memory::few_arenas();
    let args = DaemonArgs::parse();
    daemon::init_logging();
    daemon::main(DaemonOptions {
        config: args.config,
        root: args.root,
        check_config: args.check_config,
        demo: args.demo,
        prepare_image: args.prepare_image,
    })
}
