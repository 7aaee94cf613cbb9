#!/usr/bin/env bash
# Renders a report's index.html (written by `cram report ... -o OUT_DIR`) in
# headless Chromium, checks that the page loads and that every <img> decoded
# (naturalWidth > 0), and saves a full-page screenshot.
#
# Usage: scripts/screenshot_report.sh OUT_DIR [SCREENSHOT.png]
# (default screenshot: OUT_DIR/screenshot.png). Installs the Debian package
# `chromium` with apt-get when no Chromium is found and we are root.
# Exit status: 0 when the page rendered with every image, 1 otherwise, 2 on
# bad usage or a missing browser.
set -euo pipefail

dir=${1:?usage: scripts/screenshot_report.sh OUT_DIR [SCREENSHOT.png]}
shot=${2:-$dir/screenshot.png}
index=$dir/index.html
if [ ! -f "$index" ]; then
    echo "error: $index: no such file" >&2
    exit 2
fi

find_chrome() {
    command -v chromium || command -v chromium-browser || command -v google-chrome || true
}
chrome=$(find_chrome)
if [ -z "$chrome" ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "installing chromium with apt-get ..." >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
        chrome=$(find_chrome)
    fi
fi
if [ -z "$chrome" ]; then
    echo "error: no chromium found (install the Debian package chromium)" >&2
    exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run
    --disable-extensions --disable-background-networking --user-data-dir="$work/profile")

# 1. Load a copy of the page with a script that, after the load event,
#    writes a marker with the image count, the broken images and the page
#    height into the DOM; --dump-dom prints the DOM after load.
check=$work/check.html
cat >"$work/marker.html" <<'EOF'
<script>
window.addEventListener("load", function () {
  var imgs = document.images, bad = [];
  for (var i = 0; i < imgs.length; i++) {
    if (!imgs[i].complete || imgs[i].naturalWidth === 0) { bad.push(imgs[i].alt || ("#" + i)); }
  }
  var m = document.createElement("div");
  m.id = "render-check";
  m.textContent = "RENDER-CHECK images=" + imgs.length + " broken=" + bad.length +
    " height=" + document.documentElement.scrollHeight + " broken-list=[" + bad.join("; ") + "]";
  document.body.appendChild(m);
});
</script>
EOF
# The marker goes before the line holding </body>.
awk 'FNR == NR { m = m $0 "\n"; next } /<\/body>/ { printf "%s", m } { print }' \
    "$work/marker.html" "$index" >"$check"
timeout 120 "$chrome" "${flags[@]}" --virtual-time-budget=10000 --window-size=1280,1000 \
    --dump-dom "file://$check" >"$work/dom.html" 2>"$work/chrome.log" || true
line=$(grep -o 'RENDER-CHECK images=[0-9][^<]*' "$work/dom.html" | head -1 || true)
if [ -z "$line" ]; then
    echo "error: the page did not render (no marker after load); chromium said:" >&2
    tail -5 "$work/chrome.log" >&2
    exit 1
fi
echo "$line"
expected=$(grep -o '<img ' "$index" | wc -l)
images=$(sed 's/.*images=\([0-9]*\).*/\1/' <<<"$line")
broken=$(sed 's/.*broken=\([0-9]*\).*/\1/' <<<"$line")
height=$(sed 's/.*height=\([0-9]*\).*/\1/' <<<"$line")
if [ "$images" -eq 0 ] || [ "$images" -ne "$expected" ] || [ "$broken" -ne 0 ]; then
    echo "error: $images images loaded of $expected in index.html, $broken broken" >&2
    exit 1
fi

# 2. Screenshot of the whole page (window as tall as the page).
height=$((height < 1000 ? 1000 : (height > 30000 ? 30000 : height)))
rm -f "$shot"
timeout 120 "$chrome" "${flags[@]}" --virtual-time-budget=10000 --window-size=1280,"$height" \
    --screenshot="$shot" "file://$(realpath "$index")" >/dev/null 2>>"$work/chrome.log" || true
if [ ! -s "$shot" ]; then
    echo "error: chromium wrote no screenshot; chromium said:" >&2
    tail -5 "$work/chrome.log" >&2
    exit 1
fi
echo "ok: $images images, page 1280x$height px -> $shot"
