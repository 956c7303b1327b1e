// Smoke tests of the test control plane itself: proof that kube-apiserver, etcd and the
// controllers of kube-controller-manager are real and working. They use @kubernetes/client-node,
// not vmforge's engine.
import * as k8s from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { KUBERNETES_VERSION } from "../harness/paths.js";
import { deleteNamespace, freshNamespace, kubeAdmin, kubeconfigPath, kubeServer, randomSuffix } from "../harness/helpers.js";

const WAIT = { timeout: 90_000, interval: 250 };

function statusCode(err: unknown): number | undefined {
  return err instanceof k8s.ApiException ? err.code : undefined;
}

describe("test control plane", () => {
  let kc: k8s.KubeConfig;
  let core: k8s.CoreV1Api;
  let namespace: string;

  beforeAll(async () => {
    kc = new k8s.KubeConfig();
    kc.loadFromFile(kubeconfigPath());
    core = kc.makeApiClient(k8s.CoreV1Api);
    namespace = await freshNamespace("smoke-kube");
  });

  afterAll(async () => {
    if (namespace) await deleteNamespace(namespace);
  });

  it("serves the Kubernetes version it was built from, on the advertised URL", async () => {
    expect(kc.getCurrentCluster()?.server).toBe(kubeServer());
    expect(new URL(kubeServer()).hostname).toBe("127.0.0.1");
    const version = await kc.makeApiClient(k8s.VersionApi).getCode();
    expect(KUBERNETES_VERSION).toBe("v1.36.3");
    expect(version.gitVersion).toBe(KUBERNETES_VERSION);
  });

  it("enforces authentication and RBAC", async () => {
    // Same server and CA, but no client certificate: the request is anonymous and RBAC refuses it.
    const anonymous = kubeAdmin().withoutCredentials();
    const res = await anonymous.request("GET", "/api/v1/namespaces");
    expect(res.status).toBe(403);
    expect((res.body as { reason?: string }).reason).toBe("Forbidden");
    expect((await kubeAdmin().request("GET", "/api/v1/namespaces")).status).toBe(200);
  });

  it("creates a CRD that becomes Established, and a custom object that is watched and deleted", async () => {
    const group = `smoke-${randomSuffix()}.vmforge.test`;
    const crdName = `widgets.${group}`;
    const ext = kc.makeApiClient(k8s.ApiextensionsV1Api);
    await ext.createCustomResourceDefinition({
      body: {
        apiVersion: "apiextensions.k8s.io/v1",
        kind: "CustomResourceDefinition",
        metadata: { name: crdName },
        spec: {
          group,
          scope: "Namespaced",
          names: { plural: "widgets", singular: "widget", kind: "Widget", listKind: "WidgetList" },
          versions: [
            {
              name: "v1",
              served: true,
              storage: true,
              schema: {
                openAPIV3Schema: {
                  type: "object",
                  properties: { spec: { type: "object", properties: { size: { type: "integer", minimum: 1 } } } },
                },
              },
            },
          ],
        },
      },
    });
    try {
      await vi.waitFor(async () => {
        const crd = await ext.readCustomResourceDefinition({ name: crdName });
        const established = crd.status?.conditions?.find((c) => c.type === "Established");
        expect(established?.status).toBe("True");
      }, WAIT);

      const objects = kc.makeApiClient(k8s.CustomObjectsApi);
      const list = (await vi.waitFor(
        () => objects.listNamespacedCustomObject({ group, version: "v1", namespace, plural: "widgets" }),
        WAIT,
      )) as { metadata: { resourceVersion: string }; items: unknown[] };
      expect(list.items).toEqual([]);

      const events: { type: string; name: string; size?: number }[] = [];
      let watchError: unknown;
      const watch = await new k8s.Watch(kc).watch(
        `/apis/${group}/v1/namespaces/${namespace}/widgets`,
        { resourceVersion: list.metadata.resourceVersion },
        (type, obj: { metadata: { name: string }; spec?: { size?: number } }) => events.push({ type, name: obj.metadata.name, size: obj.spec?.size }),
        (err) => (watchError = err),
      );
      try {
        // The schema is enforced: size must be >= 1.
        const invalid = await objects
          .createNamespacedCustomObject({ group, version: "v1", namespace, plural: "widgets", body: { apiVersion: `${group}/v1`, kind: "Widget", metadata: { name: "bad" }, spec: { size: 0 } } })
          .then(() => undefined, (err: unknown) => statusCode(err));
        expect(invalid).toBe(422);

        await objects.createNamespacedCustomObject({
          group, version: "v1", namespace, plural: "widgets",
          body: { apiVersion: `${group}/v1`, kind: "Widget", metadata: { name: "w1" }, spec: { size: 3 } },
        });
        await vi.waitFor(() => expect(events).toContainEqual({ type: "ADDED", name: "w1", size: 3 }), WAIT);

        await objects.deleteNamespacedCustomObject({ group, version: "v1", namespace, plural: "widgets", name: "w1" });
        await vi.waitFor(() => expect(events).toContainEqual({ type: "DELETED", name: "w1", size: 3 }), WAIT);
        const gone = await objects
          .getNamespacedCustomObject({ group, version: "v1", namespace, plural: "widgets", name: "w1" })
          .then(() => 200, (err: unknown) => statusCode(err));
        expect(gone).toBe(404);
        expect(watchError).toBeUndefined();
        expect(events.filter((e) => e.name === "bad")).toEqual([]);
      } finally {
        watch.abort();
      }
    } finally {
      await ext.deleteCustomResourceDefinition({ name: crdName });
    }
  });

  it("finishes deleting a namespace and its contents (namespace controller)", async () => {
    const ns = await freshNamespace("smoke-nsdel");
    await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: "content" }, data: { a: "b" } } });
    await core.deleteNamespace({ name: ns });
    // The namespace first turns Terminating; only the namespace controller can remove it.
    await vi.waitFor(async () => {
      const status = await core.readNamespace({ name: ns }).then(() => 200, (err: unknown) => statusCode(err));
      expect(status).toBe(404);
    }, WAIT);
  });

  it("garbage-collects a child whose owner was deleted (garbage collector)", async () => {
    const parent = await core.createNamespacedConfigMap({ namespace, body: { metadata: { name: "parent" }, data: { role: "owner" } } });
    await core.createNamespacedConfigMap({
      namespace,
      body: {
        metadata: {
          name: "child",
          ownerReferences: [{ apiVersion: "v1", kind: "ConfigMap", name: "parent", uid: parent.metadata!.uid! }],
        },
        data: { role: "dependent" },
      },
    });
    const unrelated = await core.createNamespacedConfigMap({ namespace, body: { metadata: { name: "unrelated" } } });
    expect((await core.readNamespacedConfigMap({ namespace, name: "child" })).metadata?.ownerReferences?.[0]?.uid).toBe(parent.metadata!.uid);

    await core.deleteNamespacedConfigMap({ namespace, name: "parent", propagationPolicy: "Background" });
    await vi.waitFor(async () => {
      const status = await core.readNamespacedConfigMap({ namespace, name: "child" }).then(() => 200, (err: unknown) => statusCode(err));
      expect(status).toBe(404);
    }, WAIT);
    // Only the dependent went away.
    expect((await core.readNamespacedConfigMap({ namespace, name: "unrelated" })).metadata?.uid).toBe(unrelated.metadata!.uid);
  });

  it("runs the service-account controllers: default ServiceAccount and a bound token", async () => {
    await vi.waitFor(() => core.readNamespacedServiceAccount({ namespace, name: "default" }), WAIT);
    const tr = await core.createNamespacedServiceAccountToken({
      namespace,
      name: "default",
      body: { spec: { audiences: ["vmforge-smoke"], expirationSeconds: 600 } },
    });
    const token = tr.status?.token ?? "";
    expect(token.split(".")).toHaveLength(3);
    const review = await kubeAdmin().expect("POST", "/apis/authentication.k8s.io/v1/tokenreviews", {
      apiVersion: "authentication.k8s.io/v1",
      kind: "TokenReview",
      spec: { token, audiences: ["vmforge-smoke"] },
    });
    const status = (review.body as { status: { authenticated?: boolean; user?: { username?: string } } }).status;
    expect(status.authenticated).toBe(true);
    expect(status.user?.username).toBe(`system:serviceaccount:${namespace}:default`);
  });
});
