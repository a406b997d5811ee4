//! Users of the pool over one day, from a seeded generator: a working day
//! with a morning ramp, a lunch dip, an evening tail and a few off-hours
//! arrivals; a weekend day sparse. Times are seconds since 00:00.

/// One stay on a VM: from arrival (she asks for a VM) to logout.
#[derive(Debug, Clone)]
pub struct Visit {
    pub user: usize,
    pub arrive: f64,
    pub leave: f64,
    /// Away from the keyboard with the session open: (from, to, hold end).
    pub breaks: Vec<(f64, f64, Option<f64>)>,
}

impl Visit {
    /// Working seconds (the user's hours for the ideal).
    pub fn length(&self) -> f64 {
        self.leave - self.arrive
    }

    /// Whether she is at work at `t` (not on a break), and the last time she was.
    pub fn active(&self, t: f64) -> (bool, f64) {
        for (from, to, _) in &self.breaks {
            if t >= *from && t < *to {
                return (false, *from);
            }
        }
        (true, t)
    }

    pub fn hold_until(&self, t: f64) -> Option<f64> {
        self.breaks
            .iter()
            .filter(|(from, _, _)| t >= *from)
            .filter_map(|(_, _, hold)| *hold)
            .filter(|h| *h > t)
            .max_by(f64::total_cmp)
    }
}

const H: f64 = 3600.0;
const M: f64 = 60.0;

/// A normal draw (Box-Muller), clamped.
fn normal(rng: &mut fastrand::Rng, mean: f64, sd: f64, lo: f64, hi: f64) -> f64 {
    let (u, v) = (rng.f64().max(1e-9), rng.f64());
    let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
    (mean + sd * z).clamp(lo, hi)
}

/// The day's visits for a pool of `users`, `weekend` or not.
pub fn day(users: usize, weekend: bool, seed: u64) -> Vec<Visit> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut visits = Vec::new();
    if weekend {
        // A sparse day: about one user in five, at least one, for 1-3 hours.
        let count = ((users as f64 * 0.2).round() as usize).max(1);
        for user in 0..count {
            let arrive = 9.5 * H + rng.f64() * 9.0 * H;
            let leave = arrive + H + rng.f64() * 2.0 * H;
            visits.push(Visit { user, arrive, leave, breaks: Vec::new() });
        }
        visits.sort_by(|a, b| a.arrive.total_cmp(&b.arrive));
        return visits;
    }
    for user in 0..users {
        // One in twelve is away today (never the only user of a pool of one).
        if users > 1 && rng.u32(0..12) == 0 {
            continue;
        }
        let arrive = normal(&mut rng, 9.0 * H, 40.0 * M, 7.5 * H, 11.5 * H);
        let leave = normal(&mut rng, arrive + 8.5 * H, 50.0 * M, arrive + 5.0 * H, 20.0 * H);
        let mut breaks = Vec::new();
        // Lunch: most stay logged in and step away 15-40 minutes.
        let lunch = normal(&mut rng, 12.5 * H, 25.0 * M, 11.5 * H, 14.0 * H);
        if lunch > arrive + 30.0 * M && lunch + 40.0 * M < leave {
            breaks.push((lunch, lunch + (15.0 + rng.f64() * 25.0) * M, None));
        }
        // One in six has a long meeting and holds the VM for it (`pool-agent hold 2h`).
        if rng.u32(0..6) == 0 {
            let from = arrive + 2.0 * H + rng.f64() * 3.0 * H;
            let to = from + (60.0 + rng.f64() * 50.0) * M;
            if to < leave && breaks.iter().all(|(f, t, _)| to < *f || from > *t) {
                breaks.push((from, to, Some(from + 2.0 * H)));
            }
        }
        breaks.sort_by(|a, b| a.0.total_cmp(&b.0));
        visits.push(Visit { user, arrive, leave, breaks });
        // One in eight comes back in the evening (off hours) for about an hour.
        if rng.u32(0..8) == 0 {
            let back = (leave + H + rng.f64() * 2.0 * H).clamp(19.0 * H, 22.5 * H);
            visits.push(Visit { user, arrive: back, leave: back + (30.0 + rng.f64() * 60.0) * M, breaks: Vec::new() });
        }
    }
    // A pool of one still has its off-hours case: the user checks a job at 19:30.
    if users == 1 && !visits.iter().any(|v| v.arrive >= 18.0 * H) {
        visits.push(Visit { user: 0, arrive: 19.5 * H + rng.f64() * H, leave: 0.0, breaks: Vec::new() });
        if let Some(v) = visits.last_mut() {
            v.leave = v.arrive + 45.0 * M;
        }
    }
    visits.sort_by(|a, b| a.arrive.total_cmp(&b.arrive));
    visits
}
