#!/bin/sh
# capstats-textfile: every capstats session's counters for node_exporter's textfile
# collector. Runs `capstats poll --prometheus` and replaces capstats.prom in the
# textfile directory atomically (a temporary file in the same directory, then mv, a
# rename), so that node_exporter never reads half a file.
#
# Usage: capstats-textfile [DIR]
#   DIR  node_exporter's --collector.textfile.directory (default: $CAPSTATS_TEXTFILE_DIR,
#        else /var/lib/prometheus/node-exporter, Debian's prometheus-node-exporter's)
# The daemon's socket is capstats's default, or CAPSTATS_SOCKET. The user running this
# must be able to use the daemon (root, or a member of its -g group) and to write DIR.
#
# On failure (no daemon, no permission) it exits non-zero, leaves no temporary file,
# and leaves the last capstats.prom as it was: node_exporter's
# node_textfile_mtime_seconds{file=~".*capstats.prom"} then stops advancing (alert on
# `time() - node_textfile_mtime_seconds{file=~".*capstats.prom"} > 300`).
#
# Every minute from cron (/etc/cron.d/capstats-textfile):
#   * * * * * root /usr/local/bin/capstats-textfile
# or with systemd: capstats-textfile.service and capstats-textfile.timer beside this.
set -eu

dir=${1:-${CAPSTATS_TEXTFILE_DIR:-/var/lib/prometheus/node-exporter}}
out=$dir/capstats.prom

# Not ending in .prom: the collector ignores it while it is written.
tmp=$(mktemp "$dir/.capstats.prom.XXXXXX")
trap 'rm -f "$tmp"' EXIT
trap 'exit 1' HUP INT TERM

capstats poll --prometheus >"$tmp"
# mktemp makes it 0600; node_exporter may run as another user.
chmod 0644 "$tmp"
mv -f "$tmp" "$out"
