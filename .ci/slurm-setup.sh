#!/usr/bin/env bash
# CI, before pytest: install what tests/workflow/test_slurm.py needs to start a one-node SLURM
# (Debian/Ubuntu packages slurmctld slurmd slurm-client munge). Idempotent: does nothing when they
# are there. It never fails the CI run: when it cannot install (not root, no apt-get, no network)
# it says why and exits 0, and the SLURM test then skips, naming what is missing.
# Nothing is started here; the test starts and stops the daemons itself.
set -u

PACKAGES="slurmctld slurmd slurm-client munge"
PROGRAMS="slurmctld slurmd munged munge unmunge sbatch srun squeue sinfo scancel scontrol"
LOG="${TMPDIR:-/tmp}/slurm-setup.$$.log"

say() { echo "slurm-setup: $*"; }

missing_programs() {
    local p missing=""
    for p in $PROGRAMS; do
        PATH="$PATH:/usr/sbin:/sbin" command -v "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    echo "${missing# }"
}

# keep the packages' maintainer scripts from starting (and, under systemd, enabling) the services
POLICY=/usr/sbin/policy-rc.d
our_policy=0
block_service_starts() {
    if [ ! -e "$POLICY" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$POLICY" && chmod 755 "$POLICY" && our_policy=1
    fi
}
unblock_service_starts() {
    if [ "$our_policy" = 1 ]; then rm -f "$POLICY"; fi
    rm -f "$LOG"
}

main() {
    local missing
    missing=$(missing_programs)
    if [ -z "$missing" ]; then
        say "SLURM and munge are installed ($(PATH="$PATH:/usr/sbin" slurmctld -V 2>/dev/null))"
        return 0
    fi
    say "missing programs: $missing"
    if [ "$(uname -s)" != Linux ]; then
        say "not Linux ($(uname -s)); not installing, the SLURM test will be skipped"
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        say "not root; cannot install $PACKAGES (and the test needs root to start the daemons); the SLURM test will be skipped"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "no apt-get (not Debian/Ubuntu); install $PACKAGES by other means to run the SLURM test; it will be skipped"
        return 0
    fi

    export DEBIAN_FRONTEND=noninteractive
    trap unblock_service_starts EXIT
    block_service_starts
    say "apt-get install $PACKAGES"
    if ! timeout 300 apt-get -o DPkg::Lock::Timeout=120 update -qq >"$LOG" 2>&1; then
        tail -n 20 "$LOG"
        say "apt-get update failed (no network or no package sources?); the SLURM test will be skipped"
        return 0
    fi
    # shellcheck disable=SC2086
    if ! timeout 600 apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends $PACKAGES >"$LOG" 2>&1; then
        tail -n 20 "$LOG"
        say "apt-get install failed; the SLURM test will be skipped"
        return 0
    fi
    missing=$(missing_programs)
    if [ -n "$missing" ]; then
        say "installed, but still missing: $missing; the SLURM test will be skipped"
    else
        say "installed ($(PATH="$PATH:/usr/sbin" slurmctld -V 2>/dev/null))"
    fi
    return 0
}

main || say "unexpected error; the SLURM test will be skipped"
exit 0
