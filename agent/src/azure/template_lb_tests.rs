//! The pool's one address in the shipped template: the load balancer, its
//! probe of the agent's readiness answer, admin NAT, the NSG and outbound.

use super::{deploy, resource, rg_id, template, READINESS_LISTEN, READINESS_PATH};
use serde_json::json;
use std::collections::BTreeSet;

#[test]
fn the_load_balancer_probes_the_agent_s_readiness_answer_and_forwards_ssh_and_jupyterhub() {
    let template = template();
    let (host, port) = READINESS_LISTEN.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    assert_ne!(host, "127.0.0.1", "the probe comes from 168.63.129.16, not loopback");
    let health = crate::config::settings::DEFAULT_HEALTH_LISTEN.rsplit_once(':').unwrap().1;
    assert_ne!(port.to_string(), health, "readiness (new sessions) and health (repair) are two answers");
    for (frontend, source) in [("public", "Internet"), ("internal", "VirtualNetwork")] {
        let (_, evaluated) = deploy(&template, &[("frontend", json!(frontend))]);
        let lb = resource(&evaluated, "Microsoft.Network/loadBalancers")[0];
        let lb_id = format!("{}/providers/Microsoft.Network/loadBalancers/{}", rg_id(), lb["name"].as_str().unwrap());
        assert_eq!(lb["sku"]["name"], "Standard");
        let props = &lb["properties"];
        let probe = &props["probes"][0];
        assert_eq!(probe["properties"]["protocol"], "Http");
        assert_eq!(probe["properties"]["port"], port);
        assert_eq!(probe["properties"]["requestPath"], READINESS_PATH);
        // An agent restart (a few seconds without an answer) must not take the VM out.
        let down_after = probe["properties"]["intervalInSeconds"].as_u64().unwrap()
            * probe["properties"]["probeThreshold"].as_u64().unwrap();
        assert!(down_after >= 15, "probed down after {down_after} s");
        let probe_id = format!("{lb_id}/probes/{}", probe["name"].as_str().unwrap());
        let pool_id =
            format!("{lb_id}/backendAddressPools/{}", props["backendAddressPools"][0]["name"].as_str().unwrap());
        let mut ports = BTreeSet::new();
        for rule in props["loadBalancingRules"].as_array().unwrap() {
            let r = &rule["properties"];
            assert_eq!(r["loadDistribution"], "SourceIP", "{rule}");
            assert_eq!(r["probe"]["id"], probe_id.as_str());
            assert_eq!(r["backendAddressPool"]["id"], pool_id.as_str());
            assert_eq!(r["frontendPort"], r["backendPort"]);
            // SNAT comes from the outbound rule, which Azure allows only with the rules' own SNAT off.
            assert_eq!(r["disableOutboundSnat"], frontend == "public");
            ports.insert(r["frontendPort"].as_u64().unwrap());
        }
        assert_eq!(ports, BTreeSet::from([22, 8000]));
        // Admin SSH per VM: NAT rule V2 on the backend pool, never a NAT pool (retiring).
        assert!(props.get("inboundNatPools").is_none());
        let nat = &props["inboundNatRules"][0]["properties"];
        assert_eq!(nat["backendAddressPool"]["id"], pool_id.as_str());
        assert_eq!(nat["backendPort"], 22);
        let frontend_ip = &props["frontendIPConfigurations"][0]["properties"];
        let outbound = props["outboundRules"].as_array().unwrap();
        if frontend == "public" {
            assert!(frontend_ip["publicIPAddress"]["id"].as_str().unwrap().ends_with("/publicIPAddresses/pool-ip"));
            assert_eq!(outbound[0]["properties"]["backendAddressPool"]["id"], pool_id.as_str());
        } else {
            assert!(frontend_ip.get("publicIPAddress").is_none() && frontend_ip["subnet"]["id"].is_string());
            assert!(outbound.is_empty(), "an internal load balancer cannot carry an outbound rule");
        }
        // The NSG on every NIC lets the users and the probe in, nothing else.
        let nsg = resource(&evaluated, "Microsoft.Network/networkSecurityGroups")[0];
        let allowed: BTreeSet<(String, String)> = nsg["properties"]["securityRules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| &r["properties"])
            .inspect(|r| assert_eq!((&r["access"], &r["direction"]), (&json!("Allow"), &json!("Inbound"))))
            .map(|r| {
                (r["destinationPortRange"].as_str().unwrap().into(), r["sourceAddressPrefix"].as_str().unwrap().into())
            })
            .collect();
        let expected = [("22", source), ("8000", source), (&*port.to_string(), "AzureLoadBalancer")]
            .map(|(p, s)| (p.to_string(), s.to_string()));
        assert_eq!(allowed, BTreeSet::from(expected));
        let set = resource(&evaluated, "Microsoft.Compute/virtualMachineScaleSets")[0];
        let network = &set["properties"]["virtualMachineProfile"]["networkProfile"];
        assert!(network.get("healthProbe").is_none(), "the Application Health extension is the health source");
        let nic = &network["networkInterfaceConfigurations"][0]["properties"];
        assert!(nic["networkSecurityGroup"]["id"].as_str().unwrap().ends_with("/networkSecurityGroups/pool-nsg"));
        assert_eq!(
            nic["ipConfigurations"][0]["properties"]["loadBalancerBackendAddressPools"][0]["id"],
            pool_id.as_str()
        );
    }
    // Sized for maxInstances: every VM gets an SSH port and its share of SNAT ports.
    for (max, start) in [(1, 50000), (10, 50000), (999, 50000), (1000, 63000)] {
        let (_, evaluated) = deploy(&template, &[("maxInstances", json!(max)), ("sshNatPortStart", json!(start))]);
        let props = &resource(&evaluated, "Microsoft.Network/loadBalancers")[0]["properties"];
        let nat = &props["inboundNatRules"][0]["properties"];
        let (first, last) =
            (nat["frontendPortRangeStart"].as_i64().unwrap(), nat["frontendPortRangeEnd"].as_i64().unwrap());
        assert!(last - first + 1 >= 2 * max && last <= 65534, "{first}-{last} for {max} VMs");
        let snat = props["outboundRules"][0]["properties"]["allocatedOutboundPorts"].as_i64().unwrap();
        assert!(snat >= 8 && snat % 8 == 0 && snat * max <= 64000, "{snat} SNAT ports each for {max} VMs");
    }
}
