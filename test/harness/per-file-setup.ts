// Meant as a vitest `setupFiles` entry of the integration project: runs before each test file
// and gives it a moto server and an Azure emulator without anything left by earlier files; the
// file's process trusts the Azure emulator's CA.
import { beforeAll } from "vitest";
import { azureReset, motoReset, trustAzureEmulator } from "./helpers.js";

beforeAll(async () => {
  trustAzureEmulator();
  await Promise.all([motoReset(), azureReset()]);
});
