#!/usr/bin/env bash
# System packages the aarch64 path needs (Debian/Ubuntu): the cross compiler that links aarch64
# bundles and qemu-user that runs them (emulate, verify --native). llvm gives llvm-mca and llvm-mc
# for `bench --arm`. Skipped, with a note, where they are present or apt is absent. Then builds the
# qemu TCG plugin `bench --arm` counts basic blocks with (targets/native/tb_count.c) into the cache
# the benchmark reads (the benchmark also builds it on first use).
set -euo pipefail
need=()
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
command -v llvm-mca >/dev/null || need+=(llvm)
command -v gcc >/dev/null || need+=(gcc)
if [ ${#need[@]} -eq 0 ]; then
  echo "system packages: all present"
elif ! command -v apt-get >/dev/null; then
  echo "system packages: no apt-get; install ${need[*]} yourself (the aarch64 tests skip without them)" >&2
else
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "system packages: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

src="$(cd "$(dirname "$0")/.." && pwd)/targets/native/tb_count.c"
out="${BHVIT_CACHE:-$HOME/.cache/bhvit-export}/native"
if command -v gcc >/dev/null; then
  mkdir -p "$out"
  gcc -O2 -shared -fPIC -Wall "$src" -o "$out/.libtb_count.so.$$"
  mv "$out/.libtb_count.so.$$" "$out/libtb_count.so"
  sha256sum "$src" | cut -d' ' -f1 > "$out/libtb_count.so.sha256"
  echo "qemu block-count plugin: $out/libtb_count.so"
else
  echo "qemu block-count plugin: no gcc; bench --arm builds it on first use" >&2
fi
