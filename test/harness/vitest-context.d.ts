// Values that test/harness/global-setup.ts provides to integration tests (read them with inject()).
export {};

declare module "vitest" {
  interface ProvidedContext {
    /** Path of an admin kubeconfig (client certificate, group system:masters) for the test cluster. */
    kubeconfig: string;
    /** https URL of the test cluster's kube-apiserver. */
    kubeServer: string;
    /**
     * http URL of the shared moto server (AWS emulator) behind the strict AWS layer; works for every
     * region. Its control API is at /_vmforge/strict-aws (test/harness/aws-strict/client.ts).
     */
    motoEndpoint: string;
    /** https URL of the shared Azure emulator (authority host, Resource Manager, managed identity, logs). */
    azureEndpoint: string;
    /** PEM file of the CA the Azure emulator's certificate is signed with. */
    azureCaPath: string;
    /** https URL of the shared Azurite blob service, account in the path: https://127.0.0.1:<port>/devstoreaccount1 */
    azuriteBlobEndpoint: string;
    /** PEM file of the CA that signed Azurite's certificate (the Azure emulator's CA unless either runs externally). */
    azuriteCaPath: string;
  }
}
