#!/usr/bin/env bash
# Installs what browser tests need: Debian's Chromium (Playwright drives it; its own browser download
# cannot work offline). Without root or apt, browser tests skip with a reason.
set -u
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "browser_setup: could not install chromium; browser tests will skip" >&2
fi
exit 0
