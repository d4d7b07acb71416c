//! Helpers for `bench/run.sh`: the reference reverse proxy, the upstream every row
//! forwards to, and the store seeder share their argument parsing and response body
//! here. None of this is part of the gateway; see `docs/BENCHMARKS.md`.

pub mod args;
pub mod body;
pub mod serve;
