#!/usr/bin/env bash
# Everything the real-client checks need (modelport clients / report, tests/test_clients_*.py,
# tests/test_report_screenshot.py), installed idempotently: a second run changes nothing.
#   - Chromium from Debian (/usr/bin/chromium) when missing: headless WebGPU (SwiftShader) and wasm.
#   - The transformers.js harness: `npm ci` from src/modelport/clients/js/package-lock.json
#     (@huggingface/transformers 4.3.1, puppeteer-core, pinned). ONNXRUNTIME_NODE_INSTALL=skip and
#     --ignore-scripts: no install script downloads anything (onnxruntime-node's CPU binaries ship in
#     its npm tarball). Re-run only when the lock file changes (stamp in node_modules).
#   - matplotlib in .venv for quantize-search's pareto.png (needs scripts/setup-native.sh first).
# Needs: Node >= 18 with npm, apt-get (root or sudo) when Chromium is missing, network to the
# Debian mirror, the npm registry and PyPI on the first run only.
set -euo pipefail
cd "$(dirname "$0")/.."
JS=src/modelport/clients/js
CHROMIUM=${MODELPORT_CHROMIUM:-/usr/bin/chromium}
MATPLOTLIB=matplotlib==3.11.2

die() { echo "setup-clients: $*" >&2; exit 1; }
# shellcheck source=lib/apt.sh
. scripts/lib/apt.sh

# --- Node ----------------------------------------------------------------------------------
command -v node >/dev/null || die "node is not installed (need Node >= 18 with npm)"
command -v npm >/dev/null || die "npm is not installed"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 18 ] || die "Node $(node --version) is too old (need >= 18)"

# --- Chromium (Debian package) ---------------------------------------------------------------
if [ ! -x "$CHROMIUM" ]; then
  [ "$CHROMIUM" = /usr/bin/chromium ] || die "MODELPORT_CHROMIUM=$CHROMIUM is not executable"
  ensure_debs setup-clients chromium
  [ -x "$CHROMIUM" ] || die "apt-get install chromium did not provide $CHROMIUM"
fi

# --- transformers.js harness (npm ci, pinned by package-lock.json) -----------------------------
stamp="$JS/node_modules/.modelport-lock.sha256"
want=$(sha256sum "$JS/package-lock.json" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup-clients: npm ci in $JS"
  (cd "$JS" && ONNXRUNTIME_NODE_INSTALL=skip npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
fi
# Fail here, not in a test, if the install is unusable (e.g. a platform without onnxruntime-node binaries).
(cd "$JS" && node --input-type=module -e "
  const t = await import('@huggingface/transformers');
  await import('puppeteer-core');
  if (t.env.version !== '4.3.1') throw new Error('transformers.js ' + t.env.version + ', expected 4.3.1');
") || die "the harness in $JS does not load; delete $JS/node_modules and re-run"

# --- matplotlib for quantize-search's pareto.png ------------------------------------------------
[ -x .venv/bin/python ] || die ".venv is missing: run scripts/setup-native.sh first"
if ! .venv/bin/python -c "import matplotlib" 2>/dev/null; then
  echo "setup-clients: pip install $MATPLOTLIB"
  .venv/bin/pip install --quiet --disable-pip-version-check "$MATPLOTLIB"
fi

echo "setup-clients: ok | node $(node --version) | $("$CHROMIUM" --version 2>/dev/null | head -1) |" \
  "matplotlib $(.venv/bin/python -c 'import matplotlib; print(matplotlib.__version__)')"
