#!/usr/bin/env bash
# swrepl against rsync (daemon, over ssh) and cp -a on the same Supportworks-like tree, in one run.
#
#   benches/compare/run.sh [--files N] [--size-mib N] [--big-mib N] [--latency-writes N]
#                          [--base DIR] [--disk DIR] [--small-files N] [--seed N] [--rounds N] [--out FILE]
#                          [--keep] [--no-install]
#
# Defaults: ~1 GiB in ~20 000 files plus a 1 GiB file, trees in tmpfs (/dev/shm). Builds swrepl
# in release mode (CARGO_TARGET_DIR is honoured; SWREPL=path skips the build), installs rsync,
# openssh-server and GNU time when missing (apt-get), starts its own rsync daemon, sshd and
# swrepl receiver on free ports on 127.0.0.1, measures initial sync, 1 % resync, no-change
# resync, 4 KiB overwrite and 100 B insert in the big file (time and bytes on the wire), live
# latency (p50/p99), verify vs rsync -rcn, peak RSS, and an initial and a no-change sync of
# 1 M small files (--small-files N; 0 skips it), then prints a Markdown table with
# swrepl/peer ratios, the date and the machine. Everything it starts is stopped, and every tree
# removed, when it exits (atexit + SIGINT/SIGTERM/SIGHUP handlers in compare.py). Takes about
# 10-15 minutes at the default size on a 2-core machine. See compare.py's docstring for details.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
if [[ -z "${SWREPL:-}" ]]; then
    target="${CARGO_TARGET_DIR:-$repo/target}"
    (cd "$repo" && cargo build --release --bin swrepl >&2)
    SWREPL="$target/release/swrepl"
fi
exec python3 "$here/compare.py" --swrepl "$SWREPL" "$@"
