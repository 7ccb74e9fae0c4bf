#!/usr/bin/env bash
# Make a PostgreSQL server answer on 127.0.0.1:5432 for the tests: install it from Debian if it is
# missing, allow password-less (trust) loopback connections on a cluster this script created, start it.
# Where none can be had, the PostgreSQL tests skip with a message that says how to point them at one.
set -u
ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
command -v pg_isready >/dev/null && ready && exit 0
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  bash "$(dirname "$0")/ensure-debian-packages.sh" postgresql
  for hba in /etc/postgresql/*/main/pg_hba.conf; do
    [ -f "$hba" ] || continue
    $sudo sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  done
fi
for version in $(ls /etc/postgresql 2>/dev/null); do
  $sudo pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || true
done
for _ in $(seq 20); do ready && exit 0; sleep 0.5; done
echo "warning: no PostgreSQL server on 127.0.0.1:5432; PostgreSQL tests will be skipped" >&2
exit 0
