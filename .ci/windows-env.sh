# Sourced by .ci/windows-check and .ci/wine-test: makes sure the Windows cross toolchain is there
# (idempotent) and sets up the variables both scripts use. Not run on its own.
#
# After sourcing:
#   WIN_TARGET          x86_64-pc-windows-gnu
#   CARGO_TARGET_DIR    $WIN_TARGET_DIR if set, else target/windows (rustup toolchain) or
#                       target/windows-debian (fallback): the Linux build's artifacts are left alone
#   WIN_CARGO           array: the cargo command line to use (fallback adds -Zbuild-std)
#   WIN_HAS_CLIPPY      1 when clippy can lint the target (rustup toolchain), else 0
WIN_TARGET=x86_64-pc-windows-gnu
export DEBIAN_FRONTEND=noninteractive

win_log() { echo "ci[windows]: $*"; }

win_apt_install() {
  # apt-get update only when an install is actually needed, and only once per run.
  if [ -z "${WIN_APT_UPDATED:-}" ]; then
    apt-get update -qq
    WIN_APT_UPDATED=1
  fi
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ring and the bundled SQLite compile C: they need the MinGW C compiler.
if ! command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1; then
  win_log "installing gcc-mingw-w64-x86-64"
  win_apt_install gcc-mingw-w64-x86-64
fi

# WIN_TOOLCHAIN=debian forces the fallback (to test it).
if [ "${WIN_TOOLCHAIN:-}" != debian ] && {
  rustup target list --installed 2>/dev/null | grep -qx "$WIN_TARGET" \
    || rustup target add "$WIN_TARGET" >/dev/null 2>&1; }; then
  export CARGO_TARGET_DIR="${WIN_TARGET_DIR:-$PWD/target/windows}"
  WIN_CARGO=(cargo)
  WIN_HAS_CLIPPY=1
else
  # No rustup target (offline mirror, pinned toolchain...): Debian's newer rustc builds std for
  # the target itself from its packaged sources.
  win_log "no rustup $WIN_TARGET target (or WIN_TOOLCHAIN=debian): using Debian rustc-web + -Zbuild-std"
  missing=()
  for pkg in rustc-web cargo-web rust-web-src; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] || win_apt_install "${missing[@]}"
  export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
  export CARGO_TARGET_DIR="${WIN_TARGET_DIR:-$PWD/target/windows-debian}"
  WIN_CARGO=(/usr/bin/cargo -Zbuild-std=std,panic_abort)
  WIN_HAS_CLIPPY=0
fi
