#!/usr/bin/env bash
# Runs standins/tool.ts with the project's Node (tsx from node_modules).
exec "$VMFORGE_SANDBOX_REPO/node_modules/.bin/tsx" "$VMFORGE_SANDBOX_REPO/test/sandbox/standins/tool.ts" "$@"
