// `npm run cluster`            starts the test control plane, moto, the Azure emulator and Azurite,
//                              prints how to reach them,
//                              and keeps them running until Ctrl-C (or SIGTERM), then tears down.
// `npm run cluster -- prepare` only builds/installs what the harness needs (control-plane
//                              binaries, moto virtualenv, actionlint and glua) and exits.
import { startStrictAws, type StrictAws } from "./aws-strict/server.js";
import { startCluster, type Cluster } from "./cluster.js";
import { startMoto, type Moto } from "./moto.js";
import { startAzureEmulator, type AzureEmulator } from "./azure.js";
import { trustKubeIssuer } from "./azure-kube.js";
import { azuriteTlsOf, startAzurite, type Azurite } from "./azurite.js";
import { ensureControlPlane, ensureMotoVenv, KUBERNETES_VERSION, MOTO_VERSION } from "./paths.js";
import { ACTIONLINT, ensureGoTool, GLUA } from "./go-tools.js";

async function prepare(): Promise<void> {
  const t0 = Date.now();
  const bin = await ensureControlPlane();
  console.log(`control plane ${KUBERNETES_VERSION}: ${bin}`);
  const venv = await ensureMotoVenv();
  console.log(`moto ${MOTO_VERSION}: ${venv}`);
  // Small Go tools of the deployment tests (workflow lint, Argo CD's Lua interpreter).
  for (const tool of [ACTIONLINT, GLUA]) console.log(`${tool.name} ${tool.version}: ${await ensureGoTool(tool)}`);
  console.log(`prepared in ${((Date.now() - t0) / 1000).toFixed(1)}s`);
}

async function serve(): Promise<void> {
  let signalled = false;
  const interrupted = new Promise<void>((resolve) => {
    for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
      process.on(sig, () => {
        signalled = true;
        resolve();
      });
    }
  });
  let cluster: Cluster | undefined;
  let moto: Moto | undefined;
  let azure: AzureEmulator | undefined;
  let azurite: Azurite | undefined;
  let layer: StrictAws | undefined;
  try {
    // Wait for all even when one fails, so that the others are stopped too.
    const azureStart = startAzureEmulator();
    const [c, m, a, z] = await Promise.allSettled([startCluster(), startMoto(), azureStart, azureStart.then((e) => startAzurite({ tls: azuriteTlsOf(e) }))]);
    if (c.status === "fulfilled") cluster = c.value;
    if (m.status === "fulfilled") moto = m.value;
    if (a.status === "fulfilled") azure = a.value;
    if (z.status === "fulfilled") azurite = z.value;
    if (c.status === "rejected") throw c.reason;
    if (m.status === "rejected") throw m.reason;
    if (a.status === "rejected") throw a.reason;
    if (z.status === "rejected") throw z.reason;
    if (signalled) return;
    layer = await startStrictAws({ upstream: m.value.endpoint });
    const [cl, mo, az, zu] = [c.value, layer, a.value, z.value];
    await trustKubeIssuer(az.endpoint, az.caPath, cl.kubeconfigPath);
    const ai = await az.control.info();
    console.log("");
    console.log(`kubeconfig:    ${cl.kubeconfigPath}`);
    console.log(`kube-apiserver ${KUBERNETES_VERSION}: ${cl.server}`);
    console.log(`moto ${MOTO_VERSION}:    ${m.value.endpoint} (behind the strict AWS layer: ${mo.endpoint})`);
    console.log(`azure:         ${az.endpoint} (CA ${az.caPath})`);
    console.log(`azurite blob:  ${zu.blobEndpoint} (same CA; account key or bearer tokens for https://storage.azure.com)`);
    console.log(`logs:          ${cl.dir} ${az.dir} ${zu.dir}`);
    console.log("");
    console.log(`export KUBECONFIG=${cl.kubeconfigPath}`);
    console.log(`export AWS_ENDPOINT_URL=${mo.endpoint} AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1`);
    console.log(`# Azure emulator: authority host and Resource Manager endpoint are both ${az.endpoint}`);
    console.log(`export NODE_EXTRA_CA_CERTS=${az.caPath}`);
    console.log(`export AZURE_AUTHORITY_HOST=${az.endpoint} AZURE_TENANT_ID=${ai.tenantId} AZURE_CLIENT_ID=${ai.admin.clientId} AZURE_CLIENT_SECRET=${ai.admin.clientSecret}`);
    console.log(`export AZURE_SUBSCRIPTION_ID=${ai.subscriptionId} AZURE_RESOURCE_MANAGER_ENDPOINT=${az.endpoint}`);
    console.log(`# test controls: ${az.endpoint}/_emulator/ (see test/azure-emulator/README.md)`);
    console.log(`# Log Analytics query API (LogsQueryClient endpoint): ${az.endpoint}/loganalytics/v1; DCE ingestion endpoints: ${az.endpoint}/dce/<dce-name>`);
    console.log(`export AZURE_STORAGE_BLOB_ENDPOINT=${zu.blobEndpoint} AZURE_STORAGE_CONNECTION_STRING="${zu.connectionString}"`);
    console.log("");
    console.log("To run the integration tests against these servers instead of fresh ones:");
    console.log(`  VMFORGE_TEST_KUBECONFIG=${cl.kubeconfigPath} VMFORGE_TEST_MOTO_ENDPOINT=${mo.endpoint} VMFORGE_TEST_AZURE_ENDPOINT=${az.endpoint} VMFORGE_TEST_AZURE_CA=${az.caPath} VMFORGE_TEST_AZURITE_ENDPOINT=${zu.blobEndpoint} VMFORGE_TEST_AZURITE_CA=${az.caPath} npx vitest run --project integration`);
    console.log("");
    console.log("Press Ctrl-C to stop.");
    await interrupted;
  } finally {
    console.log("stopping...");
    await layer?.stop();
    await Promise.allSettled([cluster?.stop(), moto?.stop(), azure?.stop(), azurite?.stop()]);
    console.log("stopped");
  }
}

const cmd = process.argv[2] ?? "serve";
try {
  if (cmd === "prepare") await prepare();
  else if (cmd === "serve") await serve();
  else {
    console.error(`usage: npm run cluster [-- prepare]`);
    process.exitCode = 2;
  }
} catch (err) {
  console.error((err as Error).message);
  process.exitCode = 1;
}
