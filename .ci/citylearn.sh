# Sourced by .ci/run. Provides ensure_citylearn_venv: a separate venv with citylearn 3.0.2
# (it needs numpy<2; the main environment has numpy 2), installed slim (no CUDA torch).
# Idempotent: an existing venv that already imports citylearn is reused.

OPEVA_CITYLEARN_VENV="${OPEVA_CITYLEARN_VENV:-/tmp/opeva-citylearn-venv}"

ensure_citylearn_venv() {
    local venv="$OPEVA_CITYLEARN_VENV" log="${OPEVA_CI_LOG_DIR:-/tmp}/opeva-citylearn-venv.log"
    if ! "$venv/bin/python" -c 'import citylearn' >/dev/null 2>&1; then
        {
            python3 -m venv "$venv" &&
            "$venv/bin/pip" install --no-deps citylearn==3.0.2 &&
            "$venv/bin/pip" install 'gymnasium<=0.28.1' 'numpy<2' pandas pyyaml 'scikit-learn<=1.2.2' \
                simplejson platformdirs requests &&
            "$venv/bin/python" -c 'import citylearn'
        } >"$log" 2>&1 || { echo "citylearn venv: install failed, see $log" >&2; return 1; }
    fi
    export OPEVA_TEST_CITYLEARN_PYTHON="$venv/bin/python"
    echo "citylearn venv: $OPEVA_TEST_CITYLEARN_PYTHON"
}
