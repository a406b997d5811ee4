# The same people on every VM (#28), sourced by pool-agent-check: a directory
# user known only through NSS, the pool's registry made real by the agent
# (ids, keys, a lock that ends a running session), and the pool's own check
# that a user has the same ids on every VM. Boots 3 and 4 are one VM of the
# pool (pool-vm-0); boot 5, the prepared image's first boot, is another
# (pool-vm-1) on the same NFS export.

ssh_options=(-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=20)

ssh_as() { # ssh_as USER COMMAND: root's key, as every test user accepts it
  ssh "${ssh_options[@]}" "$1@127.0.0.1" "$2" < /dev/null
}

ssh_held() { # ssh_held USER SECONDS LOG: a login with a terminal held open in the background
  ssh -tt "${ssh_options[@]}" "$1@127.0.0.1" "sleep $2" < /dev/null > "$3" 2>&1 &
}

still_running() { ps -o stat= -p "$1" 2>/dev/null | grep -q '^[^Z]'; }

logind_sessions_of() { # logind_sessions_of USER: how many sessions logind holds for USER
  loginctl list-sessions --no-legend | awk -v u="$1" '$3 == u' | grep -c .
}

check_directory_user_first_login() { # slapd + nslcd: no local account, no home; her first SSH login makes the home, the link follows
  local name=directory-user-linked-at-first-login entry
  entry=$(getent passwd lena)
  if [ "$(cut -d: -f3 <<<"$entry")" != 3001 ] || grep -q '^lena:' /etc/passwd || [ -e /home/lena ]; then
    check fail "$name" "before her login: getent '$entry', $(grep -c '^lena:' /etc/passwd) line(s) in /etc/passwd, home: $(ls -d /home/lena 2>&1)"
    return
  fi
  local times=/tmp/pool-agent-check-lena.times
  rm -f "$times"
  # Watches for the home (made by pam_mkhomedir) and then the link, 20 ms apart.
  ( home=0; until=$(( $(date +%s) + 60 ))
    while [ "$(date +%s)" -lt "$until" ]; do
      [ "$home" = 0 ] && [ -d /home/lena ] && home=$(date +%s%N)
      if [ "$home" != 0 ] && link_is /home/lena/notebooks/remote "$mount_point/notebooks/lena"; then
        echo "$home $(date +%s%N)" > "$times"; exit 0
      fi
      sleep 0.02
    done
    echo "$home 0" > "$times" ) &
  local watcher=$!
  local said
  said=$(ssh_as lena 'echo "uid=$(id -u) home=$HOME"' 2>&1)
  wait "$watcher"
  local home_ns link_ns elapsed=""
  read -r home_ns link_ns < "$times"
  [ "$link_ns" != 0 ] && elapsed=$(awk "BEGIN{printf \"%.2f\", ($link_ns - $home_ns) / 1e9}")
  # Bound loose under TCG emulation, as for useradd (the figure is reported).
  if [ -n "$elapsed" ] && awk "BEGIN{exit !($elapsed <= 5.0)}" && grep -q 'uid=3001 home=/home/lena' <<<"$said" \
      && [ "$(stat -c '%u %a' "$mount_point/notebooks/lena")" = "3001 700" ]; then
    check pass "$name" "lena (uid 3001 from LDAP through nslcd, not in /etc/passwd) linked ${elapsed}s after pam_mkhomedir made her home at her first SSH login; folder $(stat -c '%u:%g %a' "$mount_point/notebooks/lena")"
  else
    check fail "$name" "ssh said '$said'; home at $home_ns, link at $link_ns; link '$(readlink /home/lena/notebooks/remote 2>&1)'; $(pool-agent links 2>&1 | grep -A1 lena | head -2)"
  fi
}

registry_dropin() { # registry_dropin FRANK_ENABLED: erin and frank in the pool's registry, root's key for both
  local key
  key=$(cat /root/.ssh/id_ed25519.pub)
  cat > /etc/pool-agent/config.d/30-users.toml <<EOF
[users]
manage = true

[[users.accounts]]
name = "erin"
uid = 2001
ssh_keys = ["$key"]

[[users.accounts]]
name = "frank"
uid = 2002
ssh_keys = ["$key"]
enabled = $1
EOF
}

passwd_ids() { getent passwd "$1" | cut -d: -f3,4; }

check_registry_users_created() { # boot 3: the registry in a drop-in and a reload; the users exist with those ids, keys work, a file on NFS is hers
  local name=registry-users-created-with-their-ids
  capability "$name" users || return
  registry_dropin true
  systemctl reload pool-agentd
  wait_for 60 bash -c '[ "$(getent passwd erin | cut -d: -f3,4)" = 2001:2001 ] && [ "$(getent passwd frank | cut -d: -f3,4)" = 2002:2002 ]' || true
  local keys said
  keys=$(stat -c '%U %a' /home/erin/.ssh/authorized_keys 2>&1)
  # Her first login writes through her link: the file on the NFS export is uid 2001's.
  wait_for 30 link_is /home/erin/notebooks/remote "$mount_point/notebooks/erin" || true
  said=$(ssh_as erin 'echo "written on $(hostname) by $(id -un)" > ~/notebooks/remote/from-pool-vm-0.txt && id -u' 2>&1)
  local owner
  owner=$(stat -c %u /srv/nfs/notebooks/erin/from-pool-vm-0.txt 2>&1)
  api users
  local states
  states=$(jq -r '[.accounts[]? | "\(.name)=\(.state)"] | join(" ")' <<<"$answer" 2>/dev/null)
  if [ "$(passwd_ids erin)" = 2001:2001 ] && [ "$(passwd_ids frank)" = 2002:2002 ] && [ "$keys" = "erin 600" ] \
      && [ "$said" = 2001 ] && [ "$owner" = 2001 ]; then
    check pass "$name" "erin $(passwd_ids erin), frank $(passwd_ids frank) after a reload; erin's key $keys, her SSH login wrote a file the NFS server gives to uid $owner; pool-agent users: $states"
  else
    check fail "$name" "erin '$(passwd_ids erin)', frank '$(passwd_ids frank)', key '$keys', ssh '$said', file owner '$owner'; users: $states $(head -c 300 <<<"$answer")"
  fi
}

check_registry_lock_ends_session() { # boot 3: frank disabled while logged in: locked, his session ended by logind, a new login refused
  local name=registry-disabled-user-locked-and-session-ended
  ssh_held frank 300 /tmp/pool-agent-check-frank.log
  local client=$!
  frank_in() { [ "$(logind_sessions_of frank)" -gt 0 ]; }
  frank_out() { [ "$(logind_sessions_of frank)" = 0 ] && ! still_running "$client"; }
  if ! wait_for 30 frank_in; then
    check fail "$name" "frank's SSH session never reached logind: $(tail -3 /tmp/pool-agent-check-frank.log | paste -sd'|' -)"
    kill "$client" 2>/dev/null; return
  fi
  local began ended_in=""
  began=$(date +%s%N)
  registry_dropin false
  systemctl reload pool-agentd
  wait_for 60 frank_out && ended_in=$(seconds_since "$began")
  local locked again
  locked=$(passwd -S frank | awk '{print $2}')
  again=$(ssh_as frank 'echo in' 2>&1)
  if [ -n "$ended_in" ] && [ "$locked" = L ] && [ "$again" != in ]; then
    check pass "$name" "his running SSH session ended ${ended_in}s after the reload; passwd -S: $locked; a new login: $(tail -1 <<<"$again")"
  else
    check fail "$name" "session ended: '${ended_in:-no}', logind sessions $(logind_sessions_of frank), passwd -S '$locked', new login '$again'; $(pool-agent users 2>&1 | grep frank)"
  fi
  kill "$client" 2>/dev/null
}

check_hand_made_user_recorded() { # boot 4, before capture: dana, made by hand with uid 2003, logged in; the pool's record on the share says so
  local name=pool-records-a-hand-made-user
  groupadd -g 2003 dana
  useradd -m -s /bin/bash -u 2003 -g 2003 dana
  install -d -m 0700 -o dana -g dana /home/dana/.ssh
  install -m 0600 -o dana -g dana /root/.ssh/id_ed25519.pub /home/dana/.ssh/authorized_keys
  # The session stays until --prepare-image stops the agent: its last record keeps her.
  ssh_held dana 3600 /tmp/pool-agent-check-dana.log
  local record=/srv/nfs/.pool-agent/vms/pool-vm-0.json
  if wait_for 60 bash -c "jq -e '.users[]? | select(.name == \"dana\" and .uid == 2003)' $record >/dev/null 2>&1"; then
    check pass "$name" "$record: $(jq -c '[.users[] | {name, uid, gid, sessions}]' "$record")"
  else
    check fail "$name" "$(head -c 400 "$record" 2>&1); ssh: $(tail -2 /tmp/pool-agent-check-dana.log | paste -sd'|' -)"
  fi
}

as_a_new_vm_of_the_pool() { # boot 4, after --prepare-image: what another VM of the pool would have
  # Another instance name; the registry's users not made yet (the agent makes
  # them); dana made by hand again, with another uid.
  printf '[instance]\nname = "pool-vm-1"\n' > /etc/pool-agent/config.d/10-another-vm.toml
  # dana's session from before capture still runs: userdel refuses a user in use.
  pkill -KILL -u dana 2>/dev/null
  wait_for 10 bash -c '! pgrep -u dana >/dev/null'
  userdel -r erin 2>/dev/null; userdel -r frank 2>/dev/null; userdel -r dana 2>/dev/null
  groupadd -g 2004 dana
  useradd -m -s /bin/bash -u 2004 -g 2004 dana
  install -d -m 0700 -o dana -g dana /home/dana/.ssh
  install -m 0600 -o dana -g dana /root/.ssh/id_ed25519.pub /home/dana/.ssh/authorized_keys
}

check_registry_same_ids_on_another_vm() { # boot 5: the registry gives erin the same ids here; her file from pool-vm-0 is hers
  local name=registry-same-ids-on-another-vm file="$mount_point/notebooks/erin/from-pool-vm-0.txt"
  wait_for 60 bash -c '[ "$(getent passwd erin | cut -d: -f3,4)" = 2001:2001 ]' || true
  wait_for 30 link_is /home/erin/notebooks/remote "$mount_point/notebooks/erin" || true
  local said
  said=$(ssh_as erin "stat -c '%U %u' ~/notebooks/remote/from-pool-vm-0.txt && cat ~/notebooks/remote/from-pool-vm-0.txt" 2>&1)
  if [ "$(passwd_ids erin)" = 2001:2001 ] && [ "$(head -1 <<<"$said")" = "erin 2001" ] && grep -q 'written on' <<<"$said"; then
    check pass "$name" "erin made again by the agent as $(passwd_ids erin); the file she wrote on pool-vm-0, read by her here: $(paste -sd' ' <<<"$said")"
  else
    check fail "$name" "erin '$(passwd_ids erin)'; ssh as erin: $(paste -sd'|' <<<"$said"); $(stat -c '%U %u' "$file" 2>&1)"
  fi
}

check_pool_names_differing_ids() { # boot 5: dana has uid 2004 here, 2003 on pool-vm-0: the pool check names her, both VMs and ids
  local name=pool-names-a-user-with-other-ids-on-another-vm
  capability "$name" pool || return
  ssh_held dana 120 /tmp/pool-agent-check-dana.log
  local client=$! out=""
  found() { out=$(pool-agent pool 2>&1); grep -q 'ids differ: dana has different ids' <<<"$out"; }
  # Sessions are sampled, the record renewed, the others read at most every 30 s when asked.
  wait_for 90 found
  local conflict
  conflict=$(grep 'ids differ' <<<"$out")
  # On NFS her folder says so too: made by pool-vm-0's dana (2003), refused to this VM's (2004).
  local folder
  folder=$(pool-agent links 2>&1 | grep -o 'notebooks/dana on the share belongs to uid 2003, not 2004[^;]*' | head -1)
  if grep -q 'pool-vm-0 2003:2003' <<<"$conflict" && grep -q 'pool-vm-1 2004:2004' <<<"$conflict" && [ -n "$folder" ]; then
    check pass "$name" "pool-agent pool: $conflict; pool-agent links: $folder"
  else
    check fail "$name" "dana here: $(getent passwd dana | cut -d: -f3,4); links: '${folder}' $(pool-agent links 2>&1 | grep dana | head -2 | paste -sd'|' -); $(paste -sd'|' <<<"$out" | cut -c1-600)"
  fi
  kill "$client" 2>/dev/null
}
