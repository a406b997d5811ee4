//! What `pool-agent azure` shows: who this VM is to Azure (IMDS `compute`),
//! the last metric post, and every keeper's view.

use super::{delete, health, key, protect, token};

/// What IMDS says of this VM (`compute`), as `pool-agent azure` shows it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Compute {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub vm_id: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub subscription_id: String,
    #[serde(default)]
    pub resource_group_name: String,
    #[serde(default)]
    pub vm_scale_set_name: String,
    #[serde(default)]
    pub resource_id: String,
    /// Base64, as IMDS gives it; its text is a config fragment (or empty).
    #[serde(default, skip_serializing)]
    pub user_data: String,
}

impl Compute {
    /// The userData as text: a TOML config fragment, or nothing.
    pub fn user_data_text(&self) -> Result<String, String> {
        use base64::Engine;
        if self.user_data.trim().is_empty() {
            return Ok(String::new());
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.user_data.trim())
            .map_err(|err| format!("userData is not base64: {err}"))?;
        String::from_utf8(bytes).map_err(|_| "userData is not UTF-8 text".to_string())
    }
}

impl Compute {
    /// What the metrics describe: the scale set (autoscale reads its
    /// metrics), or the VM itself outside one.
    pub fn metrics_resource(&self) -> String {
        if self.vm_scale_set_name.is_empty() {
            return self.resource_id.clone();
        }
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/{}",
            self.subscription_id, self.resource_group_name, self.vm_scale_set_name
        )
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct LastPost {
    pub at: String,
    /// The HTTP status, or 0 when none came back.
    pub status: u16,
    pub detail: String,
}

/// `GET /v1/azure`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct AzureReport {
    /// `on-azure`, `absent` (IMDS does not answer), `off` (azure.enabled = false), `starting`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<Compute>,
    #[serde(default)]
    pub identity: String,
    #[serde(default)]
    pub tokens: Vec<token::TokenView>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metrics_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_post: Option<LastPost>,
    #[serde(default)]
    pub buckets_posted: u64,
    #[serde(default)]
    pub backlog: usize,
    #[serde(default)]
    pub dropped_too_old: u64,
    #[serde(default)]
    pub dropped_rejected: u64,
    #[serde(default)]
    pub imds_requests: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<health::Health>,
    /// The share's storage key when it comes from Azure (never the key itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_key: Option<key::KeyView>,
    /// Scale-in protection (`azure.protect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protection: Option<protect::ProtectionView>,
    /// `idle.action = "delete-self"`: whether, and why not yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_delete: Option<delete::DeleteView>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub health_listen: String,
    /// The load balancer's question: can this VM take a new session (and why not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub readiness_listen: String,
    /// What the VM offers the pool (the demand metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<OfferView>,
    /// Who may reach IMDS (`azure.imds_access`), as enforced.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub imds_access: String,
    /// Keys of the scale set's userData refused (they could run code or widen access).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_data_refused: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The demand metrics as `pool-agent azure` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OfferView {
    pub in_use: bool,
    pub booting: bool,
    pub free: bool,
}
