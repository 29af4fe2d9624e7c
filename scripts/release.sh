#!/usr/bin/env bash
# Cuts a release, as the Go v2sp's scripts/release.sh does, plus the artifacts:
#
#   scripts/release.sh v1.0.2 "Short release notes" [--dry-run]
#
# 1. Checks: version looks like vX.Y.Z[-pre], the work tree is clean, HEAD is on main, the tag
#    does not exist yet.
# 2. Builds both binaries (`cargo build --locked --profile $V2SP_RELEASE_PROFILE`, default
#    release) for each target in $V2SP_RELEASE_TARGETS (default: this machine's), with the tag
#    baked in (`v2sp version` prints it).
# 3. Writes dist/vX.Y.Z/:
#      v2sp-vX.Y.Z-<target>.tar.gz   v2sp-vX.Y.Z-<target>/{v2sp,v2sp-dataplane,README.md,
#                                    CHANGELOG.md,deploy/{install.sh,*.service,v2sp.env,
#                                    config.example.json,README.md},tuning/{99-v2sp.conf,README.md}}
#      v2sp_X.Y.Z_<arch>.deb         Debian package (scripts/build-deb.sh), Linux targets only
#      install.sh                    deploy/install.sh with this release's download URL filled in
#      CHANGELOG.md                  notes + the commits since the previous tag
#      SHA256SUMS                    of all the above
# 4. Pushes main, creates the annotated tag, pushes it, and creates the GitHub release with the
#    files above when the `gh` CLI is installed (otherwise prints what to upload).
#
# --dry-run does 1-3 and only prints what 4 would run (no push, no tag, no release).
#
# Environment:
#   V2SP_RELEASE_PROFILE   cargo profile (default release: fat LTO, slow). CI's dry run uses
#                          dev, which reuses the test build.
#   V2SP_RELEASE_TARGETS   space-separated target triples (default: the host's)
#   V2SP_RELEASE_REMOTE    git remote (default origin)
#   V2SP_RELEASE_URL       base URL the release's files are downloaded from (default, for a
#                          GitHub remote: https://github.com/OWNER/REPO/releases/download/TAG)
#   CARGO_TARGET_DIR       as usual
set -Eeuo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
cd "$repo"

log() { printf 'release: %s\n' "$*"; }
die() { printf 'release: error: %s\n' "$*" >&2; exit 1; }

dry=0
args=()
for a in "$@"; do
    case $a in
        --dry-run) dry=1 ;;
        -h | --help) sed -n '2,35p' "$0"; exit 0 ;;
        *) args+=("$a") ;;
    esac
done
[ "${#args[@]}" -ge 1 ] || die "usage: $0 vX.Y.Z \"release notes\" [--dry-run]"
tag=${args[0]}
notes=${args[1]:-}
[[ $tag =~ ^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$ ]] || die "version must look like v1.2.3 (got $tag)"
version=${tag#v}
profile=${V2SP_RELEASE_PROFILE:-release}
remote=${V2SP_RELEASE_REMOTE:-origin}
host=$(rustc -vV | sed -n 's/^host: //p')
targets=${V2SP_RELEASE_TARGETS:-$host}

# --- 1. checks --------------------------------------------------------------------------------
[ -z "$(git status --porcelain)" ] || die "the work tree is not clean (commit or stash first):
$(git status --short)"
branch=$(git rev-parse --abbrev-ref HEAD)
if [ "$branch" != main ]; then
    [ "$dry" = 1 ] || die "releases are cut from main (HEAD is on $branch)"
    log "warning: HEAD is on $branch, not main (allowed in --dry-run)"
fi
if git rev-parse -q --verify "refs/tags/$tag" >/dev/null; then
    die "tag $tag exists already"
fi
prev=$(git describe --tags --abbrev=0 2>/dev/null || true)

# --- changelog --------------------------------------------------------------------------------
dist=$repo/dist/$tag
rm -rf "$dist"
mkdir -p "$dist"
{
    printf '## %s (%s)\n\n' "$tag" "$(date -u +%Y-%m-%d)"
    [ -z "$notes" ] || printf '%s\n\n' "$notes"
    if [ -n "$prev" ]; then
        printf '### Changes since %s\n\n' "$prev"
        range=$prev..HEAD
    else
        printf '### Changes\n\n'
        range=HEAD
    fi
    git log --no-merges --format='- %s (%h)' "$range"
} >"$dist/CHANGELOG.md"
log "changelog: $(grep -c '^- ' "$dist/CHANGELOG.md" || true) commits since ${prev:-the beginning}"

# --- download URL for install.sh ---------------------------------------------------------------
# base_url: this release's files; latest_url: whatever release is newest (baked into the
# published install.sh and into `v2sp update`, so both always fetch the newest release).
base_url=${V2SP_RELEASE_URL:-}
latest_url=${V2SP_RELEASE_URL:-}
if [ -z "$base_url" ]; then
    origin_url=$(git remote get-url "$remote" 2>/dev/null || true)
    if [[ $origin_url =~ github\.com[:/]([^/]+)/([^/]+)$ ]]; then
        gh_repo=https://github.com/${BASH_REMATCH[1]}/${BASH_REMATCH[2]%.git}
        base_url=$gh_repo/releases/download/$tag
        latest_url=$gh_repo/releases/latest/download
    fi
fi

# --- 2. build -----------------------------------------------------------------------------------
target_root=${CARGO_TARGET_DIR:-$repo/target}
case $profile in
    dev | test) profile_dir=debug ;;
    release | bench) profile_dir=$profile ;;
    *) profile_dir=$profile ;;
esac
for t in $targets; do
    # The host's build goes to target/<profile> (no --target), so a dev dry run reuses the
    # test build; other triples to target/<triple>/<profile>.
    target_args=()
    bins=$target_root/$profile_dir
    if [ "$t" != "$host" ]; then
        target_args=(--target "$t")
        bins=$target_root/$t/$profile_dir
    fi
    log "building $t ($profile profile)"
    V2SP_BUILD_VERSION=$version V2SP_BUILD_RELEASE_URL=$latest_url cargo build --locked --profile "$profile" "${target_args[@]}" \
        -p v2sp-control -p v2sp-dataplane --bin v2sp --bin v2sp-dataplane
    got=$("$bins/v2sp" version 2>/dev/null | head -1 || true)
    if [ "$t" = "$host" ] && [ "$got" != "v2sp $version" ]; then
        die "built v2sp says '$got', expected 'v2sp $version'"
    fi

    # --- 3. tarball ---------------------------------------------------------------------------
    name=v2sp-$tag-$t
    stage=$(mktemp -d)
    d=$stage/$name
    install -d "$d/deploy" "$d/tuning"
    install -m 0755 "$bins/v2sp" "$bins/v2sp-dataplane" "$d/"
    install -m 0755 deploy/install.sh "$d/deploy/"
    install -m 0644 deploy/v2sp.service deploy/v2sp-dataplane.service deploy/v2sp.env \
        deploy/config.example.json deploy/README.md "$d/deploy/"
    install -m 0644 tuning/99-v2sp.conf tuning/README.md "$d/tuning/"
    install -m 0644 README.md "$dist/CHANGELOG.md" "$d/"
    # Reproducible archive: fixed owner, mtime of the release commit, sorted names.
    mtime=$(git log -1 --format=%ct)
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
        -C "$stage" -czf "$dist/$name.tar.gz" "$name"
    rm -rf "$stage"
    log "wrote $dist/$name.tar.gz"

    case $t in
        x86_64-*-linux-*) arch=amd64 ;;
        aarch64-*-linux-*) arch=arm64 ;;
        *) arch= ;;
    esac
    if [ -n "$arch" ] && command -v dpkg-deb >/dev/null; then
        deb=$("$here/build-deb.sh" --version "$version" --bin-dir "$bins" --arch "$arch" --out "$dist")
        log "wrote $deb"
    fi
done

# install.sh as a release asset: the one-liner downloads it, it downloads the tarball from the
# same release and checks it against SHA256SUMS.
sed "s|^DEFAULT_RELEASE_URL=.*|DEFAULT_RELEASE_URL=${latest_url}|" deploy/install.sh >"$dist/install.sh"
chmod 0755 "$dist/install.sh"
(
    cd "$dist"
    shopt -s nullglob
    sha256sum -- *.tar.gz *.deb install.sh CHANGELOG.md >SHA256SUMS
)
log "wrote $dist/SHA256SUMS"

# --- 4. publish ---------------------------------------------------------------------------------
shopt -s nullglob
files=("$dist"/*.tar.gz "$dist"/*.deb "$dist"/install.sh "$dist"/SHA256SUMS)
shopt -u nullglob
run() {
    if [ "$dry" = 1 ]; then
        log "dry run, would run: $*"
    else
        log "+ $*"
        "$@"
    fi
}
run git push "$remote" main
run git tag -a "$tag" -m "v2sp $tag" -m "${notes:-release $tag}"
run git push "$remote" "$tag"
if command -v gh >/dev/null; then
    run gh release create "$tag" --title "v2sp $tag" --notes-file "$dist/CHANGELOG.md" "${files[@]}"
else
    log "gh (GitHub CLI) not installed: create the release $tag by hand and upload:"
    printf '  %s\n' "${files[@]}"
fi
if [ -n "$latest_url" ]; then
    log "one-line install: curl -fsSL ${latest_url}/install.sh | sudo bash"
fi
if [ "$dry" = 1 ]; then log "dry run done: $dist"; else log "released $tag: $dist"; fi
