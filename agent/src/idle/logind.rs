//! systemd-logind's sessions over the D-Bus system bus, as `loginctl` asks
//! for them: `ListSessions` on the manager, then each session's properties.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
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

/// One logind session record (`/run/systemd/sessions/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogindSession {
    pub id: String,
    pub uid: u32,
    pub user: String,
    pub tty: String,
    pub remote_host: String,
    pub service: String,
    pub class: String,
    pub scope: String,
    /// `tty`, `x11`, `wayland`, `unspecified`, ...
    pub kind: String,
    /// logind's idle hint (over D-Bus only; the records do not keep it).
    pub idle_hint: Option<bool>,
    pub idle_since: Option<SystemTime>,
    /// `online`, `active` or `closing` (its login is over, its scope still
    /// runs: tmux or nohup kept it after ssh disconnected).
    pub state: String,
}

pub fn parse_logind(id: &str, text: &str) -> LogindSession {
    let mut session = LogindSession { id: id.to_string(), ..Default::default() };
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else { continue };
        let value = value.to_string();
        match key {
            "UID" => session.uid = value.parse().unwrap_or(0),
            "USER" => session.user = value,
            "TTY" => session.tty = value,
            "REMOTE_HOST" => session.remote_host = value,
            "SERVICE" => session.service = value,
            "CLASS" => session.class = value,
            "SCOPE" => session.scope = value,
            "TYPE" => session.kind = value,
            "STATE" => session.state = value,
            _ => {}
        }
    }
    session
}

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
        state: text(properties, "State"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_read_from_logind_s_d_bus_properties() {
        use zbus::zvariant::Value;
        let since = 1_700_000_000_000_000u64;
        let given = properties(&[
            ("TTY", Value::from("pts/2")),
            ("RemoteHost", Value::from("10.0.0.8")),
            ("Service", Value::from("sshd")),
            ("Class", Value::from("user")),
            ("Scope", Value::from("session-7.scope")),
            ("Type", Value::from("tty")),
            ("IdleHint", Value::from(true)),
            ("IdleSinceHint", Value::from(since)),
            ("Leader", Value::from(4242u32)),
            ("State", Value::from("closing")),
        ]);
        let session = session_from_properties("7".into(), 1001, "alice".into(), &given);
        assert_eq!((session.id.as_str(), session.uid, session.user.as_str()), ("7", 1001, "alice"));
        assert_eq!((session.tty.as_str(), session.remote_host.as_str()), ("pts/2", "10.0.0.8"));
        assert_eq!((session.service.as_str(), session.class.as_str(), session.kind.as_str()), ("sshd", "user", "tty"));
        assert_eq!((session.scope.as_str(), session.state.as_str()), ("session-7.scope", "closing"));
        assert_eq!(parse_logind("7", "STATE=closing\nTTY=pts/2\n").state, "closing");
        assert_eq!(session.idle_hint, Some(true));
        assert_eq!(session.idle_since, Some(UNIX_EPOCH + Duration::from_micros(since)));
        // Never idle: logind says 0.
        let fresh = properties(&[("IdleHint", Value::from(false)), ("IdleSinceHint", Value::from(0u64))]);
        let session = session_from_properties("8".into(), 1002, "bob".into(), &fresh);
        assert_eq!((session.idle_hint, session.idle_since, session.tty.as_str()), (Some(false), None, ""));
    }
}
