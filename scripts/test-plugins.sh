#!/usr/bin/env bash
# Run each first-party plugin's test suite (plugins/*/) in an environment of its own.
#
# Each environment sits on top of the one this script is run from, which must have tlplug
# and its test tools installed (pip install -e ".[test]"): it sees that environment's
# packages (torch is not installed twice) and adds only its plugin and the plugin's own
# test dependencies (peft and transformers, MLflow, TensorBoard), so no plugin's packages
# or entry points reach tlplug's own suite or another plugin's. The environments are kept
# in $TLPLUG_PLUGIN_ENVS (default: plugin-envs/ inside this environment) and reused.
#
#     bash scripts/test-plugins.sh [PLUGIN ...]   # default: every plugins/*/ package
set -euo pipefail
cd "$(dirname "$0")/.."

base=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
envs=${TLPLUG_PLUGIN_ENVS:-$(python -c 'import sys; print(sys.prefix)')/plugin-envs}
if [ $# -eq 0 ]; then
    set -- $(for path in plugins/*/pyproject.toml; do basename "$(dirname "$path")"; done)
fi

for plugin in "$@"; do
    env="$envs/$plugin"
    if [ ! -x "$env/bin/python" ]; then
        python -m venv "$env"
        # Python runs "import" lines of a .pth file: the base environment's packages (and
        # their own .pth files, the editable tlplug's among them) join this one's path.
        site=$("$env/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        echo "import site; site.addsitedir('$base')" > "$site/_tlplug_base.pth"
    fi
    echo "+ $plugin: installing into $env"
    "$env/bin/python" -m pip install --quiet --disable-pip-version-check -e "plugins/$plugin[test]"
    echo "+ $plugin: pytest"
    "$env/bin/python" -m pytest -q "plugins/$plugin"
done
