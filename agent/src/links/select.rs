//! Whose home gets a link: every login user the accounts view knows (NSS
//! users included) in the uid range, with a login shell and a home that
//! exists; or the names the config lists.

use crate::config::{LinksSettings, UserSelection};
use crate::core::accounts::{Account, AccountsView};
use crate::core::paths::SystemPaths;

/// The users to link, sorted by name. Blocking (NSS, stat of homes).
pub fn users_to_link(settings: &LinksSettings, accounts: &AccountsView, paths: &SystemPaths) -> Vec<Account> {
    let snapshot = accounts.snapshot();
    let mut chosen: Vec<Account> = match &settings.users {
        UserSelection::All => {
            let mut all: Vec<Account> = snapshot.users.clone();
            // Directory services often do not enumerate (sssd's default): a user
            // who has logged in has a home named after them, so ask NSS by name.
            let known: std::collections::HashSet<&str> = snapshot.users.iter().map(|a| a.name.as_str()).collect();
            if let Ok(entries) = std::fs::read_dir(paths.resolve("/home")) {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !known.contains(name.as_str()) {
                        all.extend(accounts.user_by_name(&name));
                    }
                }
            }
            all.into_iter().filter(|a| a.uid <= settings.max_uid && a.is_login_user(settings.min_uid)).collect()
        }
        UserSelection::Named(names) => names.iter().filter_map(|name| accounts.user_by_name(name)).collect(),
    };
    // Names and homes from a directory service go into paths: one plain
    // component and an absolute home, or the user is left out (and said so).
    chosen.retain(|a| {
        let fits = crate::core::accounts::name_fits_a_path(&a.name) && a.home.is_absolute();
        if !fits {
            tracing::warn!(
                component = "links",
                uid = a.uid,
                "user {:?} (home {:?}) cannot name a folder; not linked",
                a.name,
                a.home
            );
        }
        fits
    });
    // A home made on first login (pam_mkhomedir) is linked once it appears.
    chosen.retain(|a| paths.resolve(&a.home).is_dir());
    chosen.sort_by(|a, b| a.name.cmp(&b.name));
    chosen.dedup_by(|a, b| a.name == b.name);
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::accounts::AccountSource;

    #[test]
    fn login_users_in_range_with_a_home() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        for home in ["home/alice", "home/bob", "srv/svc", "home/big"] {
            std::fs::create_dir_all(dir.path().join(home)).unwrap();
        }
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/bash\nalice:x:1001:1001::/home/alice:/bin/bash\nbob:x:1002:1002::/home/bob:/bin/bash\n\
             svc:x:1003:1003::/srv/svc:/usr/sbin/nologin\ncarol:x:1004:1004::/home/carol:/bin/bash\nbig:x:70000:70000::/home/big:/bin/bash\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "").unwrap();
        let paths = SystemPaths::under(dir.path());
        let accounts = AccountsView::new(AccountSource::Files { passwd: paths.passwd(), group: paths.group() });
        let settings = crate::config::load_str(std::path::Path::new("c.toml"), "").unwrap().links;
        let names: Vec<String> = users_to_link(&settings, &accounts, &paths).into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["alice", "bob"], "svc has no shell, carol no home yet, big is over max_uid");
        let named =
            crate::config::load_str(std::path::Path::new("c.toml"), "[links]\nusers = [\"bob\", \"nobody-here\"]\n")
                .unwrap()
                .links;
        let names: Vec<String> = users_to_link(&named, &accounts, &paths).into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["bob"]);
    }
}
