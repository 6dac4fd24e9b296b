#!/usr/bin/env bash
# Installs what the RDMA addon needs to build and run, when missing (idempotent):
#   libibverbs-dev librdmacm-dev   headers and link libraries (build)
#   ibverbs-providers rdma-core    the user-space device drivers and udev rules (run)
#   g++ make (python3)             node-gyp's toolchain; libasan/libubsan come with g++
# Debian/Ubuntu only (apt-get). Not root and not in CI: prints what to install and exits 0 (the addon is
# optional); in CI (CI=true) a missing package it cannot install is an error.
set -euo pipefail

packages=(libibverbs-dev librdmacm-dev ibverbs-providers rdma-core g++ make)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# node-gyp runs Python: any python3 on PATH will do, else Debian's.
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -eq 0 ]; then
  echo "rdma deps: installed (${packages[*]})"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ]; then
  msg="rdma deps: missing ${missing[*]}; install them with apt-get as root to build the RDMA addon"
  if [ "${CI:-}" = "true" ]; then echo "$msg" >&2; exit 1; fi
  echo "$msg (skipped)"
  exit 0
fi
echo "rdma deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "rdma deps: installed ${missing[*]}"
