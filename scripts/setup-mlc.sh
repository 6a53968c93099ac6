#!/usr/bin/env bash
# Everything the MLC / WebLLM target needs natively, installed idempotently (a second run changes nothing):
#   - Debian packages: emscripten (emcc 3.1.6: links the model libraries, builds TVM's web runtime),
#     nodejs + npm (the Node wasm check), chromium (the WebLLM check: headless, SwiftShader WebGPU).
#   - the `mlc` extra in .venv: apache-tvm 0.27.0.post1 + apache-tvm-tirx 0.1.0a4 (run setup-native.sh first).
#   - npm ci in src/modelport/targets/mlc/js (@mlc-ai/web-llm 0.2.86, @mlc-ai/web-runtime 0.27.0-dev0,
#     onnxruntime-web for the benchmark, puppeteer-core), --ignore-scripts: nothing downloads a browser.
# The TVM web runtime itself is built on first use and cached by content hash under the modelport
# cache ($MODELPORT_CACHE/mlc-runtime, or $MODELPORT_WEB_RUNTIME_CACHE): pass --prebuild to build it now.
set -euo pipefail
cd "$(dirname "$0")/.."
JS=src/modelport/targets/mlc/js
die() { echo "setup-mlc: $*" >&2; exit 1; }
# shellcheck source=lib/apt.sh
. scripts/lib/apt.sh

# --- Debian packages ---------------------------------------------------------------------------------
need=()
command -v emcc >/dev/null || need+=(emscripten)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
[ -x "${MODELPORT_CHROMIUM:-/usr/bin/chromium}" ] || need+=(chromium)
ensure_debs setup-mlc ${need[@]+"${need[@]}"}
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 18 ] || die "Node $(node --version) is too old (need >= 18)"

# --- Python: the mlc extra ---------------------------------------------------------------------------------
[ -x .venv/bin/python ] || die ".venv is missing: run scripts/setup-native.sh first"
if ! .venv/bin/python -c "import tvm; from importlib.metadata import version; assert version('apache-tvm-tirx')" 2>/dev/null; then
  echo "setup-mlc: pip install -e .[mlc]"
  .venv/bin/pip install --quiet --disable-pip-version-check -e ".[mlc]"
fi

# --- npm (pinned by package-lock.json; re-run only when the lock changes) ------------------------------------
stamp="$JS/node_modules/.modelport-lock.sha256"
want=$(sha256sum "$JS/package-lock.json" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup-mlc: npm ci in $JS"
  (cd "$JS" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
fi
(cd "$JS" && node --input-type=module -e "
  import { createRequire } from 'node:module';
  const require = createRequire(process.cwd() + '/');
  require('@mlc-ai/web-runtime'); await import('@mlc-ai/web-llm'); await import('puppeteer-core');
") || die "the npm packages in $JS do not load; delete $JS/node_modules and re-run"

if [ "${1:-}" = "--prebuild" ]; then
  .venv/bin/python -c "from modelport.targets.mlc import build; print('setup-mlc: TVM web runtime at', build.build_runtime(print))"
fi
echo "setup-mlc: ok | $(emcc --version | head -1 | cut -c1-60) | node $(node --version) |" \
  "$("${MODELPORT_CHROMIUM:-/usr/bin/chromium}" --version 2>/dev/null | head -1) |" \
  "tvm $(.venv/bin/python -c 'import tvm; print(tvm.__version__)')"
