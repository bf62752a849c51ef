# Sourced by .ci/run. Provides ensure_citylearn_venv: a separate venv with citylearn 3.0.2
# (it needs numpy<2; the main environment has numpy 2), installed slim (no CUDA torch).
#
# The venv is a cache shared by every run on the machine (at $OPEVA_CITYLEARN_VENV): building it
# takes minutes, and it is never written once built. It is checked and built under the machine's
# citylearn lock, so two runs never build it at once and none uses it half-built; a build that
# failed halfway is cleared (--clear) and redone by the next run. Needs .ci/locks.sh.

OPEVA_CITYLEARN_VENV="${OPEVA_CITYLEARN_VENV:-/tmp/opeva-citylearn-venv}"

_citylearn_venv_build() {
    local venv=$1
    if "$venv/bin/python" -c 'import citylearn' >/dev/null 2>&1; then
        return 0
    fi
    python3 -m venv --clear "$venv" &&
        "$venv/bin/python" -m pip install --no-deps citylearn==3.0.2 &&
        "$venv/bin/python" -m pip install 'gymnasium<=0.28.1' 'numpy<2' pandas pyyaml 'scikit-learn<=1.2.2' \
            simplejson platformdirs requests &&
        "$venv/bin/python" -c 'import citylearn'
}

ensure_citylearn_venv() {
    local venv="$OPEVA_CITYLEARN_VENV" log="${OPEVA_CI_LOG_DIR:-/tmp}/citylearn-venv.log"
    ci_locked citylearn _citylearn_venv_build "$venv" >"$log" 2>&1 ||
        { echo "citylearn venv: install failed, see $log" >&2; return 1; }
    export OPEVA_TEST_CITYLEARN_PYTHON="$venv/bin/python"
    echo "citylearn venv: $OPEVA_TEST_CITYLEARN_PYTHON"
}
