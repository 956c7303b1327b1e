// `npm run build`, second step: the operator and the CLI as ES module bundles in dist/ (esbuild),
// after `tsc` has type-checked the sources. One bundle instead of node_modules' files matters for
// memory: loaded whole, @aws-sdk/client-ec2 alone costs ~70 MiB of RSS (all of EC2's operation
// schemas); bundled from the SDK's ES module build, only what the operator uses is kept.
// Shared code goes into dist/chunks/; each cloud provider stays a chunk of its own, loaded when
// the first ComputeEnvironment of that cloud is seen (src/main.ts imports it lazily).
import { rmSync } from "node:fs";
import { build } from "esbuild";

// (chunk names carry a content hash: the previous build's go first; dist/plugin and dist/release stay)
rmSync("dist/chunks", { recursive: true, force: true });
await build({
  entryPoints: ["src/main.ts", "src/cli.ts"],
  outdir: "dist",
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "node",
  target: "node24",
  // ES module builds first: they are what lets unused SDK operations drop out
  mainFields: ["module", "main"],
  chunkNames: "chunks/[name]-[hash]",
  // the npm package, not Node's deprecated built-in of that name (it prints a warning)
  alias: { punycode: "punycode/" },
  legalComments: "none",
  logLevel: "warning",
  // CommonJS dependencies inside an ES module bundle call require() for Node's built-ins
  banner: { js: "import { createRequire as __vmforgeCreateRequire } from 'node:module'; const require = __vmforgeCreateRequire(import.meta.url);" },
});
