//! A simulated day of the pool (issue #27): `cargo run --release --example
//! pool_day -- --out docs/` prints the figures for 1, 5 and 50 users on a
//! weekday and a weekend day and writes one SVG per run into the folder.
//! `--log` also prints every autoscale action and the minute with the most
//! VMs free; `--template FILE` runs other rules; `--seed N` other users;
//! `--wake-as-readme` the first wake command README gave (min 1, the
//! working-hours rules, 2 h), `--wake-reads-capacity-only` the one that read
//! only the scale set's capacity, `--wake-once` the one that did not look
//! again for a colleague's command run into its own, all kept to compare; `--waiters-random`
//! gives a VM that turns ready to any waiting user, not the one who came first;
//! `--wake-minutes N` another length of the wake profile (30).

#[path = "pool_day/mod.rs"]
mod sim;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args.iter().position(|a| a == "--out").and_then(|i| args.get(i + 1)).cloned();
    let log = args.iter().any(|a| a == "--log");
    let seed = args
        .iter()
        .position(|a| a == "--seed")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(27);
    let other = args.iter().position(|a| a == "--template").and_then(|i| args.get(i + 1));
    let text = match other.map(std::fs::read_to_string) {
        Some(Ok(text)) => Some(text),
        Some(Err(e)) => {
            eprintln!("pool_day: --template: {e}");
            return ExitCode::FAILURE;
        }
        None => None,
    };
    println!("rules from {}\n", other.map(String::as_str).unwrap_or(sim::template().1));
    println!("{}", sim::HEADER);
    for users in [1, 5, 50] {
        for weekend in [false, true] {
            let setup = match match &text {
                Some(text) => sim::setup_from(text, users, weekend, seed, 86_400.0),
                None => sim::setup(users, weekend, seed, 86_400.0),
            } {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("pool_day: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let mut setup = setup;
            if args.iter().any(|a| a == "--wake-once") {
                setup.wake.looks_again = false;
            }
            if args.iter().any(|a| a == "--wake-reads-capacity-only") {
                setup.wake.reads_wake_profile = false;
            }
            if let Some(minutes) = args
                .iter()
                .position(|a| a == "--wake-minutes")
                .and_then(|i| args.get(i + 1))
                .and_then(|m| m.parse::<f64>().ok())
            {
                setup.wake.length = minutes * 60.0;
            }
            if args.iter().any(|a| a == "--waiters-random") {
                setup.first_come = false;
            }
            if args.iter().any(|a| a == "--wake-as-readme") {
                setup.wake.as_readme = true;
                setup.wake.length = 2.0 * 3600.0;
            }
            let report = sim::world::run(&setup);
            println!("{}", sim::row(&setup, &report));
            if log {
                let from = if weekend { 60 } else { (setup.working.0 / 60.0) as usize + 60 };
                if let Some((i, m)) =
                    report.minutes.iter().enumerate().skip(from).max_by_key(|(_, m)| m.free - m.free_after_use)
                {
                    eprintln!(
                        "  most free not after use: {} at {}: {m:?}",
                        m.free - m.free_after_use,
                        sim::world::hhmm(i as f64 * 60.0)
                    );
                }
                for line in &report.log {
                    eprintln!("  {users} {}: {line}", if weekend { "weekend" } else { "weekday" });
                }
            }
            if let Some(dir) = &out {
                let day = if weekend { "weekend" } else { "weekday" };
                let title = format!("{users} user{} - {day}", if users == 1 { "" } else { "s" });
                let working = (!weekend).then_some(setup.working);
                let path = std::path::Path::new(dir).join(format!("pool-day-{users}-{day}.svg"));
                if let Err(e) = std::fs::write(&path, sim::svg::draw(&title, &report, working)) {
                    eprintln!("pool_day: {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    if let Ok(setup) = sim::setup(1, false, seed, 86_400.0) {
        println!(
            "\nthe way back: {:.1} min, {:.1} min behind a wake made in the 3 minutes before hers, \
             {:.1} min when a colleague's command ran into hers",
            setup.wake.figure() / 60.0,
            setup.wake.figure_behind_recent() / 60.0,
            setup.wake.figure_when_run_into() / 60.0
        );
    }
    ExitCode::SUCCESS
}
