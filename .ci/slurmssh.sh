# Sourced by .ci/run: packages for the Slurm SSH mode (tests/test_slurm_ssh.py, tests/test_slurm_containers.py).
#   ensure_slurm_ssh_packages   install rsync (the job-folder copy over SSH) and busybox-static (the
#                               Charliecloud test image) if missing; ssh/sshd come from .ci/hosts.sh,
#                               ch-run from .ci/slurm.sh.
# Installs only. Idempotent and safe under `set -euo pipefail`. Needs .ci/apt.sh.

ensure_slurm_ssh_packages() {
    local pkg missing=()
    for pkg in rsync busybox-static; do
        ci_pkg_installed "$pkg" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    ci_apt_install "${missing[@]}"
}
