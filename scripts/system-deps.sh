#!/usr/bin/env bash
# Install the Debian packages the tests and the demo need, when missing (apt-get; root only).
# The list is core's own plus each plugin's `needs` from plugins/catalog.toml.
# Safe to run again: it installs nothing when everything is present.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

# postgresql: the throwaway test cluster of tunnelmesh.testing.postgres (state store tests)
core_pkgs=(iproute2 nftables iputils-ping iperf3 ca-certificates gcc wireguard-go wireguard-tools coturn openssh-client dnsutils dnsperf dnsmasq-base tcpdump prometheus docker-compose postgresql)
mapfile -t plugin_pkgs < <(python3 - "$here/plugins/catalog.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    for p in tomllib.load(f).get("plugin", []):
        for pkg in p.get("needs", []):
            print(pkg)
PY
)

missing=()
for pkg in "${core_pkgs[@]}" "${plugin_pkgs[@]}"; do
  [[ -z "$pkg" ]] && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
  echo "system-deps: all present"
  exit 0
fi
# de-duplicate
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [[ $(id -u) -ne 0 ]]; then
  echo "system-deps: missing ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
  echo "system-deps: tests that need them will be skipped" >&2
  exit 0
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends keeps it small; services some packages ship (nginx, coturn) are not
# wanted running: policy-rc.d stops them from being started at install time.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' > $policy; chmod +x $policy; created_policy=1; fi
trap '[[ $created_policy == 1 ]] && rm -f $policy' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "system-deps: done"
