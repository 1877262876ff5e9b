#!/usr/bin/env bash
# Installs the Debian packages nodeagent needs to build, test and demo.
# A no-op (no apt-get call at all) when every package is already present.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config clang clang-format llvm
  capnproto libcapnp-dev libssl-dev liburing-dev libbpf-dev bpftool
  liblmdb-dev lmdb-utils libsodium-dev libjemalloc-dev libseccomp-dev libfuse3-dev
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  python3 nodejs ca-certificates iproute2 procps util-linux
  bubblewrap runc busybox-static hyperfine
  libnl-3-dev libnl-route-3-dev libnftables-dev nftables iperf3 dnsmasq-base openssl
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "installing missing packages: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
