#!/usr/bin/env bash
# Make sure headless Chromium is there for the HTML report test (tests/report): installs the
# Debian package `chromium` when `chromium` is missing (root only).
set -u
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
else
  echo "browser: chromium is missing and not root: install the Debian package chromium" >&2
fi
command -v chromium >/dev/null 2>&1
