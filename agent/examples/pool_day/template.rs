//! The autoscale setting as the template ships it: the
//! `Microsoft.Insights/autoscalesettings` resource of `pool.json`, its
//! profiles and rules evaluated as Resource Manager would for one set of
//! parameters (defaults, overridden like a parameters file would), by the
//! same evaluator the template's unit tests use. An expression it does not
//! know is an error, never a guess.

#[path = "../../tests/support/arm_eval.rs"]
#[allow(dead_code)]
mod arm_eval;

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

/// The autoscale resource's profiles, evaluated with the template's
/// defaults and `overrides`; parameters with no default (the share, the
/// image: nothing autoscale reads) get placeholders of their type.
pub fn profiles(template: &str, overrides: &BTreeMap<String, Value>) -> Result<Vec<Profile>, String> {
    let doc: Value = serde_json::from_str(template).map_err(|e| format!("pool.json: {e}"))?;
    let declared = doc["parameters"].as_object().ok_or("pool.json: no parameters")?;
    let mut params = overrides.clone();
    for (name, spec) in declared {
        if params.contains_key(name) || spec.get("defaultValue").is_some() {
            continue;
        }
        let placeholder = match spec["allowedValues"].get(0) {
            Some(first) => first.clone(),
            None => match spec["type"].as_str().unwrap_or("string").to_ascii_lowercase().as_str() {
                "int" => Value::from(1),
                "bool" => Value::from(false),
                "array" => Value::Array(vec![]),
                "object" | "secureobject" => Value::Object(Default::default()),
                _ => Value::from(format!("sim-{name}")),
            },
        };
        params.insert(name.clone(), placeholder);
    }
    let scope = arm_eval::Scope::new(&doc, "sim-rg", &params)?;
    let resources = doc["resources"].as_array().ok_or("pool.json: no resources")?;
    let autoscale = resources
        .iter()
        .find(|r| r["type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case("Microsoft.Insights/autoscalesettings")))
        .ok_or("pool.json: no Microsoft.Insights/autoscalesettings resource")?;
    let list = scope.value(&autoscale["properties"]["profiles"])?;
    list.as_array().ok_or("autoscale: no profiles")?.iter().map(profile).collect()
}

fn profile(p: &Value) -> Result<Profile, String> {
    let name = p["name"].as_str().ok_or("a profile without a name")?.to_string();
    let number = |v: &Value| -> Result<u32, String> {
        match v {
            Value::Number(n) => n.as_u64().map(|n| n as u32),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .ok_or(format!("profile {name}: not a count: {v}"))
    };
    let cap = &p["capacity"];
    let rules = p["rules"].as_array().map(|r| r.iter().map(rule).collect()).unwrap_or(Ok(vec![]))?;
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

fn rule(r: &Value) -> Result<Rule, String> {
    let t = &r["metricTrigger"];
    let a = &r["scaleAction"];
    let text = |v: &Value| -> Result<String, String> {
        match v {
            Value::String(s) => Ok(s.clone()),
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
