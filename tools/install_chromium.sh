#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver for the page test (tests/serve/test_page.py)
# when they are missing. Never fails its caller: it always exits 0 and prints one line saying
# what happened; the test skips with a reason when the browser is still not there.

have_browser() {
    { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } &&
        command -v chromedriver >/dev/null 2>&1
}

if have_browser; then
    echo "install_chromium: chromium and chromedriver already installed"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "install_chromium: chromium/chromedriver missing; not root, so not installing (the page test will skip)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium: chromium/chromedriver missing; no apt-get here (the page test will skip)"
    exit 0
fi

log="$(mktemp)"
if DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        chromium chromium-driver >"$log" 2>&1 ||
    { DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            chromium chromium-driver >>"$log" 2>&1; }; then
    if have_browser; then
        echo "install_chromium: installed chromium and chromium-driver with apt-get"
    else
        echo "install_chromium: apt-get succeeded but chromium/chromedriver are still not on PATH"
    fi
else
    echo "install_chromium: apt-get could not install chromium chromium-driver (last line: $(tail -n 1 "$log"))"
fi
rm -f "$log"
exit 0
