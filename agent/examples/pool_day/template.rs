//! The autoscale setting as the template ships it: the
//! `Microsoft.Insights/autoscalesettings` resource of `pool.json`, its
//! profiles and rules with the template's parameters resolved (defaults,
//! overridden like a parameters file would). Only the expressions the
//! resource uses are understood; anything else is an error, never a guess.

use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistic {
    Average,
    Min,
    Max,
    Sum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    Average,
    Minimum,
    Maximum,
    Total,
    Count,
    Last,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Equals,
    NotEquals,
    GreaterThan,
    GreaterThanOrEqual,
    LessThan,
    LessThanOrEqual,
}

impl Operator {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Operator::Equals => value == threshold,
            Operator::NotEquals => value != threshold,
            Operator::GreaterThan => value > threshold,
            Operator::GreaterThanOrEqual => value >= threshold,
            Operator::LessThan => value < threshold,
            Operator::LessThanOrEqual => value <= threshold,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Count(u32),
    Percent(u32),
    Exact(u32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub metric: String,
    pub statistic: Statistic,
    pub grain_min: u32,
    pub window_min: u32,
    pub aggregation: Aggregation,
    pub operator: Operator,
    pub threshold: f64,
    pub increase: bool,
    pub change: Change,
    pub cooldown_min: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub min: u32,
    pub max: u32,
    pub default: u32,
    pub rules: Vec<Rule>,
    /// Weekly recurrence: days (0 = Monday) and the start minute of the day.
    pub recurrence: Option<(Vec<u32>, u32)>,
}

/// The autoscale resource's profiles, parameters resolved from their
/// defaults and `overrides`.
pub fn profiles(template: &str, overrides: &BTreeMap<String, Value>) -> Result<Vec<Profile>, String> {
    let doc: Value = serde_json::from_str(template).map_err(|e| format!("pool.json: {e}"))?;
    let mut params: BTreeMap<String, Value> = BTreeMap::new();
    if let Some(map) = doc["parameters"].as_object() {
        for (name, spec) in map {
            if let Some(default) = spec.get("defaultValue") {
                params.insert(name.clone(), default.clone());
            }
        }
    }
    for (name, value) in overrides {
        if !params.contains_key(name) && doc["parameters"].get(name).is_none() {
            return Err(format!("pool.json has no parameter {name}"));
        }
        params.insert(name.clone(), value.clone());
    }
    let resources = doc["resources"].as_array().ok_or("pool.json: no resources")?;
    let autoscale = resources
        .iter()
        .find(|r| r["type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case("Microsoft.Insights/autoscalesettings")))
        .ok_or("pool.json: no Microsoft.Insights/autoscalesettings resource")?;
    let list = autoscale["properties"]["profiles"].as_array().ok_or("autoscale: no profiles")?;
    list.iter().map(|p| profile(p, &params)).collect()
}

fn profile(p: &Value, params: &BTreeMap<String, Value>) -> Result<Profile, String> {
    let name = p["name"].as_str().ok_or("a profile without a name")?.to_string();
    let number = |v: &Value| -> Result<u32, String> {
        let v = resolve(v, params)?;
        match &v {
            Value::Number(n) => n.as_u64().map(|n| n as u32),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .ok_or(format!("profile {name}: not a count: {v}"))
    };
    let cap = &p["capacity"];
    let rules = p["rules"].as_array().map(|r| r.iter().map(|r| rule(r, params)).collect()).unwrap_or(Ok(vec![]))?;
    let recurrence = match p.get("recurrence") {
        None => None,
        Some(r) => {
            let s = &r["schedule"];
            let days = s["days"]
                .as_array()
                .ok_or("recurrence without days")?
                .iter()
                .map(|d| day(d.as_str().unwrap_or("")))
                .collect::<Result<Vec<u32>, String>>()?;
            let first = |key: &str| -> Result<u32, String> {
                let list = s[key].as_array().ok_or(format!("recurrence without {key}"))?;
                number(list.first().ok_or(format!("recurrence: empty {key}"))?)
            };
            Some((days, first("hours")? * 60 + first("minutes")?))
        }
    };
    if p.get("fixedDate").is_some() {
        return Err(format!("profile {name}: a fixed-date profile in the template is not modelled"));
    }
    Ok(Profile {
        min: number(&cap["minimum"])?,
        max: number(&cap["maximum"])?,
        default: number(&cap["default"])?,
        name,
        rules,
        recurrence,
    })
}

fn rule(r: &Value, params: &BTreeMap<String, Value>) -> Result<Rule, String> {
    let t = &r["metricTrigger"];
    let a = &r["scaleAction"];
    let text = |v: &Value| -> Result<String, String> {
        match resolve(v, params)? {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(format!("not text: {other}")),
        }
    };
    let metric = text(&t["metricName"])?;
    let statistic = match text(&t["statistic"])?.as_str() {
        "Average" => Statistic::Average,
        "Min" => Statistic::Min,
        "Max" => Statistic::Max,
        "Sum" => Statistic::Sum,
        s => return Err(format!("{metric}: statistic {s}")),
    };
    let aggregation = match text(&t["timeAggregation"])?.as_str() {
        "Average" => Aggregation::Average,
        "Minimum" => Aggregation::Minimum,
        "Maximum" => Aggregation::Maximum,
        "Total" => Aggregation::Total,
        "Count" => Aggregation::Count,
        "Last" => Aggregation::Last,
        s => return Err(format!("{metric}: timeAggregation {s}")),
    };
    let operator = match text(&t["operator"])?.as_str() {
        "Equals" => Operator::Equals,
        "NotEquals" => Operator::NotEquals,
        "GreaterThan" => Operator::GreaterThan,
        "GreaterThanOrEqual" => Operator::GreaterThanOrEqual,
        "LessThan" => Operator::LessThan,
        "LessThanOrEqual" => Operator::LessThanOrEqual,
        s => return Err(format!("{metric}: operator {s}")),
    };
    let threshold: f64 = text(&t["threshold"])?.parse().map_err(|e| format!("{metric}: threshold: {e}"))?;
    let increase = match text(&a["direction"])?.as_str() {
        "Increase" => true,
        "Decrease" => false,
        s => return Err(format!("{metric}: direction {s}")),
    };
    let value: u32 = text(&a["value"])?.parse().map_err(|e| format!("{metric}: value: {e}"))?;
    let change = match text(&a["type"])?.as_str() {
        "ChangeCount" => Change::Count(value),
        "PercentChangeCount" => Change::Percent(value),
        "ExactCount" => Change::Exact(value),
        s => return Err(format!("{metric}: type {s}")),
    };
    Ok(Rule {
        grain_min: minutes(&text(&t["timeGrain"])?)?,
        window_min: minutes(&text(&t["timeWindow"])?)?,
        cooldown_min: minutes(&text(&a["cooldown"])?)?,
        metric,
        statistic,
        aggregation,
        operator,
        threshold,
        increase,
        change,
    })
}

/// A value, or the template expression it holds (`[parameters('x')]`,
/// `[string(parameters('x'))]`, `[int(parameters('x'))]`).
fn resolve(v: &Value, params: &BTreeMap<String, Value>) -> Result<Value, String> {
    let Some(expr) = v.as_str().and_then(|s| s.strip_prefix('[')).and_then(|s| s.strip_suffix(']')) else {
        return Ok(v.clone());
    };
    let (wrap, inner) = match expr.split_once('(') {
        Some((f @ ("string" | "int"), rest)) => (Some(f), rest.strip_suffix(')').unwrap_or(rest)),
        _ => (None, expr),
    };
    let name = inner
        .strip_prefix("parameters('")
        .and_then(|s| s.strip_suffix("')"))
        .ok_or(format!("expression not understood: {expr}"))?;
    let value = params.get(name).cloned().ok_or(format!("parameter {name} has no value"))?;
    Ok(match (wrap, value) {
        (Some("string"), Value::Number(n)) => Value::String(n.to_string()),
        (Some("int"), Value::String(s)) => s.parse::<u64>().map(Value::from).map_err(|e| format!("{name}: {e}"))?,
        (_, value) => value,
    })
}

/// `PT5M`, `PT1H`, `PT1H30M` in minutes (seconds are not allowed here).
pub fn minutes(iso: &str) -> Result<u32, String> {
    let rest = iso.strip_prefix("PT").ok_or(format!("duration {iso}"))?;
    let (mut total, mut digits) = (0u32, String::new());
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            'H' | 'M' => {
                let n: u32 = digits.parse().map_err(|_| format!("duration {iso}"))?;
                total += if c == 'H' { n * 60 } else { n };
                digits.clear();
            }
            _ => return Err(format!("duration {iso}")),
        }
    }
    if !digits.is_empty() {
        return Err(format!("duration {iso}"));
    }
    Ok(total)
}

fn day(name: &str) -> Result<u32, String> {
    let days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    days.iter().position(|d| *d == name).map(|i| i as u32).ok_or(format!("day {name}"))
}
