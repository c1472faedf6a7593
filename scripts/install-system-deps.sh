#!/usr/bin/env bash
# System packages the aarch64 path needs (Debian/Ubuntu): the cross compiler that links aarch64
# bundles and qemu-user that runs them (emulate, verify --native). llvm gives llvm-mca for the
# ARM kernel analysis of the benchmark. Skipped, with a note, where they are present or apt is absent.
set -euo pipefail
need=()
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
command -v llvm-mca >/dev/null || need+=(llvm)
if [ ${#need[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "system packages: no apt-get; install ${need[*]} yourself (the aarch64 tests skip without them)" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "system packages: installing ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
