import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["dist/", "node_modules/", "coverage/"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/consistent-type-imports": "error",
      "no-console": "off",
    },
  },
  {
    files: ["src/cloud/**/*.ts"],
    rules: {
      "no-restricted-properties": ["error", { object: "Promise", property: "all", message: "join parallel cloud calls with settleAll (src/cloud/provider.ts): Promise.all leaves the others running after a failure" }],
    },
  },
  {
    files: ["src/engine/**/*.ts"],
    rules: {
      "no-restricted-imports": ["error", { patterns: [{ group: ["../*", "!./*"], message: "src/engine must not import other parts of src/" }] }],
    },
  },
);
