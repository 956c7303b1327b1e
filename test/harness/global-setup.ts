// vitest globalSetup of the integration project: one control plane and one moto server per run,
// shared by all integration test files (which run one at a time). Tests reach moto through the
// strict AWS layer (test/harness/aws-strict/), in this process, with every behaviour off until a
// test turns one on; `motoEndpoint` is the layer's endpoint.
//
// To iterate quickly against servers that are already running (`npm run cluster`), set
// VMFORGE_TEST_KUBECONFIG and VMFORGE_TEST_MOTO_ENDPOINT (the layer endpoint it prints) (and
// VMFORGE_TEST_AZURE_ENDPOINT with VMFORGE_TEST_AZURE_CA, and VMFORGE_TEST_AZURITE_ENDPOINT with
// VMFORGE_TEST_AZURITE_CA); then nothing is started here.
import type { TestProject } from "vitest/node";
import { startCluster, type Cluster } from "./cluster.js";
import { KubeHttp } from "./kube-http.js";
import { startStrictAws, type StrictAws } from "./aws-strict/server.js";
import { startMoto, type Moto } from "./moto.js";
import { startAzureEmulator, type AzureEmulator } from "./azure.js";
import { trustKubeIssuer } from "./azure-kube.js";
import { azuriteTlsOf, startAzurite, type Azurite } from "./azurite.js";

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const externalKubeconfig = process.env.VMFORGE_TEST_KUBECONFIG;
  const externalMoto = process.env.VMFORGE_TEST_MOTO_ENDPOINT;
  const externalAzurite =
    process.env.VMFORGE_TEST_AZURITE_ENDPOINT && process.env.VMFORGE_TEST_AZURITE_CA
      ? { blobEndpoint: process.env.VMFORGE_TEST_AZURITE_ENDPOINT, caPath: process.env.VMFORGE_TEST_AZURITE_CA }
      : undefined;
  const externalAzure = process.env.VMFORGE_TEST_AZURE_ENDPOINT && process.env.VMFORGE_TEST_AZURE_CA ? { endpoint: process.env.VMFORGE_TEST_AZURE_ENDPOINT, caPath: process.env.VMFORGE_TEST_AZURE_CA } : undefined;

  const azureStart = externalAzure ? Promise.resolve(undefined) : startAzureEmulator();
  // Azurite serves with the Azure emulator's certificate (one CA for every Azure endpoint), so it
  // starts once the emulator's PKI exists — still well within the control plane's start time.
  const azuriteStart = externalAzurite
    ? Promise.resolve(undefined)
    : azureStart.then((az) => startAzurite(az ? { tls: azuriteTlsOf(az) } : {}));
  const [clusterResult, motoResult, azureResult, azuriteResult] = await Promise.allSettled([
    externalKubeconfig ? Promise.resolve(undefined) : startCluster(),
    externalMoto ? Promise.resolve(undefined) : startMoto(),
    azureStart,
    azuriteStart,
  ]);
  const cluster: Cluster | undefined = clusterResult.status === "fulfilled" ? clusterResult.value : undefined;
  const moto: Moto | undefined = motoResult.status === "fulfilled" ? motoResult.value : undefined;
  const azure: AzureEmulator | undefined = azureResult.status === "fulfilled" ? azureResult.value : undefined;
  const azurite: Azurite | undefined = azuriteResult.status === "fulfilled" ? azuriteResult.value : undefined;

  let layer: StrictAws | undefined;
  const teardown = async (): Promise<void> => {
    await layer?.stop();
    await Promise.allSettled([cluster?.stop(), moto?.stop(), azure?.stop(), azurite?.stop()]);
  };

  if (clusterResult.status === "rejected" || motoResult.status === "rejected" || azureResult.status === "rejected" || azuriteResult.status === "rejected") {
    await teardown();
    const reasons = [clusterResult, motoResult, azureResult, azuriteResult].filter((r) => r.status === "rejected").map((r) => String((r as PromiseRejectedResult).reason?.stack ?? r));
    throw new Error(`integration test servers failed to start:\n${reasons.join("\n")}`);
  }

  if (moto) {
    try {
      layer = await startStrictAws({ upstream: moto.endpoint, log: (m) => process.stderr.write(`[strict-aws] ${m}\n`) });
    } catch (err) {
      await teardown();
      throw err;
    }
  }

  const kubeconfig = externalKubeconfig ?? cluster!.kubeconfigPath;
  project.provide("kubeconfig", kubeconfig);
  project.provide("kubeServer", cluster?.server ?? KubeHttp.fromKubeconfig(kubeconfig).server);
  project.provide("motoEndpoint", externalMoto ?? layer!.endpoint);
  const azureEndpoint = externalAzure?.endpoint ?? azure!.endpoint;
  const azureCaPath = externalAzure?.caPath ?? azure!.caPath;
  project.provide("azureEndpoint", azureEndpoint);
  project.provide("azureCaPath", azureCaPath);
  project.provide("azuriteBlobEndpoint", externalAzurite?.blobEndpoint ?? azurite!.blobEndpoint);
  project.provide("azuriteCaPath", externalAzurite?.caPath ?? azurite!.caPath);
  // Workload identity: the emulator's Entra trusts the test cluster's service-account issuer.
  try {
    await trustKubeIssuer(azureEndpoint, azureCaPath, kubeconfig);
  } catch (err) {
    await teardown();
    throw err;
  }
  return teardown;
}
