#!/bin/sh
# Install the Debian packages that the integration tests run for real: Dovecot (POP3),
# ClamAV (clamd, sigtool, test files), Exim (MTA), fetchmail, mutt (with script(1) from
# bsdutils), swaks, msmtp, curl, iptables,
# procps (sysctl, pgrep), util-linux (unshare, nsenter),
# iproute2 (network namespaces) and man (to check the man pages).
# Does nothing when everything is installed already, or when not root (then it says so).
set -eu

PACKAGES="dovecot-core dovecot-pop3d clamav clamav-daemon clamdscan clamav-testfiles
exim4-daemon-light fetchmail mutt bsdutils swaks msmtp curl iptables iproute2 procps
util-linux man-db groff-base"

missing=""
for pkg in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done
if [ -z "$missing" ]; then
    echo "debian-packages: all test packages are installed"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "debian-packages: not root, cannot install:$missing"
    echo "debian-packages: the integration tests that need them will fail and say why"
    exit 0
fi
echo "debian-packages: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get -o DPkg::Lock::Timeout=600 install -y -q $missing
