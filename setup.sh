#!/usr/bin/env bash
# One command sets up a Debian 12 machine that has the .NET SDK: system packages, the Python
# environment (.venv), the Rust and .NET dependencies, then builds all six languages. (Starting a
# Docker engine is `invoke docker.up`, for the container runner.)
# Running it again is harmless: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")"
say() { printf '\n== %s\n' "$*"; }

# --- system packages ---------------------------------------------------------------------------
packages=(build-essential pkg-config libzmq3-dev libczmq-dev libjansson-dev python3-venv
          docker.io debootstrap  # the container runner: an engine, and an offline base image
          docker-registry  # the swarm runner's --registry, tested against a registry of the tests' own
          chromium fonts-noto-color-emoji)  # the desk page's browser tests (the chat's 🌍 included)
command -v cargo >/dev/null || packages+=(cargo)  # a toolchain from rustup is used when present
command -v npm >/dev/null || packages+=(nodejs npm)  # the browser driver (Playwright's core)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "$@"
}
if [ ${#missing[@]} -gt 0 ]; then
  say "installing system packages: ${missing[*]}"
  apt_install "${missing[@]}"
fi
command -v dotnet >/dev/null || { echo "setup.sh: the .NET SDK (dotnet) must be on PATH: https://dot.net" >&2; exit 1; }

# --- Python: the orchestrator and the Python roles ---------------------------------------------
say "Python environment in .venv"
[ -x .venv/bin/python ] || python3 -m venv .venv
# Offline machines carry a wheelhouse beside the checkout; with internet, pip uses PyPI as usual.
if [ -d ../shared/wheels ]; then
  export PIP_FIND_LINKS="$(cd ../shared/wheels && pwd)${PIP_FIND_LINKS:+ $PIP_FIND_LINKS}" PIP_NO_INDEX=1
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt

# --- Rust: crates from crates.io, or from Debian's packaged crates when it is unreachable --------
say "Rust dependencies"
if [ ! -f .cargo/config.toml ] && ! timeout 120 cargo fetch -q --manifest-path rust/Cargo.toml 2>/dev/null; then
  echo "crates.io is unreachable: using Debian's packaged crates (/usr/share/cargo/registry)"
  crates=(librust-zmq-dev librust-clap-dev librust-clap-derive-dev librust-serde-json-dev librust-ctrlc-dev)
  apt_install "${crates[@]}"
  # An untracked source replacement at the top of the checkout: every cargo run in the tree
  # reads it, and nothing tracked changes. Delete .cargo/ to go back to crates.io.
  mkdir -p .cargo
  cat > .cargo/config.toml <<'TOML'
# Written by setup.sh because crates.io was unreachable. Delete this folder to use crates.io.
[source.crates-io]
replace-with = "debian"

[source.debian]
directory = "/usr/share/cargo/registry"
TOML
  rm -f rust/Cargo.lock  # a lock file from crates.io would not match the replaced source
fi

# --- .NET: NetMQ and the parsers come from NuGet ------------------------------------------------
say ".NET packages"
for project in csharp fsharp vb; do
  dotnet restore "$project" --use-current-runtime --nologo -v quiet  # publish (invoke build) names the runtime: its ReadyToRun compiler comes with it
done

# --- the browser driver: Playwright's core from npm, pinned by package-lock.json -----------------
say "browser driver (node_modules)"
# Its own browser download is not wanted (the tests drive Debian's chromium): the core package has none.
npm ci --no-audit --no-fund --loglevel=error

# --- build all six -----------------------------------------------------------------------------
say "building every language"
.venv/bin/invoke build
