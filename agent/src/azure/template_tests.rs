//! The ARM template shipped for the pool, read as an admin deploys it.

use super::*;

/// The ARM template shipped for the pool, read as an admin deploys it.
fn template() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/azure/pool.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn resource<'a>(template: &'a serde_json::Value, kind: &str) -> Vec<&'a serde_json::Value> {
    template["resources"].as_array().unwrap().iter().filter(|r| r["type"] == kind).collect()
}

#[test]
fn the_shipped_template_uses_the_metrics_namespace_and_health_endpoint_the_agent_serves() {
    let template = template();
    let autoscale = resource(&template, "Microsoft.Insights/autoscalesettings")[0];
    let profiles = autoscale["properties"]["profiles"].as_array().unwrap();
    let mut used = std::collections::BTreeSet::new();
    for profile in profiles {
        for rule in profile["rules"].as_array().unwrap() {
            let trigger = &rule["metricTrigger"];
            let name = trigger["metricName"].as_str().unwrap();
            assert!(
                monitor::METRIC_NAMES.contains(&name),
                "the template scales on {name}, which the agent never posts"
            );
            assert_eq!(trigger["metricNamespace"], crate::config::settings::DEFAULT_METRICS_NAMESPACE);
            used.insert(name);
        }
        // Scale to zero: no profile keeps a VM outside working hours.
        if profile["name"] != "working hours" {
            assert_eq!(profile["capacity"]["minimum"], "0", "{profile}");
        }
    }
    assert_eq!(used.into_iter().collect::<Vec<_>>(), ["Busy", "Removable"]);
    let set = resource(&template, "Microsoft.Compute/virtualMachineScaleSets")[0];
    let profile = &set["properties"]["virtualMachineProfile"];
    let health = &profile["extensionProfile"]["extensions"][0]["properties"];
    assert_eq!(health["type"], "ApplicationHealthLinux");
    let (host, port) = crate::config::settings::DEFAULT_HEALTH_LISTEN.rsplit_once(':').unwrap();
    assert_eq!(host, "127.0.0.1");
    assert_eq!(health["settings"]["port"], port.parse::<u16>().unwrap());
    assert_eq!(health["settings"]["requestPath"], "/health");
    assert_eq!(health["settings"]["protocol"], "http");
    // Health must not count before boot and the share wait are over.
    let grace = template["parameters"]["healthGracePeriod"]["defaultValue"].as_u64().unwrap();
    assert!(grace >= 300 + crate::config::settings::DEFAULT_SHARE_WAIT.as_secs(), "grace period {grace} s");
    let terminate = &profile["scheduledEventsProfile"]["terminateNotificationProfile"];
    assert_eq!(terminate["enable"], true);
    assert!(["PT5M", "PT10M", "PT15M"].contains(&terminate["notBeforeTimeout"].as_str().unwrap()));
    assert_eq!(set["identity"]["type"], "SystemAssigned");
    assert_eq!(set["sku"]["capacity"], 0);
}

#[test]
fn the_shipped_template_s_config_fragment_loads_and_its_roles_cover_what_the_agent_calls() {
    let template = template();
    let fragment = template["parameters"]["configFragment"]["defaultValue"].as_str().unwrap();
    // The pool's config is a root-owned drop-in written by cloud-init from
    // customData; never userData, which the VM's own identity can rewrite.
    let set = resource(&template, "Microsoft.Compute/virtualMachineScaleSets")[0];
    let profile = &set["properties"]["virtualMachineProfile"];
    assert!(profile.get("userData").is_none(), "the pool's config must not come from userData");
    let custom = profile["osProfile"]["customData"].as_str().unwrap();
    assert!(custom.contains("path: /etc/pool-agent/config.d/50-pool.toml") && custom.contains("owner: root:root"));
    assert!(custom.contains("base64(parameters('configFragment'))"), "{custom}");
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    std::fs::write(&main, "").unwrap();
    std::fs::create_dir(dir.path().join("config.d")).unwrap();
    std::fs::write(dir.path().join("config.d/50-pool.toml"), fragment).unwrap();
    let settings = crate::config::load(&main).unwrap();
    assert!(key::spec(&settings).is_some(), "the fragment takes the key from Key Vault");
    let role = resource(&template, "Microsoft.Authorization/roleDefinitions")[0];
    let actions = template["variables"]["instanceActions"].as_array().unwrap();
    for needed in [
        "Microsoft.Compute/virtualMachineScaleSets/read",
        "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
        "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/write",
    ] {
        assert!(actions.iter().any(|a| a == needed), "{needed}");
    }
    assert_eq!(template["variables"]["deleteActions"][0], "Microsoft.Compute/virtualMachineScaleSets/delete/action");
    assert!(role["properties"]["permissions"][0]["actions"].as_str().unwrap().contains("selfDelete"));
    let assigned: Vec<&str> = resource(&template, "Microsoft.Authorization/roleAssignments")
        .iter()
        .map(|a| a["properties"]["roleDefinitionId"].as_str().unwrap())
        .collect();
    assert!(assigned.iter().any(|r| r.contains("monitoringMetricsPublisher")));
    assert!(assigned.iter().any(|r| r.contains("keyVaultSecretsUser")));
    assert!(assigned.iter().any(|r| r.contains("instanceRoleName")));
    assert_eq!(template["variables"]["monitoringMetricsPublisher"], "3913510d-42f4-4e42-8a64-420c390055eb");
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
