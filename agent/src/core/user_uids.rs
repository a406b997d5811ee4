//! Which uids are users at work: `links.min_uid` to `links.max_uid`, never
//! the uids the system keeps for itself inside any range. A directory gives
//! large uids (sssd's id mapping from 200000, Entra ID login's in the
//! millions), so a pool that uses one widens the range; these must then stay
//! out, or a service running as one of them would keep the VM billed.

/// `nobody` (the kernel's overflow uid) and the 16-bit `(uid_t) -1`.
const RESERVED: [u32; 2] = [65534, 65535];
/// systemd's `DynamicUser=` services (systemd's UIDS-GIDS document:
/// https://systemd.io/UIDS-GIDS/, "61184…65519").
const DYNAMIC_SERVICE_USERS: std::ops::RangeInclusive<u32> = 61184..=65519;
/// `(uid_t) -1`, never a user.
const INVALID: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserUids {
    min: u32,
    max: u32,
}

impl UserUids {
    pub fn new(min: u32, max: u32) -> Self {
        Self { min, max }
    }

    /// The range `[links]` sets.
    pub fn of(links: &crate::config::settings::LinksSettings) -> Self {
        Self::new(links.min_uid, links.max_uid)
    }

    pub fn contains(&self, uid: &u32) -> bool {
        let uid = *uid;
        (self.min..=self.max).contains(&uid)
            && uid != INVALID
            && !RESERVED.contains(&uid)
            && !DYNAMIC_SERVICE_USERS.contains(&uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wide_range_takes_directory_users_but_never_nobody_or_systemd_s_service_users() {
        let wide = UserUids::new(1000, u32::MAX - 1);
        for user in [1000, 60000, 200_123, 3_197_663] {
            assert!(wide.contains(&user), "{user}");
        }
        for system in [0, 999, 61184, 62000, 65519, 65534, 65535, u32::MAX] {
            assert!(!wide.contains(&system), "{system}");
        }
        let default = UserUids::new(1000, 60000);
        assert!(default.contains(&60000) && !default.contains(&60001) && !default.contains(&3_197_663));
    }
}
