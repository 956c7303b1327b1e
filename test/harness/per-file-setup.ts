// Meant as a vitest `setupFiles` entry of the integration project: runs before each test file
// and gives it a moto server without anything left by earlier files.
import { beforeAll } from "vitest";
import { motoReset } from "./helpers.js";

beforeAll(async () => {
  await motoReset();
});
