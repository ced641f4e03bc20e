#!/usr/bin/env bash
# A real Kubernetes API server for the manifests' custom resources: k8s.io/apiextensions-apiserver built from
# Debian's Go source packages (golang-k8s-apiextensions-apiserver-dev and the -dev packages it depends on, built
# with Debian's Go toolchain, module proxy off), and etcd from Debian's etcd-server. Everything lands in DIR
# (default build/apiserver): the packages are downloaded and unpacked there with a private apt configuration,
# nothing is installed on the system. A second run with both binaries in place does nothing.
#
#   bash tests/apiserver/build.sh [DIR]      then  DIR/bin/apiextensions-apiserver, DIR/bin/etcd, DIR/versions.txt
#
# Debian's own mirror (the one this machine's apt uses) serves the packages; the source packages exist only in
# the unstable suite (they are newer than Debian 13), hence SUITE. Needs apt-get and dpkg-deb (Debian/Ubuntu).
set -euo pipefail
DIR="${1:-build/apiserver}"
SUITE="${APISERVER_SUITE:-sid}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
if [[ -x "$DIR/bin/apiextensions-apiserver" && -x "$DIR/bin/etcd" ]]; then
    echo "apiserver up to date: $DIR/bin"
    exit 0
fi
start=$(date +%s)
phase() { echo "[$(( $(date +%s) - start ))s] $*"; }

# The Debian archive this machine's apt already uses (its URI, from apt's own configuration), with SUITE.
MIRROR="$(apt-get indextargets --format '$(REPO_URI) $(LABEL)' 'Created-By: Packages' 2>/dev/null \
    | awk '$2 == "Debian" {print $1; exit}')"
[[ -n "$MIRROR" ]] || { echo "no Debian archive in this machine's apt sources" >&2; exit 1; }
APT="$DIR/apt"
rm -rf "$APT" "$DIR/root" "$DIR/gocache"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$DIR/bin"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $SUITE main" > "$APT/sources.list"
APT_OPTS=(-o "Dir::Etc::SourceList=$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o "Dir::Cache::archives=$APT/cache/archives"
    -o Debug::NoLocking=1 -o APT::Get::AllowUnauthenticated=false -o Acquire::Retries=3)
phase "apt: the $SUITE index"
apt-get "${APT_OPTS[@]}" -qq update
phase "apt: downloading golang-k8s-apiextensions-apiserver-dev, golang-go and etcd-server with their dependencies"
# --download-only against this machine's dpkg status: what the closure needs, into $APT/cache/archives only.
apt-get "${APT_OPTS[@]}" -qq install --download-only -y --no-install-recommends \
    golang-k8s-apiextensions-apiserver-dev golang-go etcd-server > "$APT/download.log"
phase "unpacking the Go toolchain, the Go sources and etcd ($(ls "$APT/cache/archives"/*.deb | wc -l) packages fetched)"
for deb in "$APT"/cache/archives/golang-*.deb "$APT"/cache/archives/etcd-server_*.deb; do
    dpkg-deb -x "$deb" "$DIR/root"
done
for name in golang-k8s-apiextensions-apiserver-dev golang-k8s-apiserver-dev golang-go etcd-server; do
    printf '%s %s\n' "$name" "$(dpkg-deb -f "$APT"/cache/archives/"${name}"_*.deb Version)"
done > "$DIR/versions.txt"
GOROOT="$(ls -d "$DIR"/root/usr/lib/go-* | sort -V | tail -1)"
phase "building k8s.io/apiextensions-apiserver with $("$GOROOT/bin/go" version) (GOPATH mode, no module proxy)"
env -i PATH="$GOROOT/bin:/usr/bin:/bin" HOME="$DIR" GOROOT="$GOROOT" GOPATH="$DIR/root/usr/share/gocode" \
    GO111MODULE=off GOPROXY=off GOTOOLCHAIN=local GOFLAGS= GOCACHE="$DIR/gocache" CGO_ENABLED=0 \
    go build -trimpath -o "$DIR/bin/apiextensions-apiserver" k8s.io/apiextensions-apiserver
cp "$DIR/root/usr/bin/etcd" "$DIR/bin/etcd"
rm -rf "$DIR/root" "$DIR/gocache" "$APT/cache"  # ~4 GB of sources and build cache; the binaries are all we need
phase "done: $DIR/bin ($(tr '\n' ';' < "$DIR/versions.txt"))"
