//! The day drawn as a small hand-written SVG: capacity, in-use and free VMs
//! per minute, working hours shaded.

use super::world::{Minute, Report};
use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 220.0;
const LEFT: f64 = 36.0;
const BOTTOM: f64 = 24.0;

pub fn draw(title: &str, report: &Report, working: Option<(f64, f64)>) -> String {
    let minutes = &report.minutes;
    let top = minutes.iter().map(|m| m.capacity.max(m.in_use + m.waiting)).max().unwrap_or(1).max(1) as f64;
    let n = minutes.len().max(1) as f64;
    let x = |i: f64| LEFT + i / n * (W - LEFT - 8.0);
    let y = |v: f64| H - BOTTOM - v / top * (H - BOTTOM - 28.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">
<rect width="{W}" height="{H}" fill="#fff"/>
<text x="{LEFT}" y="14" font-weight="bold">{title}</text>
"##
    );
    if let Some((from, to)) = working {
        let (a, b) = (x(from / 60.0), x(to / 60.0));
        let _ = writeln!(
            s,
            r##"<rect x="{a:.1}" y="20" width="{:.1}" height="{:.1}" fill="#f3f3f3"/>"##,
            b - a,
            H - BOTTOM - 20.0
        );
    }
    for h in (0..=24).step_by(3) {
        let px = x(h as f64 * 60.0);
        if px <= W {
            let _ = writeln!(
                s,
                r##"<text x="{px:.1}" y="{:.1}" text-anchor="middle" fill="#555">{h:02}:00</text>"##,
                H - 8.0
            );
        }
    }
    let step = (top / 4.0).ceil().max(1.0);
    let mut v = 0.0;
    while v <= top {
        let py = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{v}</text>"##,
            W - 8.0,
            LEFT - 4.0,
            py + 4.0
        );
        v += step;
    }
    type Series = (&'static str, &'static str, fn(&Minute) -> u32);
    let series: [Series; 4] = [
        ("capacity", "#1f4e9c", |m| m.capacity),
        ("in use", "#2e8b3e", |m| m.in_use),
        ("free", "#e08a00", |m| m.free),
        ("waiting users", "#c0392b", |m| m.waiting),
    ];
    for (k, (name, colour, get)) in series.iter().enumerate() {
        // A step line: a point only where the value changes.
        let mut path = format!("M{:.1},{:.1}", x(0.0), y(minutes.first().map(get).unwrap_or(0) as f64));
        let mut last = minutes.first().map(get).unwrap_or(0);
        for (i, m) in minutes.iter().enumerate().skip(1) {
            if get(m) != last {
                last = get(m);
                let _ = write!(path, "H{:.1}V{:.1}", x(i as f64), y(last as f64));
            }
        }
        let _ = write!(path, "H{:.1}", x(n));
        let _ = writeln!(s, r##"<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>"##);
        let lx = LEFT + 220.0 + k as f64 * 110.0;
        let _ = writeln!(
            s,
            r##"<rect x="{lx}" y="6" width="10" height="10" fill="{colour}"/><text x="{:.1}" y="15">{name}</text>"##,
            lx + 14.0
        );
    }
    s.push_str("</svg>\n");
    s
}
