//! The optional Microsoft Entra ID SSH login of the shipped template: the
//! `AADSSHLoginForLinux` extension on the scale set and the built-in login
//! roles for the groups given, deployed on paper as README's command does.
//! Microsoft's page: <https://learn.microsoft.com/entra/identity/devices/howto-vm-sign-in-azure-ad-linux>.

use super::{declared_ids, deploy, file, resource, rg_id, template, Scope, RG, SUBSCRIPTION};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Built-in role ids, as Microsoft lists them
/// (<https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/compute>).
const USER_LOGIN: &str = "fb879df8-f326-4884-b1cf-06f3ad86be52";
const ADMIN_LOGIN: &str = "1c0163c0-47e6-4577-8991-ea5c82e286e4";
const USERS: &str = "11111111-2222-3333-4444-555555555555";
const ADMINS: &str = "66666666-7777-8888-9999-000000000000";

fn builtin(id: &str) -> String {
    format!("/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/{id}")
}

/// Resources a deployment creates: those without a condition or whose condition held.
fn deployed(evaluated: &Value) -> Vec<&Value> {
    evaluated["resources"].as_array().unwrap().iter().filter(|r| r["condition"] != json!(false)).collect()
}

/// The role assignments a deployment creates for either login role.
fn login_assignments(evaluated: &Value) -> Vec<&Value> {
    let roles = [builtin(USER_LOGIN), builtin(ADMIN_LOGIN)];
    deployed(evaluated)
        .into_iter()
        .filter(|r| r["type"] == "Microsoft.Authorization/roleAssignments")
        .filter(|r| r["properties"]["roleDefinitionId"].as_str().is_some_and(|id| roles.iter().any(|b| b == id)))
        .collect()
}

/// The scale set's extensions, by name, in order.
fn extensions(evaluated: &Value) -> Vec<Value> {
    let set = resource(evaluated, "Microsoft.Compute/virtualMachineScaleSets")[0];
    set["properties"]["virtualMachineProfile"]["extensionProfile"]["extensions"].as_array().unwrap().clone()
}

fn names(extensions: &[Value]) -> Vec<&str> {
    extensions.iter().map(|e| e["name"].as_str().unwrap()).collect()
}

#[test]
fn without_a_group_id_no_entra_extension_and_no_login_role_is_deployed() {
    let template = template();
    for name in ["entraUserGroupObjectId", "entraAdminGroupObjectId"] {
        assert_eq!(template["parameters"][name]["defaultValue"], "", "{name} is off unless given");
    }
    // README's command, with the example parameters file (which lists both, empty).
    let (_, evaluated) = deploy(&template, &[]);
    assert_eq!(names(&extensions(&evaluated)), ["HealthExtension"]);
    assert_eq!(login_assignments(&evaluated).len(), 0);
    // The two assignments are in the template, and their conditions are what keeps them out.
    let conditions: Vec<&Value> = resource(&evaluated, "Microsoft.Authorization/roleAssignments")
        .into_iter()
        .filter(|r| {
            r["properties"]["roleDefinitionId"] == builtin(USER_LOGIN).as_str()
                || r["properties"]["roleDefinitionId"] == builtin(ADMIN_LOGIN).as_str()
        })
        .map(|r| &r["condition"])
        .collect();
    assert_eq!(conditions, [&json!(false), &json!(false)]);
}

#[test]
fn a_user_group_gets_the_extension_and_user_login_on_the_resource_group() {
    let template = template();
    let (_, evaluated) = deploy(&template, &[("entraUserGroupObjectId", json!(USERS))]);
    // The health extension stays first and unchanged; the Entra one joins it, as Microsoft names it.
    let extensions = extensions(&evaluated);
    assert_eq!(names(&extensions), ["HealthExtension", "AADSSHLoginForLinux"]);
    assert_eq!(extensions[0]["properties"]["type"], "ApplicationHealthLinux");
    assert_eq!(
        extensions[1]["properties"],
        json!({"publisher": "Microsoft.Azure.ActiveDirectory", "type": "AADSSHLoginForLinux",
               "typeHandlerVersion": "1.0", "autoUpgradeMinorVersion": true})
    );
    // The extension needs the scale set's system-assigned identity (exit code 22 without it).
    let set = resource(&evaluated, "Microsoft.Compute/virtualMachineScaleSets")[0];
    assert!(set["identity"]["type"].as_str().unwrap().contains("SystemAssigned"), "{}", set["identity"]);
    let set_id = format!("{}/providers/Microsoft.Compute/virtualMachineScaleSets/pool", rg_id());
    let assignments = login_assignments(&evaluated);
    assert_eq!(assignments.len(), 1, "{assignments:#?}");
    let user = assignments[0];
    assert_eq!(user["properties"]["roleDefinitionId"], builtin(USER_LOGIN).as_str());
    assert_eq!(user["properties"]["principalId"], USERS);
    assert_eq!(user["properties"]["principalType"], "Group");
    // On the resource group (no scope of its own), where Microsoft says login rights must be.
    assert!(user.get("scope").is_none(), "scoped to {}", user["scope"]);
    let declared = declared_ids(&evaluated, &rg_id());
    let id =
        format!("{}/providers/Microsoft.Authorization/roleAssignments/{}", rg_id(), user["name"].as_str().unwrap());
    assert!(declared.contains(&id), "{id}");
    // After the scale set, and on nothing the template does not declare.
    let depends: Vec<&str> = user["dependsOn"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert_eq!(depends, [set_id.as_str()]);
    assert!(depends.iter().all(|d| declared.contains(*d)));
    // An admin group alone turns the extension on too, with the admin role only.
    let (_, admins_only) = deploy(&template, &[("entraAdminGroupObjectId", json!(ADMINS))]);
    assert_eq!(names(&self::extensions(&admins_only)), ["HealthExtension", "AADSSHLoginForLinux"]);
    let roles: Vec<(&Value, &Value)> = login_assignments(&admins_only)
        .into_iter()
        .map(|a| (&a["properties"]["roleDefinitionId"], &a["properties"]["principalId"]))
        .collect();
    assert_eq!(roles, [(&json!(builtin(ADMIN_LOGIN)), &json!(ADMINS))]);
}

/// (role, principal) -> assignment name, for one deployment.
fn assignment_names(rg: &str, overrides: &[(&str, Value)]) -> BTreeMap<(String, String), String> {
    let template = template();
    let mut given = super::readme_parameters(&template);
    given.extend(overrides.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let scope = Scope::new(&template, rg, &given).unwrap();
    let evaluated = super::evaluate(&scope, &template);
    login_assignments(&evaluated)
        .into_iter()
        .map(|a| {
            let p = &a["properties"];
            let key = (p["roleDefinitionId"].as_str().unwrap().into(), p["principalId"].as_str().unwrap().into());
            (key, a["name"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn both_groups_get_one_assignment_each_with_distinct_names_that_stay_put() {
    let both = [("entraUserGroupObjectId", json!(USERS)), ("entraAdminGroupObjectId", json!(ADMINS))];
    let (_, evaluated) = deploy(&template(), &both);
    assert_eq!(names(&extensions(&evaluated)), ["HealthExtension", "AADSSHLoginForLinux"], "one extension");
    let named = assignment_names(RG, &both);
    assert_eq!(
        named.keys().cloned().collect::<Vec<_>>(),
        [(builtin(ADMIN_LOGIN), ADMINS.to_string()), (builtin(USER_LOGIN), USERS.to_string())]
    );
    let distinct: BTreeSet<&String> = named.values().collect();
    assert_eq!(distinct.len(), 2, "{named:?}");
    // Deterministic: a redeploy names them the same (no second assignment).
    assert_eq!(assignment_names(RG, &both), named);
    // One group for both roles: still two names.
    let same = [("entraUserGroupObjectId", json!(USERS)), ("entraAdminGroupObjectId", json!(USERS))];
    assert_eq!(assignment_names(RG, &same).values().collect::<BTreeSet<_>>().len(), 2);
    // A second pool in the same resource group with the same groups names the same
    // assignments (Azure refuses an identical one under another name), another
    // resource group its own, and another group a new one (a name's principal cannot change).
    let mut other_pool = both.to_vec();
    other_pool.push(("poolName", json!("pool2")));
    assert_eq!(assignment_names(RG, &other_pool), named);
    let elsewhere = assignment_names("other-rg", &both);
    assert!(elsewhere.values().all(|n| !named.values().any(|m| m == n)), "{elsewhere:?} {named:?}");
    let new_group = [("entraUserGroupObjectId", json!(ADMINS.replace('6', "a")))];
    let renamed = assignment_names(RG, &new_group);
    assert!(renamed.values().all(|n| !named.values().any(|m| m == n)), "{renamed:?}");
}

#[test]
fn the_login_roles_are_the_documented_built_in_ones_and_the_template_cites_them() {
    let template = template();
    assert_eq!(template["variables"]["virtualMachineUserLogin"], USER_LOGIN);
    assert_eq!(template["variables"]["virtualMachineAdministratorLogin"], ADMIN_LOGIN);
    let doc = "https://learn.microsoft.com/entra/identity/devices/howto-vm-sign-in-azure-ad-linux";
    let description =
        |name: &str| template["parameters"][name]["metadata"]["description"].as_str().unwrap().to_string();
    let user = description("entraUserGroupObjectId");
    assert!(user.contains("Virtual Machine User Login") && user.contains(USER_LOGIN) && user.contains(doc), "{user}");
    let admin = description("entraAdminGroupObjectId");
    assert!(admin.contains("Virtual Machine Administrator Login") && admin.contains(ADMIN_LOGIN), "{admin}");
    // Each assignment says why it is on the resource group, with its sources.
    let raw: Vec<&Value> = template["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["condition"].as_str().is_some_and(|c| c.contains("entra")))
        .collect();
    assert_eq!(raw.len(), 2);
    for r in raw {
        let why = r["metadata"]["description"].as_str().unwrap();
        assert!(why.contains(doc) && why.contains("resource group"), "{why}");
    }
}

#[test]
fn a_group_id_longer_than_an_object_id_is_refused_by_the_template_itself() {
    // ARM checks only lengths (no pattern): a display name in place of the
    // object id is refused before anything is deployed; a short string that is
    // not a GUID passes here and is refused by Azure RBAC at the assignment
    // (InvalidPrincipalId), which no test here can show.
    let template = template();
    let mut given = super::readme_parameters(&template);
    for name in ["entraUserGroupObjectId", "entraAdminGroupObjectId"] {
        assert_eq!(template["parameters"][name]["maxLength"], 36, "{name}: an object id is 36 characters");
        given.insert(name.into(), json!("Data Science Team: users of the pool VMs"));
        assert!(given[name].as_str().unwrap().len() > 36);
        let refused = Scope::new(&template, RG, &given).err().unwrap_or_default();
        assert!(refused.contains(name) && refused.contains("maxLength"), "{name}: {refused}");
        given.insert(name.into(), json!(USERS));
        assert!(Scope::new(&template, RG, &given).is_ok(), "{name}: a GUID is accepted");
    }
}

#[test]
fn readme_turns_entra_login_on_with_the_template_s_own_parameter_names() {
    let template = template();
    let readme = file("README.md");
    let choices = readme.find("The three choices.").expect("README explains the three choices");
    let paragraph = readme[choices..].lines().next().unwrap();
    let start = paragraph.find("az deployment group create").expect("the choices say how to deploy with Entra login");
    let command = &paragraph[start..start + paragraph[start..].find('`').unwrap()];
    let given: Vec<&str> = command.split_whitespace().filter_map(|t| t.split_once('=').map(|(name, _)| name)).collect();
    assert!(given.contains(&"entraUserGroupObjectId"), "{command}");
    for name in given {
        assert!(
            template["parameters"].get(name).is_some(),
            "README passes {name}, which the template does not declare"
        );
    }
    // The deployment section lists what the parameters deploy.
    let deploying = &readme[readme.find("### Deploying the pool on Azure").unwrap()..];
    for name in ["entraUserGroupObjectId", "entraAdminGroupObjectId"] {
        assert!(deploying.contains(name), "Deploying the pool on Azure does not name {name}");
    }
}

/// The drop-in cloud-init writes for Entra login, if any (decoded).
fn entra_drop_in(evaluated: &Value) -> Option<String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let set = resource(evaluated, "Microsoft.Compute/virtualMachineScaleSets")[0];
    let custom = set["properties"]["virtualMachineProfile"]["osProfile"]["customData"].as_str().unwrap();
    let cloud_config = String::from_utf8(b64.decode(custom).unwrap()).unwrap();
    let entry =
        cloud_config.split("\n- path: ").find(|e| e.starts_with("/etc/pool-agent/config.d/40-entra-login.toml"))?;
    assert!(entry.contains("\n  owner: root:root\n  permissions: '0644'\n"), "{entry}");
    let content = entry.split("content: ").nth(1).unwrap().lines().next().unwrap();
    Some(String::from_utf8(b64.decode(content).unwrap()).unwrap())
}

#[test]
fn with_entra_login_the_agent_takes_the_large_uids_it_gives_as_users() {
    let template = template();
    let (_, without) = deploy(&template, &[]);
    assert_eq!(entra_drop_in(&without), None, "no Entra login, no drop-in");
    let (scope, evaluated) = deploy(&template, &[("entraAdminGroupObjectId", json!(ADMINS))]);
    let drop_in = entra_drop_in(&evaluated).expect("the Entra drop-in");
    // Loaded as the agent loads it, before the pool's own fragment (which may set it otherwise).
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    std::fs::write(&main, "").unwrap();
    std::fs::create_dir(dir.path().join("config.d")).unwrap();
    std::fs::write(dir.path().join("config.d/40-entra-login.toml"), &drop_in).unwrap();
    let fragment = scope.variable("configFragment").unwrap().as_str().unwrap().to_string();
    std::fs::write(dir.path().join("config.d/50-pool.toml"), &fragment).unwrap();
    let settings = crate::config::load(&main).unwrap();
    let users = crate::core::user_uids::UserUids::of(&settings.links);
    // An Entra user's uid as one report shows it; nobody never.
    assert!(users.contains(&3_197_663) && !users.contains(&65534), "{:?}", settings.links);
}
