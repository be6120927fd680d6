#!/usr/bin/env bash
# Removes namespaces and bridges left by namespace tests whose process is
# gone (the tests do this themselves before each setup; this is for hands).
# Only names with the harness's own prefixes are touched:
# namespaces ordo-ns-<pid>-<k>-<i> and bridges ob<pid>x<k>.
set -euo pipefail

alive() { [ -d "/proc/$1" ]; }

ip netns list 2>/dev/null | awk '{print $1}' | while read -r ns; do
    case "$ns" in
    ordo-ns-*)
        pid="${ns#ordo-ns-}"
        pid="${pid%%-*}"
        if [[ "$pid" =~ ^[0-9]+$ ]] && ! alive "$pid"; then
            echo "removing namespace $ns"
            ip netns del "$ns" || true
        fi
        ;;
    esac
done

ip -o link show type bridge 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | while read -r br; do
    if [[ "$br" =~ ^ob([0-9]+)x[0-9]+$ ]] && ! alive "${BASH_REMATCH[1]}"; then
        echo "removing bridge $br"
        ip link del "$br" || true
    fi
done
