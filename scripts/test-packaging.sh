#!/usr/bin/env bash
# Packaging test (CI): release, Debian package, installer. Self-contained, loopback only.
#
#   bash scripts/test-packaging.sh
#
# 1. `scripts/release.sh v0.0.1-ci "…" --dry-run` on a temporary clone of HEAD, with a fast
#    cargo profile ($V2SP_RELEASE_PROFILE, default dev; the caller's CARGO_TARGET_DIR is reused,
#    default ./target): tarball contents, baked-in version, SHA256SUMS, changelog, no tag made.
# 2. The .deb: contents and conffiles; then, as root and only where no `v2sp` package or user
#    exists yet, `dpkg -i` (user, ownership, modes), reinstall keeps an edited conffile,
#    `systemd-analyze verify` of the installed units (where available), `dpkg -r` (config
#    kept), `dpkg --purge` (config, state and user gone).
# 3. The released install.sh, staged with DESTDIR (touches nothing of the system): from the
#    release served by a loopback `python3 -m http.server`, piped into bash with no arguments
#    (its baked-in URL), through `v2sp update`, from file://, a tampered tarball refused,
#    --uninstall; and
#    deploy/install.sh from the source checkout.
# Takes a few minutes on 2 cores (the clone's crates are compiled once in the dev profile).
set -Eeuo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
export V2SP_RELEASE_PROFILE=${V2SP_RELEASE_PROFILE:-dev}
tag=v0.0.1-ci
tmp=$(mktemp -d)
server_pid=
cleanup() {
    [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
fails=0
ok() { printf 'ok   %s\n' "$*"; }
bad() { printf 'FAIL %s\n' "$*"; fails=$((fails + 1)); }
check() { # description, command...
    local d=$1
    shift
    if "$@" >"$tmp/out" 2>&1; then ok "$d"; else bad "$d"; sed 's/^/     /' "$tmp/out" | tail -20; fi
}

# --- 1. release dry run on a clone -----------------------------------------------------------
git clone -q "$repo" "$tmp/clone"
git -C "$tmp/clone" checkout -q -B main
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
echo "release.sh --dry-run ($V2SP_RELEASE_PROFILE profile) in $tmp/clone"
if ! V2SP_RELEASE_URL=$url bash "$tmp/clone/scripts/release.sh" "$tag" "Packaging test" --dry-run \
    >"$tmp/release.log" 2>&1; then
    tail -40 "$tmp/release.log"
    echo "FAIL release.sh --dry-run"
    exit 1
fi
ok "release.sh --dry-run"
dist=$tmp/clone/dist/$tag
host=$(rustc -vV | sed -n 's/^host: //p')
tarball=v2sp-$tag-$host.tar.gz
check "tarball $tarball exists" test -f "$dist/$tarball"
tar -tzf "$dist/$tarball" | sed "s|^v2sp-$tag-$host/||" | sort >"$tmp/contents"
want="v2sp v2sp-dataplane README.md CHANGELOG.md deploy/install.sh deploy/v2sp.service
deploy/v2sp-dataplane.service deploy/v2sp.env deploy/config.example.json deploy/README.md
tuning/99-v2sp.conf tuning/README.md"
missing=
for f in $want; do grep -qx "$f" "$tmp/contents" || missing="$missing $f"; done
check "tarball holds binaries, units, env file, example config, sysctl file${missing:+ (missing:$missing)}" test -z "$missing"
check "SHA256SUMS verifies every file" bash -c "cd '$dist' && sha256sum -c --quiet SHA256SUMS"
check "SHA256SUMS lists tarball, .deb and install.sh" bash -c \
    "grep -q ' $tarball\$' '$dist/SHA256SUMS' && grep -q '\\.deb\$' '$dist/SHA256SUMS' && grep -q ' install.sh\$' '$dist/SHA256SUMS'"
check "CHANGELOG has the notes and the commits" bash -c \
    "grep -q 'Packaging test' '$dist/CHANGELOG.md' && grep -q \"$(git -C "$repo" log -1 --format=%h)\" '$dist/CHANGELOG.md'"
mkdir -p "$tmp/x"
tar -xzf "$dist/$tarball" -C "$tmp/x"
check "released binary prints the tag's version" bash -c \
    "'$tmp/x/v2sp-$tag-$host/v2sp' version | head -1 | grep -qx 'v2sp ${tag#v}'"
check "dry run created no tag" bash -c "[ -z \"\$(git -C '$tmp/clone' tag)\" ]"
check "dry run says what it would push" grep -q "would run: git push origin $tag" "$tmp/release.log"
check "release install.sh has the release URL baked in" grep -qx "DEFAULT_RELEASE_URL=$url" "$dist/install.sh"
check "a dirty tree is refused" bash -c \
    "cd '$tmp/clone' && touch dirty && ! bash scripts/release.sh v0.0.2 x --dry-run >/dev/null 2>&1; rc=\$?; rm -f dirty; exit \$rc"

# --- 2. Debian package ---------------------------------------------------------------------
deb=$(ls "$dist"/v2sp_*.deb 2>/dev/null | head -1 || true)
if [ -z "$deb" ]; then
    bad "no .deb built (dpkg-deb missing?)"
else
    dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' >"$tmp/deb-contents"
    missing=
    for f in /usr/bin/v2sp /usr/bin/v2sp-dataplane /usr/lib/systemd/system/v2sp.service \
        /usr/lib/systemd/system/v2sp-dataplane.service /etc/v2sp/config.json /etc/v2sp/v2sp.env \
        /etc/sysctl.d/99-v2sp.conf; do
        grep -qx "$f" "$tmp/deb-contents" || missing="$missing $f"
    done
    check ".deb holds binaries, units, config, sysctl file${missing:+ (missing:$missing)}" test -z "$missing"
    dpkg-deb -e "$deb" "$tmp/DEBIAN"
    check ".deb marks the config files as conffiles" bash -c \
        "grep -qx /etc/v2sp/config.json '$tmp/DEBIAN/conffiles' && grep -qx /etc/sysctl.d/99-v2sp.conf '$tmp/DEBIAN/conffiles'"
    check ".deb units start /usr/bin binaries" bash -c \
        "dpkg-deb --fsys-tarfile '$deb' | tar -xO ./usr/lib/systemd/system/v2sp-dataplane.service | grep -q '^ExecStart=/usr/bin/v2sp-dataplane '"
    if [ "$(id -u)" != 0 ]; then
        echo "skip dpkg -i/-r/--purge: not root"
    elif dpkg -s v2sp >/dev/null 2>&1 || getent passwd v2sp >/dev/null; then
        echo "skip dpkg -i/-r/--purge: a v2sp package or user exists on this machine already"
    else
        # The package's sysctl settings are not applied to the CI machine.
        export V2SP_NO_SYSCTL=1
        check "dpkg -i" dpkg -i "$deb"
        check "postinst created the system user v2sp" bash -c "getent passwd v2sp | grep -q nologin"
        check "/etc/v2sp/config.json is 0600 and owned by v2sp" bash -c \
            "[ \"\$(stat -c '%a %U' /etc/v2sp/config.json)\" = '600 v2sp' ]"
        check "/var/lib/v2sp exists for v2sp" bash -c "[ \"\$(stat -c %U /var/lib/v2sp)\" = v2sp ]"
        check "installed v2sp runs" /usr/bin/v2sp version
        echo '// edited by the operator' >>/etc/v2sp/config.json
        check "reinstall (dpkg -i again)" dpkg -i --force-confold "$deb"
        check "reinstall kept the edited conffile" grep -q 'edited by the operator' /etc/v2sp/config.json
        if command -v systemd-analyze >/dev/null; then
            check "systemd-analyze verify of both units" systemd-analyze verify \
                /usr/lib/systemd/system/v2sp.service /usr/lib/systemd/system/v2sp-dataplane.service
        else
            echo "skip systemd-analyze verify: not installed"
        fi
        check "dpkg -r" dpkg -r v2sp
        check "remove deleted the binaries" test ! -e /usr/bin/v2sp
        check "remove kept the config" test -f /etc/v2sp/config.json
        check "dpkg --purge" dpkg --purge v2sp
        check "purge deleted /etc/v2sp and /var/lib/v2sp" bash -c "[ ! -e /etc/v2sp ] && [ ! -e /var/lib/v2sp ]"
        check "purge deleted the user" bash -c "! getent passwd v2sp"
    fi
fi

# --- 3. install.sh -------------------------------------------------------------------------
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$dist" >"$tmp/http.log" 2>&1 &
server_pid=$!
for _ in $(seq 50); do
    curl -fsS -o /dev/null "$url/SHA256SUMS" 2>/dev/null && break
    sleep 0.1
done
stage=$tmp/stage-http
check "install.sh --from $url (DESTDIR)" env DESTDIR="$stage" bash "$dist/install.sh" --from "$url"
check "  installed binaries, units, config, env file, sysctl file" bash -c \
    "cd '$stage' && test -x usr/local/bin/v2sp && test -x usr/local/bin/v2sp-dataplane && \
     test -f etc/systemd/system/v2sp.service && test -f etc/systemd/system/v2sp-dataplane.service && \
     test -f etc/v2sp/config.json && test -f etc/v2sp/v2sp.env && test -f etc/sysctl.d/99-v2sp.conf && \
     test -x usr/local/share/v2sp/install.sh"
check "  the installed binary is the release's" bash -c "'$stage/usr/local/bin/v2sp' version | grep -qx 'v2sp ${tag#v}'"
mkdir -p "$tmp/nowhere"
stage=$tmp/stage-pipe
check "curl URL/install.sh | bash (no arguments: its baked-in release URL)" bash -c \
    "cd '$tmp/nowhere' && curl -fsSL '$url/install.sh' | DESTDIR='$stage' bash"
check "  installed" test -x "$stage/usr/local/bin/v2sp-dataplane"
stage=$tmp/stage-update
check "v2sp update --from URL (DESTDIR)" env DESTDIR="$stage" "$tmp/x/v2sp-$tag-$host/v2sp" update --from "$url"
check "  installed" test -x "$stage/usr/local/bin/v2sp"
stage=$tmp/stage-file
check "install.sh --from file://" env DESTDIR="$stage" bash "$dist/install.sh" --from "file://$dist"
check "  installed" test -x "$stage/usr/local/bin/v2sp"
mkdir -p "$tmp/tampered"
cp "$dist/SHA256SUMS" "$dist/install.sh" "$tmp/tampered/"
cp "$dist/$tarball" "$tmp/tampered/"
printf 'x' >>"$tmp/tampered/$tarball"
stage=$tmp/stage-tampered
check "a tarball that does not match SHA256SUMS is refused" bash -c \
    "! DESTDIR='$stage' bash '$dist/install.sh' --from 'file://$tmp/tampered' >'$tmp/tampered.log' 2>&1 && \
     grep -q 'does not match' '$tmp/tampered.log' && test ! -e '$stage/usr/local/bin/v2sp'"
stage=$tmp/stage-http
check "installed install.sh --uninstall" env DESTDIR="$stage" bash "$stage/usr/local/share/v2sp/install.sh" --uninstall
check "  removed binaries and units, kept the config" bash -c \
    "cd '$stage' && test ! -e usr/local/bin/v2sp && test ! -e etc/systemd/system/v2sp.service && test -f etc/v2sp/config.json"
stage=$tmp/stage-src
check "deploy/install.sh from the source checkout (DESTDIR)" env DESTDIR="$stage" \
    bash "$tmp/clone/deploy/install.sh" "$tmp/x/v2sp-$tag-$host"
check "  installed" test -x "$stage/usr/local/bin/v2sp"

if [ "$fails" != 0 ]; then
    echo "test-packaging: $fails FAILED"
    exit 1
fi
echo "test-packaging: all passed"
