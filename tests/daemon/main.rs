//! Black-box tests: the real `pool-agentd` in a `--root` sandbox, driven by
//! the real `pool-agent` over the real socket.

mod harness;

mod azure;
mod azure_scale_in;
mod cli;
mod config_check;
mod idle;
mod imds_firewall;
mod lifecycle;
mod links;
mod permissions;
mod pool;
mod readiness;
mod scripts;
mod share;
mod users;
mod writes;
