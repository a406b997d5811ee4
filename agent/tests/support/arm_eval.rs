//! A small evaluator of ARM template expressions, enough to read the shipped
//! template the way Resource Manager would for one set of parameters: the
//! functions the template uses, parameters with their defaults (a required
//! one missing is an error, as in a deployment), variables, and every
//! `resourceId`/`extensionResourceId` it computes, so the tests can check
//! that each names a resource the template declares.
//!
//! Deliberately strict: an unknown function, parameter or variable is an
//! error, and `if` evaluates both branches (ARM evaluates only the one it
//! takes) so a broken branch cannot hide.
//!
//! Test support, not part of the agent: the template's unit tests
//! (`agent/src/azure/template_tests.rs`) and the simulated day
//! (`agent/examples/pool_day/template.rs`) both include this one file, so the
//! template is read the same way by both.

use base64::Engine as _;
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// What `reference()` gives: any member or index of it is itself.
pub const REFERENCE: &str = "<reference>";
pub const SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000001";

#[derive(Debug, Clone)]
enum Expr {
    Str(String),
    Int(i64),
    Call(String, Vec<Expr>),
    Member(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip(&mut self) {
        while self.text.get(self.at).is_some_and(|c| c.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip();
        if self.text.get(self.at) == Some(&c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        self.skip();
        let mut expr = match self.text.get(self.at) {
            Some(b'\'') => {
                self.at += 1;
                let mut out = Vec::new();
                loop {
                    match self.text.get(self.at) {
                        None => return Err("unterminated string".into()),
                        Some(b'\'') if self.text.get(self.at + 1) == Some(&b'\'') => {
                            out.push(b'\'');
                            self.at += 2;
                        }
                        Some(b'\'') => {
                            self.at += 1;
                            break;
                        }
                        Some(&c) => {
                            out.push(c);
                            self.at += 1;
                        }
                    }
                }
                Expr::Str(String::from_utf8(out).map_err(|e| e.to_string())?)
            }
            Some(c) if c.is_ascii_digit() || *c == b'-' => {
                let start = self.at;
                self.at += 1;
                while self.text.get(self.at).is_some_and(|c| c.is_ascii_digit()) {
                    self.at += 1;
                }
                let digits = std::str::from_utf8(&self.text[start..self.at]).map_err(|e| e.to_string())?;
                Expr::Int(digits.parse().map_err(|e| format!("{digits}: {e}"))?)
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let name = self.ident();
                if !self.eat(b'(') {
                    return Err(format!("{name} is not called"));
                }
                let mut args = Vec::new();
                if !self.eat(b')') {
                    loop {
                        args.push(self.expr()?);
                        if self.eat(b')') {
                            break;
                        }
                        if !self.eat(b',') {
                            return Err(format!("expected , or ) in the arguments of {name}"));
                        }
                    }
                }
                Expr::Call(name, args)
            }
            other => return Err(format!("unexpected {:?} at {}", other.map(|c| *c as char), self.at)),
        };
        loop {
            if self.eat(b'.') {
                self.skip();
                expr = Expr::Member(Box::new(expr), self.ident());
            } else if self.eat(b'[') {
                let index = self.expr()?;
                if !self.eat(b']') {
                    return Err("expected ]".into());
                }
                expr = Expr::Index(Box::new(expr), Box::new(index));
            } else {
                return Ok(expr);
            }
        }
    }

    fn ident(&mut self) -> String {
        let start = self.at;
        while self.text.get(self.at).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_') {
            self.at += 1;
        }
        String::from_utf8_lossy(&self.text[start..self.at]).into_owned()
    }
}

fn parse(text: &str) -> Result<Expr, String> {
    let mut parser = Parser { text: text.as_bytes(), at: 0 };
    let expr = parser.expr()?;
    parser.skip();
    if parser.at != text.len() {
        return Err(format!("trailing text at {} in {text}", parser.at));
    }
    Ok(expr)
}

/// One template (or a nested template with inner scope) with its parameters.
#[derive(Debug)]
pub struct Scope<'a> {
    template: &'a Value,
    resource_group: String,
    params: BTreeMap<String, Value>,
    /// Every id `resourceId`/`extensionResourceId` computed.
    pub ids: RefCell<Vec<String>>,
}

impl<'a> Scope<'a> {
    /// Parameters as a deployment takes them: given values, else defaults
    /// (evaluated), else an error naming the missing one.
    pub fn new(template: &'a Value, resource_group: &str, given: &BTreeMap<String, Value>) -> Result<Self, String> {
        let mut scope =
            Scope { template, resource_group: resource_group.into(), params: BTreeMap::new(), ids: RefCell::default() };
        for name in given.keys() {
            if template["parameters"].get(name).is_none() {
                return Err(format!("{name} is not a parameter of the template"));
            }
        }
        let declared = template["parameters"].as_object().ok_or("no parameters")?;
        for (name, spec) in declared {
            let value = match (given.get(name), spec.get("defaultValue")) {
                (Some(value), _) => value.clone(),
                (None, Some(default)) => scope.value(default)?,
                (None, None) => return Err(format!("required parameter {name} has no value")),
            };
            if let Some(allowed) = spec.get("allowedValues").and_then(Value::as_array) {
                if !allowed.contains(&value) {
                    return Err(format!("{name} = {value} is not among {allowed:?}"));
                }
            }
            check_bounds(name, spec, &value)?;
            scope.params.insert(name.clone(), value);
        }
        Ok(scope)
    }

    /// A JSON value with every expression in it (keys too) evaluated.
    pub fn value(&self, value: &Value) -> Result<Value, String> {
        Ok(match value {
            Value::String(text) => self.string(text)?,
            Value::Array(items) => Value::Array(items.iter().map(|v| self.value(v)).collect::<Result<_, _>>()?),
            Value::Object(map) => {
                let mut out = Map::new();
                for (key, item) in map {
                    let key = match self.string(key)? {
                        Value::String(key) => key,
                        other => other.to_string(),
                    };
                    out.insert(key, self.value(item)?);
                }
                Value::Object(out)
            }
            other => other.clone(),
        })
    }

    fn string(&self, text: &str) -> Result<Value, String> {
        match text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            Some(inner) if !inner.starts_with('[') => {
                let expr = parse(inner).map_err(|e| format!("{text}: {e}"))?;
                self.eval(&expr).map_err(|e| format!("{text}: {e}"))
            }
            _ => Ok(Value::String(text.to_string())),
        }
    }

    pub fn variable(&self, name: &str) -> Result<Value, String> {
        let raw = self.template["variables"].get(name).ok_or_else(|| format!("no variable {name}"))?;
        self.value(raw)
    }

    fn rg_id(&self) -> String {
        format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/{}", self.resource_group)
    }

    fn eval(&self, expr: &Expr) -> Result<Value, String> {
        match expr {
            Expr::Str(s) => Ok(json!(s)),
            Expr::Int(i) => Ok(json!(i)),
            Expr::Member(base, name) => match self.eval(base)? {
                Value::String(s) if s == REFERENCE => Ok(json!(REFERENCE)),
                Value::Object(map) => map.get(name).cloned().ok_or_else(|| format!("no member {name}")),
                other => Err(format!("member {name} of {other}")),
            },
            Expr::Index(base, index) => match (self.eval(base)?, self.eval(index)?) {
                (Value::String(s), _) if s == REFERENCE => Ok(json!(REFERENCE)),
                (Value::Array(items), Value::Number(n)) => n
                    .as_u64()
                    .and_then(|i| items.get(i as usize).cloned())
                    .ok_or_else(|| format!("index {n} out of range")),
                (base, index) => Err(format!("index {index} of {base}")),
            },
            Expr::Call(name, args) => self.call(name, args),
        }
    }

    fn call(&self, name: &str, args: &[Expr]) -> Result<Value, String> {
        let values = || args.iter().map(|a| self.eval(a)).collect::<Result<Vec<_>, _>>();
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let int = |v: &Value| v.as_i64().ok_or_else(|| format!("{name}: {v} is not an integer"));
        let ints = || values()?.iter().map(int).collect::<Result<Vec<_>, _>>();
        let truthy = |v: &Value| v.as_bool().ok_or_else(|| format!("{name}: {v} is not a bool"));
        Ok(match name {
            "parameters" => {
                let key = text(&self.eval(&args[0])?);
                self.params.get(&key).cloned().ok_or_else(|| format!("no parameter {key}"))?
            }
            "variables" => self.variable(&text(&self.eval(&args[0])?))?,
            "resourceGroup" => json!({"id": self.rg_id(), "name": self.resource_group, "location": "westeurope"}),
            "subscription" => json!({"id": format!("/subscriptions/{SUBSCRIPTION}"), "subscriptionId": SUBSCRIPTION,
                                     "tenantId": "00000000-0000-0000-0000-00000000000t"}),
            "environment" => json!({"name": "AzureCloud",
                                    "suffixes": {"keyvaultDns": ".vault.azure.net", "storage": "core.windows.net"}}),
            "reference" => {
                values()?;
                json!(REFERENCE)
            }
            "format" => {
                let values = values()?;
                json!(dotnet_format(&text(&values[0]), &values[1..].iter().map(text).collect::<Vec<_>>())?)
            }
            "concat" => {
                let values = values()?;
                if values.iter().all(Value::is_array) {
                    Value::Array(values.iter().flat_map(|v| v.as_array().cloned().unwrap_or_default()).collect())
                } else {
                    json!(values.iter().map(text).collect::<String>())
                }
            }
            "join" => {
                let values = values()?;
                let items = values[0].as_array().ok_or("join of a non-array")?;
                json!(items.iter().map(text).collect::<Vec<_>>().join(&text(&values[1])))
            }
            "string" => json!(text(&values()?[0])),
            "base64" => json!(base64::engine::general_purpose::STANDARD.encode(text(&values()?[0]))),
            "guid" => json!(format!("{:016x}-guid", fnv(&values()?.iter().map(text).collect::<Vec<_>>().join(",")))),
            "uniqueString" => json!(format!("u{:x}", fnv(&values()?.iter().map(text).collect::<Vec<_>>().join(",")))),
            "createArray" => Value::Array(values()?),
            "utcNow" => json!("20261203T120000Z"),
            "empty" => json!(match &values()?[0] {
                Value::String(s) => s.is_empty(),
                Value::Array(a) => a.is_empty(),
                Value::Object(o) => o.is_empty(),
                Value::Null => true,
                _ => false,
            }),
            "equals" => {
                let values = values()?;
                json!(values[0] == values[1])
            }
            "not" => json!(!truthy(&values()?[0])?),
            "and" => json!(values()?.iter().map(truthy).collect::<Result<Vec<_>, _>>()?.iter().all(|b| *b)),
            "or" => json!(values()?.iter().map(truthy).collect::<Result<Vec<_>, _>>()?.iter().any(|b| *b)),
            "if" => {
                let values = values()?;
                if truthy(&values[0])? {
                    values[1].clone()
                } else {
                    values[2].clone()
                }
            }
            "add" => json!(ints()?.iter().sum::<i64>()),
            "sub" => {
                let n = ints()?;
                json!(n[0] - n[1])
            }
            "mul" => json!(ints()?.iter().product::<i64>()),
            "div" => {
                let n = ints()?;
                json!(n[0].checked_div(n[1]).ok_or("division by zero")?)
            }
            "min" => json!(ints()?.into_iter().min()),
            "max" => json!(ints()?.into_iter().max()),
            "int" => json!(text(&values()?[0]).parse::<i64>().map_err(|e| e.to_string())?),
            "resourceId" => {
                let id = provider_id(&self.rg_id(), &values()?.iter().map(text).collect::<Vec<_>>())?;
                self.ids.borrow_mut().push(id.clone());
                json!(id)
            }
            "extensionResourceId" => {
                let values = values()?.iter().map(text).collect::<Vec<_>>();
                let id = provider_id(&values[0], &values[1..])?;
                self.ids.borrow_mut().push(id.clone());
                json!(id)
            }
            "subscriptionResourceId" => {
                json!(provider_id(
                    &format!("/subscriptions/{SUBSCRIPTION}"),
                    &values()?.iter().map(text).collect::<Vec<_>>()
                )?)
            }
            other => return Err(format!("the test's evaluator does not know {other}()")),
        })
    }
}

/// The other checks ARM makes of a parameter's value before deploying
/// (https://learn.microsoft.com/azure/azure-resource-manager/templates/parameters):
/// `minLength`/`maxLength` of a string (characters) or an array (items),
/// `minValue`/`maxValue` of an int. ARM has no pattern check for strings.
fn check_bounds(name: &str, spec: &Value, value: &Value) -> Result<(), String> {
    let length = match value {
        Value::String(s) => Some(s.chars().count() as i64),
        Value::Array(items) => Some(items.len() as i64),
        _ => None,
    };
    let bound = |key: &str| spec.get(key).and_then(Value::as_i64);
    let checks = [("minLength", length, true), ("maxLength", length, false)]
        .into_iter()
        .chain([("minValue", value.as_i64(), true), ("maxValue", value.as_i64(), false)]);
    for (key, actual, is_min) in checks {
        if let (Some(limit), Some(actual)) = (bound(key), actual) {
            if (is_min && actual < limit) || (!is_min && actual > limit) {
                return Err(format!("{name} = {value} breaks its {key} {limit}"));
            }
        }
    }
    Ok(())
}

/// `<scope>/providers/<namespace>/<type>/<name>[/<child type>/<child name>...]`.
pub fn provider_id(scope: &str, args: &[String]) -> Result<String, String> {
    let (kind, names) = args.split_first().ok_or("resourceId without a type")?;
    let mut parts = kind.split('/');
    let namespace = parts.next().ok_or("empty type")?;
    let types: Vec<&str> = parts.collect();
    if types.len() != names.len() {
        return Err(format!("{kind} takes {} names, got {names:?}", types.len()));
    }
    let mut id = format!("{scope}/providers/{namespace}");
    for (kind, name) in types.iter().zip(names) {
        id.push_str(&format!("/{kind}/{name}"));
    }
    Ok(id)
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// ARM's `format()` is .NET's String.Format: `{n}` is an argument, `{{` and
/// `}}` are braces, and any other brace fails the deployment
/// (https://learn.microsoft.com/azure/azure-resource-manager/templates/template-functions-string#format).
fn dotnet_format(template: &str, args: &[String]) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let index: String = chars.by_ref().take_while(|c| *c != '}').collect();
                let arg = index.parse::<usize>().ok().and_then(|i| args.get(i));
                out.push_str(arg.ok_or_else(|| format!("format: {{{index}}} is not an argument: {template}"))?);
            }
            '}' => return Err(format!("format: a lone }} in {template}")),
            c => out.push(c),
        }
    }
    Ok(out)
}
