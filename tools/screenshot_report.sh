#!/usr/bin/env bash
# Render a hippogan report.html with headless Chromium and save a PNG screenshot, to check how the
# report looks without a display (e.g. on a server or in CI).
#
# Usage (from anywhere):
#     tools/screenshot_report.sh REPORT.html [OUT.png] [WIDTHxHEIGHT]
# Defaults: OUT.png = REPORT.png next to the report, window 1280x900 (the screenshot is the first
# screenful only; give a taller window, e.g. 1280x2400, to see more rows).
#
# Needs Chromium; this script installs nothing. On Debian/Ubuntu (as root):
#     apt-get install -y chromium
# Chromium runs offline: a fresh throw-away profile, no sync, no component updates, no background
# networking, so the screenshot also shows that the report needs no external resource.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 3 ]]; then
    sed -n '2,13p' "$0" >&2
    exit 2
fi
report=$(realpath "$1")
out=$(realpath -m "${2:-${report%.html}.png}")
size=${3:-1280x900}
[[ -f "$report" ]] || { echo "screenshot_report: no such file: $1" >&2; exit 2; }
[[ "$size" =~ ^[0-9]+x[0-9]+$ ]] || { echo "screenshot_report: size must be WIDTHxHEIGHT, got '$size'" >&2; exit 2; }
browser=$(command -v chromium || command -v chromium-browser || true)
[[ -n "$browser" ]] || { echo "screenshot_report: chromium not found; install it: apt-get install -y chromium" >&2; exit 127; }

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --user-data-dir="$profile" \
    --screenshot="$out" --window-size="${size/x/,}" "file://$report" 2>/dev/null
[[ -s "$out" ]] || { echo "screenshot_report: chromium wrote no screenshot to $out" >&2; exit 1; }
echo "$out"
