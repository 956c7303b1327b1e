// Makes the Azure emulator's Entra ID trust a Kubernetes cluster's service-account issuer, the way
// a federated identity credential trusts an AKS OIDC issuer: the emulator fetches the issuer's
// discovery document and JWKS from the kube-apiserver (with the kubeconfig's credentials, since the
// test cluster does not serve them anonymously).
import { readFileSync } from "node:fs";
import { parse } from "yaml";
import { AzureEmulatorControl } from "../azure-emulator/control.js";
import { KubeHttp } from "./kube-http.js";

interface Kubeconfig {
  clusters?: { cluster: { server: string; "certificate-authority-data"?: string } }[];
  users?: { user: { "client-certificate-data"?: string; "client-key-data"?: string } }[];
}

/** The issuer the test cluster's kube-apiserver writes into service-account tokens. */
export async function kubeIssuer(kubeconfig: string): Promise<string> {
  const res = await KubeHttp.fromKubeconfig(kubeconfig).request("GET", "/.well-known/openid-configuration");
  if (res.status !== 200) throw new Error(`kube-apiserver /.well-known/openid-configuration: HTTP ${res.status}`);
  return (res.body as { issuer: string }).issuer;
}

export async function trustKubeIssuer(azureEndpoint: string, azureCaPath: string, kubeconfig: string): Promise<string> {
  const kc = parse(readFileSync(kubeconfig, "utf8")) as Kubeconfig;
  const cluster = kc.clusters?.[0]?.cluster;
  const user = kc.users?.[0]?.user;
  if (!cluster) throw new Error(`kubeconfig ${kubeconfig} has no cluster`);
  const b64 = (s: string | undefined): string | undefined => (s ? Buffer.from(s, "base64").toString("utf8") : undefined);
  const issuer = await kubeIssuer(kubeconfig);
  await AzureEmulatorControl.fromCaFile(azureEndpoint, azureCaPath).registerOidcIssuer({
    issuer,
    discoveryBase: cluster.server,
    caPem: b64(cluster["certificate-authority-data"]),
    clientCertPem: b64(user?.["client-certificate-data"]),
    clientKeyPem: b64(user?.["client-key-data"]),
  });
  return issuer;
}
