//! The core: what the daemon, the API and every capability share, depending
//! on none of them. Component identity and state, the status board, the task
//! context and its errors, the capability seam and its routes, the accounts
//! view, the news capabilities publish for each other, and the seams around
//! the clock, system paths and backoff.

pub mod accounts;
pub mod atomic;
pub mod backoff;
pub mod beneath;
pub mod board;
pub mod capability;
pub mod clock;
pub mod component;
pub mod credentials;
pub mod http;
pub mod journal;
pub mod machine;
pub mod memory;
pub mod mount;
pub mod mountinfo;
pub mod paths;
pub mod request;
pub mod share_write;
pub mod shared;
pub mod stuck;
pub mod task;
pub mod user_uids;

#[cfg(test)]
mod layering;
