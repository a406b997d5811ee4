//! The ARM evaluator's own test (the evaluator is `agent/tests/support/arm_eval.rs`).

use super::eval::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[test]
fn the_evaluator_reads_what_the_template_writes() {
    let template = json!({"parameters": {"a": {"type": "string"}, "n": {"type": "int", "defaultValue": 3}},
                          "variables": {"v": "[format('{0}-{1}', parameters('a'), add(parameters('n'), 1))]"}});
    let given = BTreeMap::from([("a".to_string(), json!("x'y"))]);
    let scope = Scope::new(&template, "rg", &given).unwrap();
    assert_eq!(scope.variable("v").unwrap(), json!("x'y-4"));
    assert_eq!(scope.value(&json!("[concat('it''s', ' ', string(mul(2, 3)))]")).unwrap(), json!("it's 6"));
    assert_eq!(scope.value(&json!("[[literal]")).unwrap(), json!("[[literal]"));
    assert_eq!(
        scope.value(&json!("[resourceId('Microsoft.Network/loadBalancers/probes', 'lb', 'ready')]")).unwrap(),
        json!(format!(
            "/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/lb/probes/ready"
        ))
    );
    assert_eq!(scope.value(&json!("[reference(resourceId('A.B/c', 'd')).x[0].y]")).unwrap(), json!(REFERENCE));
    // What a deployment would refuse, the evaluator refuses too.
    assert!(Scope::new(&template, "rg", &BTreeMap::new()).unwrap_err().contains("required parameter a"));
    assert!(scope.value(&json!("[parameters('b')]")).is_err());
    assert!(scope.value(&json!("[variables('w')]")).is_err());
    assert!(scope.value(&json!("[nosuch(1)]")).is_err());
    assert!(scope.value(&json!("[resourceId('A.B/c/d', 'only-one')]")).is_err());
    assert!(scope.value(&json!("[format('{0}', ]")).is_err());
    // format() is .NET's: doubled braces are braces, a lone one fails the deployment.
    assert_eq!(scope.value(&json!("[format('{{x}} {0}', 1)]")).unwrap(), json!("{x} 1"));
    assert!(scope.value(&json!("[format('if a; then {0}; fi {', 1)]")).is_err());
    assert!(scope.value(&json!("[format('x } {0}', 1)]")).is_err());
    assert!(scope.value(&json!("[format('{1}', 1)]")).is_err());
    // Lengths and values out of their declared bounds are refused, defaults too.
    let bounded = json!({"parameters": {
        "id": {"type": "string", "defaultValue": "", "maxLength": 3},
        "name": {"type": "string", "defaultValue": "ab", "minLength": 2},
        "n": {"type": "int", "defaultValue": 5, "minValue": 1, "maxValue": 9}}});
    let with = |name: &str, value: Value| Scope::new(&bounded, "rg", &BTreeMap::from([(name.to_string(), value)]));
    assert!(with("id", json!("abc")).is_ok() && with("n", json!(9)).is_ok() && with("name", json!("ab")).is_ok());
    assert!(with("id", json!("abcd")).unwrap_err().contains("id = \"abcd\" breaks its maxLength 3"));
    assert!(with("name", json!("a")).unwrap_err().contains("minLength 2"));
    assert!(with("n", json!(10)).unwrap_err().contains("maxValue 9"));
    assert!(with("n", json!(0)).unwrap_err().contains("minValue 1"));
}
