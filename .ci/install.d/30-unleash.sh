#!/usr/bin/env bash
# The pinned unleash-server the real-server tests start (tests/servers/unleash.py): `npm ci` from the
# committed lockfile in tests/unleash/. Idempotent: skipped when node_modules already holds the pinned
# version. Install scripts are not run (the server needs none).
# unleash-server 7.x needs node >= 20; Debian 12's own nodejs is 18, so node 20 must come from the image
# (NodeSource's nodejs package, which bundles npm). This step fails loudly rather than install node 18.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "30-unleash: node >= 20 and npm are needed for the Unleash tests (NodeSource nodejs 20)" >&2
  exit 1
fi
major=$(node -p "process.versions.node.split('.')[0]")
if [ "$major" -lt 20 ]; then
  echo "30-unleash: node $(node --version) is too old; unleash-server 7.5.1 needs node >= 20" >&2
  exit 1
fi
pinned=$(node -p "require('./tests/unleash/package.json').dependencies['unleash-server']")
installed=$(node -p "try { require('./tests/unleash/node_modules/unleash-server/package.json').version } catch (e) { '' }")
if [ "$installed" != "$pinned" ]; then
  (cd tests/unleash && CI=true npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
fi
