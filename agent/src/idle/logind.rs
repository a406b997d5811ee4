//! systemd-logind's sessions over the D-Bus system bus, as `loginctl` asks
//! for them: `ListSessions` on the manager, then each session's properties.

use super::sessions::LogindSession;
use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

const LOGIN1: &str = "org.freedesktop.login1";
const MANAGER_PATH: &str = "/org/freedesktop/login1";
const MANAGER: &str = "org.freedesktop.login1.Manager";
const SESSION: &str = "org.freedesktop.login1.Session";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
/// A bus or a logind that does not answer must not stall the sample: well
/// within the idle task's 5 s per source, so the records can still be read.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// After a failure, the bus is left alone this long (a hung bus would cost
/// every sample its patience).
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// One `ListSessions` entry: id, uid, user name, seat, object path.
type Listed = (String, u32, String, String, OwnedObjectPath);

/// A connection to the system bus, made on first use and again after an error.
pub struct LogindBus {
    connection: Option<zbus::Connection>,
    /// Another bus than the system's (tests).
    address: Option<String>,
    answer_within: Duration,
    /// The last failure, and when.
    failed: Option<(std::time::Instant, String)>,
}

impl Default for LogindBus {
    fn default() -> Self {
        Self { connection: None, address: None, answer_within: ANSWER_WITHIN, failed: None }
    }
}

impl LogindBus {
    /// A bus at `address` (D-Bus address syntax), asked with this patience.
    #[cfg(test)]
    pub fn at(address: &str, answer_within: Duration) -> Self {
        Self { connection: None, address: Some(address.to_string()), answer_within, failed: None }
    }

    /// Why the last question failed, while the bus is left alone.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_ref().filter(|(at, _)| at.elapsed() < ASK_AGAIN_AFTER).map(|(_, why)| why.as_str())
    }

    /// The sessions logind knows, or why they could not be had.
    pub async fn sessions(&mut self) -> Result<Vec<LogindSession>, String> {
        if let Some(why) = self.failure() {
            return Err(why.to_string());
        }
        let asked = tokio::time::timeout(self.answer_within, self.ask()).await;
        let answer =
            asked.unwrap_or_else(|_| Err(format!("no answer within {:.1}s", self.answer_within.as_secs_f64())));
        match &answer {
            Ok(_) => self.failed = None,
            Err(why) => {
                self.connection = None;
                self.failed = Some((std::time::Instant::now(), why.clone()));
            }
        }
        answer
    }

    async fn ask(&mut self) -> Result<Vec<LogindSession>, String> {
        let connection = match &self.connection {
            Some(connection) => connection.clone(),
            None => {
                let made = match &self.address {
                    None => zbus::Connection::system().await,
                    Some(address) => {
                        async { zbus::connection::Builder::address(address.as_str())?.build().await }.await
                    }
                };
                let made = made.map_err(|err| format!("system bus: {err}"))?;
                self.connection = Some(made.clone());
                made
            }
        };
        let reply = connection
            .call_method(Some(LOGIN1), MANAGER_PATH, Some(MANAGER), "ListSessions", &())
            .await
            .map_err(|err| format!("ListSessions: {err}"))?;
        let listed: Vec<Listed> = reply.body().deserialize().map_err(|err| format!("ListSessions: {err}"))?;
        let mut sessions = Vec::with_capacity(listed.len());
        for (id, uid, user, _seat, path) in listed {
            let reply =
                connection.call_method(Some(LOGIN1), path.as_str(), Some(PROPERTIES), "GetAll", &(SESSION,)).await;
            let properties: HashMap<String, OwnedValue> = match reply {
                Ok(reply) => reply.body().deserialize().map_err(|err| format!("session {id}: {err}"))?,
                // Ended between the list and the question: not a session any more.
                Err(zbus::Error::MethodError(name, _, _)) if name.as_str().ends_with("UnknownObject") => continue,
                Err(err) => return Err(format!("session {id}: {err}")),
            };
            sessions.push(session_from_properties(id, uid, user, &properties));
        }
        Ok(sessions)
    }
}

fn text(properties: &HashMap<String, OwnedValue>, name: &str) -> String {
    properties.get(name).and_then(|v| v.downcast_ref::<&str>().ok()).unwrap_or_default().to_string()
}

/// A session as logind's `org.freedesktop.login1.Session` properties describe it.
pub fn session_from_properties(
    id: String,
    uid: u32,
    user: String,
    properties: &HashMap<String, OwnedValue>,
) -> LogindSession {
    let idle_hint = properties.get("IdleHint").and_then(|v| v.downcast_ref::<bool>().ok());
    // Microseconds since the epoch; 0 when the session was never idle.
    let idle_since = properties
        .get("IdleSinceHint")
        .and_then(|v| v.downcast_ref::<u64>().ok())
        .filter(|usec| *usec > 0)
        .map(|usec| UNIX_EPOCH + Duration::from_micros(usec));
    LogindSession {
        id,
        uid,
        user,
        tty: text(properties, "TTY"),
        remote_host: text(properties, "RemoteHost"),
        service: text(properties, "Service"),
        class: text(properties, "Class"),
        scope: text(properties, "Scope"),
        kind: text(properties, "Type"),
        idle_hint,
        idle_since,
    }
}

/// For tests: the properties logind gives a session.
#[cfg(test)]
pub fn properties(pairs: &[(&str, zbus::zvariant::Value<'static>)]) -> HashMap<String, OwnedValue> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), OwnedValue::try_from(value.clone()).unwrap_or_else(|_| unreachable!())))
        .collect()
}
