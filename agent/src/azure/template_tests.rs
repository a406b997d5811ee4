//! The ARM template shipped for the pool (`packaging/azure/pool.json`), read
//! as an admin deploys it: with the parameters README's command passes,
//! evaluated as Resource Manager would (`agent/tests/support/arm_eval.rs`).

use super::*;
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

#[path = "template_entra_tests.rs"]
mod entra;
#[path = "../../tests/support/arm_eval.rs"]
mod eval;
#[path = "template_eval_tests.rs"]
mod eval_tests;
#[path = "template_lb_tests.rs"]
mod lb;
use eval::{provider_id, Scope, SUBSCRIPTION};

/// The agent's readiness listener: the load balancer's probe must ask it.
const READINESS_LISTEN: &str = crate::config::settings::DEFAULT_READINESS_LISTEN;
const READINESS_PATH: &str = crate::config::settings::READINESS_PATH;
const RG: &str = "pool-rg";

fn file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn template() -> Value {
    serde_json::from_str(&file("packaging/azure/pool.json")).unwrap()
}

/// The parameters README's `az deployment group create` passes: the
/// parameters file it names, then its `name=value` pairs, typed as the CLI
/// types them (by the template's declaration).
fn readme_parameters(template: &Value) -> BTreeMap<String, Value> {
    let readme = file("README.md");
    // The command block's line, not a mention of the command in a paragraph.
    let start = readme.find("\naz deployment group create").expect("README gives the deploy command");
    let mut command = String::new();
    for line in readme[start + 1..].lines() {
        command.push_str(line.trim_end().trim_end_matches('\\'));
        command.push(' ');
        if !line.trim_end().ends_with('\\') {
            break;
        }
    }
    let mut given = BTreeMap::new();
    let mut in_parameters = false;
    for token in command.split_whitespace() {
        if token.starts_with("--") {
            in_parameters = token == "--parameters";
        } else if let Some(path) = token.strip_prefix('@').filter(|_| in_parameters) {
            let text = file(&format!("packaging/azure/{path}"));
            let values: Value = serde_json::from_str(&text).unwrap();
            for (name, value) in values["parameters"].as_object().unwrap() {
                given.insert(name.clone(), value["value"].clone());
            }
        } else if let Some((name, value)) = token.split_once('=').filter(|_| in_parameters) {
            let value = match (template["parameters"][name]["type"].as_str(), value.strip_prefix('@')) {
                (_, Some(_)) => json!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKey admin@example"),
                (Some("int"), None) => json!(value.parse::<i64>().unwrap()),
                (Some("bool"), None) => json!(value == "true"),
                _ => json!(value),
            };
            given.insert(name.to_string(), value);
        }
    }
    given
}

fn deploy<'a>(template: &'a Value, overrides: &[(&str, Value)]) -> (Scope<'a>, Value) {
    let mut given = readme_parameters(template);
    given.extend(overrides.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let scope = Scope::new(template, RG, &given).unwrap();
    let evaluated = evaluate(&scope, template);
    (scope, evaluated)
}

/// Resources and outputs evaluated; a nested template with inner scope is
/// left as written (its expressions are its own, see the dependsOn test).
fn evaluate(scope: &Scope, template: &Value) -> Value {
    let mut outer = json!({"resources": template["resources"], "outputs": template["outputs"]});
    let mut inner = Vec::new();
    for r in outer["resources"].as_array_mut().unwrap() {
        if r["properties"]["expressionEvaluationOptions"]["scope"] == "inner" {
            inner.push(r["properties"]["template"].take());
        }
    }
    let mut evaluated = scope.value(&outer).unwrap();
    let mut inner = inner.into_iter();
    for r in evaluated["resources"].as_array_mut().unwrap() {
        if r["properties"]["expressionEvaluationOptions"]["scope"] == "inner" {
            r["properties"]["template"] = inner.next().unwrap();
        }
    }
    evaluated
}

fn resource<'a>(evaluated: &'a Value, kind: &str) -> Vec<&'a Value> {
    evaluated["resources"].as_array().unwrap().iter().filter(|r| r["type"] == kind).collect()
}

fn rg_id() -> String {
    format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/{RG}")
}

/// The id of every resource an evaluated template declares, its load
/// balancer's parts and its extension resources (by their scope) included.
fn declared_ids(evaluated: &Value, rg: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for r in evaluated["resources"].as_array().unwrap() {
        let kind = r["type"].as_str().unwrap();
        let mut args = vec![kind.to_string()];
        args.extend(r["name"].as_str().unwrap().split('/').map(String::from));
        let scope = match r["scope"].as_str() {
            Some(scope) => format!("{rg}/providers/{scope}"),
            None => rg.to_string(),
        };
        let id = provider_id(&scope, &args).unwrap();
        for (part, items) in r["properties"].as_object().into_iter().flatten() {
            for item in items.as_array().into_iter().flatten().filter_map(|i| i["name"].as_str()) {
                ids.insert(format!("{id}/{part}/{item}"));
            }
        }
        ids.insert(id);
    }
    ids
}

#[test]
fn every_depends_on_resource_id_and_reference_names_a_resource_of_the_template() {
    let template = template();
    for frontend in ["public", "internal"] {
        let (scope, evaluated) = deploy(&template, &[("frontend", json!(frontend)), ("wakeGroupObjectId", json!("g"))]);
        let declared = declared_ids(&evaluated, &rg_id());
        let computed = scope.ids.borrow().clone();
        assert!(computed.len() > 20, "{computed:?}");
        for id in &computed {
            assert!(declared.contains(id), "{id} names nothing the template declares; it declares {declared:#?}");
        }
        for r in evaluated["resources"].as_array().unwrap() {
            for dep in r["dependsOn"].as_array().into_iter().flatten() {
                assert!(declared.contains(dep.as_str().unwrap()), "{} depends on unknown {dep}", r["name"]);
            }
        }
        // The Key Vault access runs in the vault's resource group, with its own parameters.
        let nested = resource(&evaluated, "Microsoft.Resources/deployments")[0];
        let inner = &template["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == "Microsoft.Resources/deployments")
            .unwrap()["properties"]["template"];
        let given = nested["properties"]["parameters"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v["value"].clone()))
            .collect();
        let inner_scope = Scope::new(inner, nested["resourceGroup"].as_str().unwrap(), &given).unwrap();
        let inner_evaluated = inner_scope.value(&json!({"resources": inner["resources"]})).unwrap();
        assert_eq!(inner_evaluated["resources"].as_array().unwrap().len(), 2);
    }
    // The parameters file names only parameters the template declares.
    let file_params: Value = serde_json::from_str(&file("packaging/azure/pool.parameters.json")).unwrap();
    for name in file_params["parameters"].as_object().unwrap().keys() {
        assert!(template["parameters"].get(name).is_some(), "pool.parameters.json sets unknown {name}");
    }
}

#[test]
fn deploying_with_readme_s_command_gives_a_config_naming_the_share_and_secret_it_passes() {
    let template = template();
    let given = readme_parameters(&template);
    // Nothing the share needs has a default to fall back on.
    for name in ["storageAccountName", "shareName", "keyVaultName", "keyVaultSecretName"] {
        assert!(template["parameters"][name].get("defaultValue").is_none(), "{name} must be required");
        let mut without = given.clone();
        without.remove(name);
        let refused = Scope::new(&template, RG, &without).err().unwrap_or_default();
        assert!(refused.contains(name), "a deploy without {name} must be refused: {refused}");
    }
    let scope = Scope::new(&template, RG, &given).unwrap();
    let fragment = scope.variable("configFragment").unwrap().as_str().unwrap().to_string();
    let account = given["storageAccountName"].as_str().unwrap();
    let share = given["shareName"].as_str().unwrap();
    let secret = format!(
        "https://{}.vault.azure.net/secrets/{}",
        given["keyVaultName"].as_str().unwrap(),
        given["keyVaultSecretName"].as_str().unwrap()
    );
    assert!(fragment.contains(&format!("account = \"{account}\"")), "{fragment}");
    assert!(!fragment.contains("mystorage") && !fragment.contains("team-kv"), "a placeholder slipped in: {fragment}");
    // It loads as the agent loads it, and the agent fetches that secret for that share.
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    std::fs::write(&main, "").unwrap();
    std::fs::create_dir(dir.path().join("config.d")).unwrap();
    std::fs::write(dir.path().join("config.d/50-pool.toml"), &fragment).unwrap();
    let settings = crate::config::load(&main).unwrap();
    let key = key::spec(&settings).expect("the key comes from Key Vault");
    assert_eq!(key.secret_url.as_deref(), Some(secret.as_str()));
    assert_eq!(key.account, account);
    let source = format!("{:?}", settings.share.as_ref().unwrap().source);
    assert!(source.contains(&format!("share: Some({share:?})")), "{source}");
    // cloud-init writes exactly that fragment, root-owned, from customData (never userData).
    let (_, evaluated) = deploy(&template, &[]);
    let set = resource(&evaluated, "Microsoft.Compute/virtualMachineScaleSets")[0];
    let profile = &set["properties"]["virtualMachineProfile"];
    assert!(profile.get("userData").is_none(), "the pool's config must not come from userData");
    let b64 = base64::engine::general_purpose::STANDARD;
    let cloud_config =
        String::from_utf8(b64.decode(profile["osProfile"]["customData"].as_str().unwrap()).unwrap()).unwrap();
    assert!(cloud_config.contains("path: /etc/pool-agent/config.d/50-pool.toml\n  owner: root:root"), "{cloud_config}");
    assert!(cloud_config.contains(&format!("content: {}\n", b64.encode(&fragment))), "{cloud_config}");
    // The login note gives the way back from zero: README's command, with this pool's names.
    let motd = b64.encode(scope.variable("motd").unwrap().as_str().unwrap());
    assert!(cloud_config.contains(&format!(
        "path: /etc/motd.d/pool-agent\n  owner: root:root\n  permissions: '0644'\n  encoding: b64\n  content: {motd}\n"
    )));
    let motd = String::from_utf8(b64.decode(motd).unwrap()).unwrap();
    // The login note's command is README's, line for line, with this pool's names
    // (agent/tests/wake_command.rs runs both).
    let readme = file("README.md");
    let section = readme.split("**The way back from zero.**").nth(1).unwrap();
    let block = section.split("```bash\n").nth(1).and_then(|b| b.split("```").next()).unwrap();
    let readme_command = block.replace(" -g RG ", &format!(" -g {RG} "));
    let start = motd.find("\n  ").unwrap() + 1;
    let motd_command: String =
        motd[start..].lines().take_while(|l| l.starts_with("  ")).map(|l| format!("{}\n", &l[2..])).collect();
    assert_eq!(motd_command, readme_command);
    assert!(
        motd_command.contains("me=\"wake-$now-$RANDOM$RANDOM\"") && motd_command.contains("profile delete"),
        "{motd_command}"
    );
}
/// What is wrong with a template's autoscale rules, read with distinct headrooms.
fn autoscale_problems(template: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let (_, evaluated) = deploy(template, &[("headroomWorkingHours", json!(2)), ("headroomOffHours", json!(1))]);
    let setting = resource(&evaluated, "Microsoft.Insights/autoscalesettings")[0];
    let set_id = format!("{}/providers/Microsoft.Compute/virtualMachineScaleSets/pool", rg_id());
    let mut named = BTreeSet::new();
    for profile in setting["properties"]["profiles"].as_array().unwrap() {
        let name = profile["name"].as_str().unwrap();
        let headroom = if name == "working-hours" { 2 } else { 1 };
        if profile["capacity"]["minimum"] != "0"
            || profile["capacity"]["default"].as_str().and_then(|d| d.parse().ok()) != Some(headroom)
        {
            problems.push(format!("{name}: capacity {} (minimum 0, default = headroom)", profile["capacity"]));
        }
        for rule in profile["rules"].as_array().unwrap() {
            let (t, action) = (&rule["metricTrigger"], &rule["scaleAction"]);
            let metric = t["metricName"].as_str().unwrap();
            named.insert(metric.to_string());
            if !monitor::METRIC_NAMES.contains(&metric) {
                problems.push(format!("{name}: {metric} is not a metric the agent posts"));
            }
            let wanted = match action["direction"].as_str() {
                Some("Increase") => ("Spare", "LessThan"),
                _ => ("Removable", "GreaterThan"),
            };
            if (metric, t["operator"].as_str().unwrap()) != wanted {
                problems
                    .push(format!("{name}: {} on {metric} {}; want {wanted:?}", action["direction"], t["operator"]));
            }
            // One more VM below the headroom, one fewer above it; in working
            // hours also steps that add what is missing: below T add V, with
            // T - 1 + V never past the headroom (T = 0 never fires); a
            // scale-in step never takes the removable VMs below the headroom.
            let (threshold, value) = (t["threshold"].as_i64(), action["value"].as_str().and_then(|v| v.parse().ok()));
            let step = match (threshold, value) {
                (Some(t), Some(v)) if metric == "Spare" && name == "working-hours" => {
                    v >= 1 && (t == 0 || t - 1 + v <= headroom)
                }
                (Some(t), Some(v)) if metric == "Removable" => v >= 1 && t + 1 - v >= headroom && t <= headroom + 1,
                _ => false,
            };
            if (threshold, value) != (Some(headroom), Some(1)) && !step {
                problems.push(format!(
                    "{name}: {metric} threshold {threshold:?} changes by {value:?}; headroom is {headroom}"
                ));
            }
            if t["statistic"] != "Sum" || t["metricResourceUri"] != set_id.as_str() {
                problems.push(format!("{name}: {metric} must be the Sum over the scale set: {t}"));
            }
            if t["metricNamespace"] != crate::config::settings::DEFAULT_METRICS_NAMESPACE {
                problems.push(format!("{name}: namespace {}", t["metricNamespace"]));
            }
            if t["timeGrain"] != "PT1M" || t["timeWindow"] != "PT5M" || action["type"] != "ChangeCount" {
                problems.push(format!("{name}: {metric} grain/window/change {t} {action}"));
            }
        }
        let directions: BTreeSet<&str> = profile["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["scaleAction"]["direction"].as_str())
            .collect();
        if directions != BTreeSet::from(["Decrease", "Increase"]) {
            problems.push(format!("{name}: rules scale only {directions:?}"));
        }
    }
    // The definitions posted before the setting exists are those the rules name.
    let seeded =
        setting["dependsOn"].as_array().unwrap().iter().any(|d| d.as_str().unwrap().contains("deploymentScripts"));
    let script = resource(&evaluated, "Microsoft.Resources/deploymentScripts")[0];
    let env: BTreeMap<&str, &str> = script["properties"]["environmentVariables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    let posted: BTreeSet<String> = env["METRICS"].split(' ').map(String::from).collect();
    if !seeded
        || posted != named
        || env["RESOURCE_ID"] != set_id
        || env["NAMESPACE"] != crate::config::settings::DEFAULT_METRICS_NAMESPACE
    {
        problems.push(format!(
            "the seed posts {posted:?} ({env:?}) before the setting: {seeded}; the rules name {named:?}"
        ));
    }
    problems
}

/// Off hours with no headroom every removable VM may go in one scale-in (only
/// released VMs can: protection is the guard). With a headroom of 3 or more,
/// two at a time once more than headroom + 1 are removable, so the headroom
/// stays and at most one VM more stands free; smaller, one at a time.
#[test]
fn scale_in_removes_a_step_only_where_the_headroom_stays() {
    let template = template();
    // Per profile: (threshold on Sum(Removable), VMs removed).
    let steps = |working: i64, off: i64| {
        let given = [("headroomWorkingHours", json!(working)), ("headroomOffHours", json!(off))];
        let (_, evaluated) = deploy(&template, &given);
        let setting = resource(&evaluated, "Microsoft.Insights/autoscalesettings")[0];
        let mut steps = BTreeMap::new();
        for profile in setting["properties"]["profiles"].as_array().unwrap() {
            for rule in profile["rules"].as_array().unwrap() {
                if rule["scaleAction"]["direction"] == "Decrease" {
                    let threshold = rule["metricTrigger"]["threshold"].as_i64().unwrap();
                    let value: i64 = rule["scaleAction"]["value"].as_str().unwrap().parse().unwrap();
                    steps.insert(profile["name"].as_str().unwrap().to_string(), (threshold, value));
                }
            }
        }
        steps
    };
    let small = steps(1, 0);
    assert_eq!((small["working-hours"], small["off-hours"], small["default"]), ((1, 1), (0, 10), (0, 10)));
    let five = steps(2, 2);
    assert_eq!((five["working-hours"], five["off-hours"], five["default"]), ((2, 1), (2, 1), (2, 1)));
    let fifty = steps(10, 3);
    assert_eq!((fifty["working-hours"], fifty["off-hours"], fifty["default"]), ((11, 2), (4, 2), (4, 2)));
    // Whatever the headroom: a scale-in leaves at least the headroom removable
    // (threshold + 1 - step), and stops with at most headroom + 1 standing.
    for headroom in 1..=20 {
        for (name, (threshold, step)) in steps(headroom, headroom) {
            assert!(
                threshold + 1 - step >= headroom && threshold <= headroom + 1,
                "{name} at {headroom}: {threshold} {step}"
            );
        }
    }
}

#[test]
fn autoscale_adds_vms_on_spare_removes_them_on_removable_and_never_reads_busy() {
    let template = template();
    assert_eq!(autoscale_problems(&template), Vec::<String>::new());
    // The check is not blind: a rule back on Busy, a misspelt metric, a rule
    // the seed script does not post.
    // One rule of the template changed: (profile, rule, JSON pointer in the rule, value).
    let changed = |profile: usize, rule: usize, pointer: &str, value: Value| {
        let mut doc = template.clone();
        let autoscale = doc["resources"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|r| r["type"] == "Microsoft.Insights/autoscalesettings")
            .unwrap();
        *autoscale["properties"]["profiles"][profile]["rules"][rule].pointer_mut(pointer).unwrap() = value;
        autoscale_problems(&doc)
    };
    let problems = changed(0, 0, "/metricTrigger/metricName", json!("Busy"));
    assert!(problems.iter().any(|p| p.contains("Increase") && p.contains("Busy")), "{problems:?}");
    let problems = changed(1, 1, "/metricTrigger/metricName", json!("Removeable"));
    assert!(problems.iter().any(|p| p.contains("Removeable is not a metric")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("the seed posts")), "{problems:?}");
    // A step that would leave more than the headroom spare (below h - 1, add 5).
    let problems = changed(0, 1, "/scaleAction/value", json!("5"));
    assert!(problems.iter().any(|p| p.contains("changes by Some(5)")), "{problems:?}");
    // Profiles: working hours Monday to Friday from workingHoursStart, off hours from workingHoursEnd.
    let (_, evaluated) = deploy(&template, &[("workingHoursStart", json!(7)), ("workingHoursEnd", json!(19))]);
    let profiles = &resource(&evaluated, "Microsoft.Insights/autoscalesettings")[0]["properties"]["profiles"];
    for (i, hour) in [(0, 7), (1, 19)] {
        let schedule = &profiles[i]["recurrence"]["schedule"];
        assert_eq!((schedule["hours"].clone(), schedule["days"].as_array().unwrap().len()), (json!([hour]), 5));
        assert_eq!(schedule["timeZone"], "W. Europe Standard Time");
    }
    // The seed script in the template is the one kept in the repository.
    let raw = template["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Microsoft.Resources/deploymentScripts")
        .unwrap();
    assert_eq!(raw["properties"]["scriptContent"].as_str().unwrap(), file("packaging/azure/seed-metrics.sh"));
}

#[test]
fn the_shipped_template_s_roles_cover_what_the_agent_calls_and_are_unique_per_pool() {
    let template = template();
    let (_, evaluated) = deploy(&template, &[("wakeGroupObjectId", json!("group-1"))]);
    let roles = resource(&evaluated, "Microsoft.Authorization/roleDefinitions");
    let actions = |r: &Value| r["properties"]["permissions"][0]["actions"].clone();
    assert_eq!(
        actions(roles[0]),
        json!([
            "Microsoft.Compute/virtualMachineScaleSets/read",
            "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
            "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/write"
        ])
    );
    let (_, deleting) = deploy(&template, &[("selfDelete", json!(true))]);
    let deleting = actions(resource(&deleting, "Microsoft.Authorization/roleDefinitions")[0]);
    assert!(deleting.as_array().unwrap().contains(&json!("Microsoft.Compute/virtualMachineScaleSets/delete/action")));
    // The way back from zero: autoscale setting read and write, on that setting alone, for the group.
    assert_eq!(
        actions(roles[1]),
        json!([
            "Microsoft.Insights/autoscalesettings/read",
            "Microsoft.Insights/autoscalesettings/write",
            "Microsoft.Compute/virtualMachineScaleSets/read"
        ])
    );
    let assignments = resource(&evaluated, "Microsoft.Authorization/roleAssignments");
    // On the autoscale setting (to add the profile) and the scale set (to read its capacity), nothing wider.
    let wake: BTreeSet<(&str, &str)> = assignments
        .iter()
        .filter(|a| a["properties"]["principalId"] == "group-1")
        .map(|a| (a["scope"].as_str().unwrap(), a["properties"]["principalType"].as_str().unwrap()))
        .collect();
    assert_eq!(
        wake,
        BTreeSet::from([
            ("Microsoft.Insights/autoscalesettings/pool-autoscale", "Group"),
            ("Microsoft.Compute/virtualMachineScaleSets/pool", "Group")
        ])
    );
    assert_eq!(
        template["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["condition"] == "[not(empty(parameters('wakeGroupObjectId')))]")
            .count(),
        3
    );
    let builtin =
        |id: &str| format!("/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/{id}");
    let by_role: BTreeSet<(String, String)> = assignments
        .iter()
        .map(|a| {
            (
                // No scope of its own: the resource group.
                a["scope"].as_str().unwrap_or("").to_string(),
                a["properties"]["roleDefinitionId"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let set_scope = "Microsoft.Compute/virtualMachineScaleSets/pool".to_string();
    for id in ["3913510d-42f4-4e42-8a64-420c390055eb", "43d0d8ad-25c7-4714-9337-8ba259a9fe05"] {
        assert!(by_role.contains(&(set_scope.clone(), builtin(id))), "{id} on the scale set: {by_role:?}");
    }
    // Key Vault: RBAC or an access policy with secret get, in the vault's own resource group.
    let (_, other_rg) = deploy(
        &template,
        &[("keyVaultResourceGroup", json!("vaults")), ("keyVaultPermissionModel", json!("accessPolicy"))],
    );
    let nested = resource(&other_rg, "Microsoft.Resources/deployments")[0];
    assert_eq!(nested["resourceGroup"], "vaults");
    assert_eq!(nested["properties"]["parameters"]["permissionModel"]["value"], "accessPolicy");
    let inner = nested["properties"]["template"]["resources"].as_array().unwrap();
    assert_eq!(inner[1]["properties"]["accessPolicies"][0]["permissions"], json!({"secrets": ["get"]}));
    assert_eq!(nested["properties"]["parameters"]["roleId"]["value"], "4633458b-17de-408a-b874-0445c86b69e6");
    // Two pools (another name, or the same name in another resource group) never share a role.
    let names = |rg: &str, pool: &str| {
        let mut given = readme_parameters(&template);
        given.insert("poolName".into(), json!(pool));
        let scope = Scope::new(&template, rg, &given).unwrap();
        let r = evaluate(&scope, &template);
        let role = r["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == "Microsoft.Authorization/roleDefinitions")
            .unwrap()
            .clone();
        (role["name"].clone(), role["properties"]["roleName"].clone())
    };
    let first = names("rg-a", "pool");
    for other in [names("rg-b", "pool"), names("rg-a", "pool2")] {
        assert!(first.0 != other.0 && first.1 != other.1, "{first:?} {other:?}");
    }
}

#[test]
fn the_scale_set_passes_100_vms_boots_no_extra_ones_and_its_health_survives_an_agent_restart() {
    let template = template();
    let (_, evaluated) = deploy(&template, &[]);
    let set = resource(&evaluated, "Microsoft.Compute/virtualMachineScaleSets")[0];
    let props = &set["properties"];
    assert_eq!((&props["singlePlacementGroup"], &props["overprovision"]), (&json!(false), &json!(false)));
    assert_eq!(set["identity"]["type"], "SystemAssigned");
    assert_eq!(set["sku"]["capacity"], 0);
    let profile = &props["virtualMachineProfile"];
    let health = &profile["extensionProfile"]["extensions"][0]["properties"];
    assert_eq!(health["type"], "ApplicationHealthLinux");
    let (host, port) = crate::config::settings::DEFAULT_HEALTH_LISTEN.rsplit_once(':').unwrap();
    assert_eq!(host, "127.0.0.1");
    let settings = &health["settings"];
    assert_eq!(
        (&settings["port"], &settings["requestPath"], &settings["protocol"]),
        (&json!(port.parse::<u16>().unwrap()), &json!("/health"), &json!("http"))
    );
    let unhealthy_after =
        settings["intervalInSeconds"].as_u64().unwrap() * settings["numberOfProbes"].as_u64().unwrap();
    assert!(unhealthy_after >= 30, "one restart must not read as unhealthy: {unhealthy_after} s");
    // Health must not count before boot and the share wait are over.
    let grace = settings["gracePeriod"].as_u64().unwrap();
    assert!(grace >= 300 + crate::config::settings::DEFAULT_SHARE_WAIT.as_secs(), "grace period {grace} s");
    let terminate = &profile["scheduledEventsProfile"]["terminateNotificationProfile"];
    assert_eq!(terminate["enable"], true);
    assert!(["PT5M", "PT10M", "PT15M"].contains(&terminate["notBeforeTimeout"].as_str().unwrap()));
}

#[test]
fn metrics_go_to_the_scale_set() {
    let compute = Compute {
        subscription_id: "sub".into(),
        resource_group_name: "rg".into(),
        vm_scale_set_name: "pool".into(),
        resource_id: "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/pool/virtualMachines/3".into(),
        ..Compute::default()
    };
    assert_eq!(
        compute.metrics_resource(),
        "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/pool"
    );
}
