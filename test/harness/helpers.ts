// Helpers for integration tests. They talk to the servers of test/harness/global-setup.ts.
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { getCACertificates, setDefaultCACertificates } from "node:tls";
import { ClientSecretCredential } from "@azure/identity";
import { inject } from "vitest";
import { AzureEmulatorControl, type EmulatorInfo } from "../azure-emulator/control.js";
import { StrictAwsControl } from "./aws-strict/client.js";
import { KubeHttp } from "./kube-http.js";
import { resetMoto } from "./moto.js";

export { KubeHttp };

/** Path of the admin kubeconfig of the shared test cluster. */
export function kubeconfigPath(): string {
  return inject("kubeconfig");
}

/** https URL of the shared test cluster's kube-apiserver. */
export function kubeServer(): string {
  return inject("kubeServer");
}

/** http URL of the shared moto server, as seen through the strict AWS layer (all behaviours off by default). */
export function motoEndpoint(): string {
  return inject("motoEndpoint");
}

/** Control of the strict AWS layer in front of the shared moto (reset at the start of each test file). */
export function strictAws(): StrictAwsControl {
  return new StrictAwsControl(motoEndpoint());
}

let admin: KubeHttp | undefined;
/** A small HTTPS client for the test cluster with admin rights (independent of the code under test). */
export function kubeAdmin(): KubeHttp {
  admin ??= KubeHttp.fromKubeconfig(kubeconfigPath());
  return admin;
}

/** A lower-case random suffix for names: 6 characters of [a-z0-9]. */
export function randomSuffix(length = 6): string {
  const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
  return [...randomBytes(length)].map((b) => alphabet[b % alphabet.length]).join("");
}

/** Anything with the engine's KubeClient.create shape. */
export interface NamespaceCreator {
  create(
    rt: { group: string; version: string; plural: string; kind: string; namespaced: boolean },
    obj: { apiVersion?: string; kind?: string; metadata: { name?: string; labels?: Record<string, string> } },
  ): Promise<unknown>;
}

export const TEST_NAMESPACE_LABEL = "vmforge.dev/test-namespace";

/**
 * Creates a namespace named `<prefix>-<random>` and returns its name. With a client (e.g. the
 * engine's KubeClient) it is created through that client, else through the harness's own client.
 */
export async function freshNamespace(clientOrPrefix?: NamespaceCreator | string, prefix = "test"): Promise<string> {
  const client = typeof clientOrPrefix === "object" ? clientOrPrefix : undefined;
  const base = typeof clientOrPrefix === "string" ? clientOrPrefix : prefix;
  const name = `${base}-${randomSuffix()}`.toLowerCase().slice(0, 63);
  const obj = { apiVersion: "v1", kind: "Namespace", metadata: { name, labels: { [TEST_NAMESPACE_LABEL]: "true" } } };
  if (client) {
    await client.create({ group: "", version: "v1", plural: "namespaces", kind: "Namespace", namespaced: false }, obj);
  } else {
    await kubeAdmin().expect("POST", "/api/v1/namespaces", obj);
  }
  return name;
}

/** Starts deleting a namespace (does not wait for the namespace controller to finish). */
export async function deleteNamespace(name: string): Promise<void> {
  await kubeAdmin().expect("DELETE", `/api/v1/namespaces/${encodeURIComponent(name)}`, undefined, [404]);
}

/**
 * Lets namespaces that earlier test files deleted finish going away, so a test that counts the
 * kube-apiserver's requests does not count the namespace controller's (it lists every resource
 * type of a namespace while emptying it). vmforge objects left there with finalizers whose
 * operator has stopped would hold a namespace forever: their finalizers are taken off (those
 * files are done; nothing else runs meanwhile). Gives up quietly after `timeoutMs`.
 */
export async function settleDeletedNamespaces(timeoutMs = 60_000): Promise<void> {
  const admin = kubeAdmin();
  type Item = { metadata: { name: string; namespace?: string; deletionTimestamp?: string; finalizers?: string[] } };
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const list = (await admin.expect("GET", "/api/v1/namespaces")).body as { items: Item[] };
    const going = list.items.filter((n) => n.metadata.deletionTimestamp).map((n) => n.metadata.name);
    if (going.length === 0 || performance.now() > deadline) return;
    for (const ns of going) {
      for (const plural of ["runs", "computeenvironments"]) {
        const path = `/apis/vmforge.dev/v1alpha1/namespaces/${encodeURIComponent(ns)}/${plural}`;
        const items = ((await admin.expect("GET", path, undefined, [404])).body as { items?: Item[] }).items ?? [];
        for (const o of items) {
          if (!o.metadata.finalizers?.length) continue;
          await admin.expect("PATCH", `${path}/${encodeURIComponent(o.metadata.name)}`, { metadata: { finalizers: null } }, [404, 409], "application/merge-patch+json");
        }
      }
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** Forgets every resource in the shared moto server. Call it in beforeAll of each AWS test file. */
export async function motoReset(): Promise<void> {
  await resetMoto(motoEndpoint());
}

export interface AwsTestConfig {
  endpoint: string;
  region: string;
  credentials: { accessKeyId: string; secretAccessKey: string };
}

/** Configuration for any AWS SDK v3 client, pointing it at the shared moto server. */
export function awsTestConfig(region = "us-east-1"): AwsTestConfig {
  return { endpoint: motoEndpoint(), region, credentials: { accessKeyId: "testing", secretAccessKey: "testing" } };
}

/** Like awsTestConfig(), plus path-style addressing, which S3 needs against moto. */
export function s3TestConfig(region = "us-east-1"): AwsTestConfig & { forcePathStyle: true } {
  return { ...awsTestConfig(region), forcePathStyle: true };
}

// ---- Azure emulator ---------------------------------------------------------------------------------

/** https URL of the shared Azure emulator. */
export function azureEndpoint(): string {
  return inject("azureEndpoint");
}

/** PEM file of the CA of the Azure emulator's certificate (for NODE_EXTRA_CA_CERTS of child processes). */
export function azureCaPath(): string {
  return inject("azureCaPath");
}

let control: AzureEmulatorControl | undefined;
/** Typed client of the emulator's test controls. */
export function azureControl(): AzureEmulatorControl {
  control ??= AzureEmulatorControl.fromCaFile(azureEndpoint(), azureCaPath());
  return control;
}

let trusted = false;
/** Adds the emulator's CA to this process's default trusted CAs (idempotent). TLS checks stay on. */
export function trustAzureEmulator(): void {
  if (trusted) return;
  setDefaultCACertificates([...getCACertificates("default"), readFileSync(azureCaPath(), "utf8")]);
  trusted = true;
}

let info: EmulatorInfo | undefined;
/** Forgets every Azure resource and principal; the default tenant, subscription and admin exist afterwards. */
export async function azureReset(): Promise<EmulatorInfo> {
  info = await azureControl().reset();
  return info;
}

/** The default tenant, subscription and Owner principal of the emulator. */
export async function azureInfo(): Promise<EmulatorInfo> {
  info ??= await azureControl().info();
  return info;
}

/** Options for @azure/identity credentials: the emulator as authority host, no instance discovery. */
export function azureCredentialOptions(): { authorityHost: string; disableInstanceDiscovery: true } {
  return { authorityHost: azureEndpoint(), disableInstanceDiscovery: true };
}

/** A ClientSecretCredential for the emulator's default Owner principal (or the given one). */
export async function azureTestCredential(p?: { tenantId?: string; clientId: string; clientSecret: string }): Promise<ClientSecretCredential> {
  const i = await azureInfo();
  return new ClientSecretCredential(p?.tenantId ?? i.tenantId, p?.clientId ?? i.admin.clientId, p?.clientSecret ?? i.admin.clientSecret, azureCredentialOptions());
}

/**
 * Client options for every Azure Resource Manager SDK client (classic and modular ones): the
 * emulator as endpoint, tokens still for https://management.azure.com.
 */
export function azureClientOptions(): {
  endpoint: string;
  $host: string;
  credentialScopes: string[];
  credentials: { scopes: string[] };
} {
  const scopes = ["https://management.azure.com/.default"];
  return { endpoint: azureEndpoint(), $host: azureEndpoint(), credentialScopes: scopes, credentials: { scopes } };
}
