import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { REPO_ROOT, renderCrds } from "../../../src/api/generate.js";

describe("crds/", () => {
  it.each(renderCrds().map((r) => [r.file, r.yaml] as const))("%s matches a fresh render", (file, yaml) => {
    let current = "";
    try {
      current = readFileSync(join(REPO_ROOT, file), "utf8");
    } catch {
      expect.fail(`${file} is missing: run npm run gen:crds`);
    }
    expect(current === yaml, `${file} is stale: run npm run gen:crds`).toBe(true);
  });

  it("renders deterministically", () => {
    expect(renderCrds()).toEqual(renderCrds());
  });
});
