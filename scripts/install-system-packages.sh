#!/usr/bin/env bash
# System packages gpuprune uses: Fashion-MNIST (real data for the demo and tests) and CLBlast
# (the dense OpenCL baseline the benchmarks compare against). Quick when already installed.
set -euo pipefail
PKGS=(dataset-fashion-mnist libclblast-dev)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "gpuprune setup: no apt-get here; install ${missing[*]} (or their equivalents) by hand" >&2
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "gpuprune setup: run 'sudo apt-get install ${missing[*]}' (needs root); continuing without" >&2
    exit 0
fi
echo "gpuprune setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
