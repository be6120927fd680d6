#!/usr/bin/env bash
# Runs the network-namespace tests (broker/tests/netns_*.rs: loss, ordering
# under loss, failures: kills, restarts, partitions) as CI does:
# installs iproute2/nftables when missing, and makes a skip a failure
# (ORDO_NETNS_REQUIRED=1) so a green run means they really ran.
#
#   sudo scripts/netns-tests.sh [extra cargo test args]
#
# The tests create and always remove their own bridge and namespaces
# (named ordo-ns-<pid>-..., ob<pid>x<k>); scripts/netns-cleanup.sh sweeps
# leftovers of killed runs by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "netns-tests: must run as root (namespaces, bridges and nftables need it)" >&2
    exit 1
fi
if ! command -v ip >/dev/null || ! command -v nft >/dev/null; then
    echo "netns-tests: installing iproute2 and nftables" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 nftables >/dev/null
fi

export ORDO_NETNS_REQUIRED=1
# The failure tests check what `ordo sub --json` prints; `cargo test -p
# ordo-broker` alone does not build the client crate's binary.
cargo build -q -p ordo-client --bin ordo
mapfile -t tests < <(cd broker/tests && ls netns_*.rs *_netns.rs | sed 's/\.rs$//')
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
# Every namespace test runs even when an earlier binary failed.
exec cargo test -p ordo-broker --no-fail-fast "${args[@]}" "$@"
