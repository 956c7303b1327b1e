import { describe, expect, it } from "vitest";
import { DescribeInstancesCommand } from "@aws-sdk/client-ec2";
import { AwsProvider } from "../../../../src/cloud/aws/provider.js";
import type { EnvContext } from "../../../../src/cloud/provider.js";
import type { ComputeEnvironment } from "../../../../src/api/types.js";
import { createLogger } from "../../../../src/engine/logger.js";

const ce = { metadata: { name: "c", namespace: "n", uid: "u" }, spec: { provider: "aws", aws: { region: "eu-west-1", workDir: "s3://b/w" } } } as ComputeEnvironment;

function ctx(signal?: AbortSignal): EnvContext {
  return {
    ce, logger: createLogger({ level: "silent" }), ...(signal ? { signal } : {}),
    credentials: { source: "secret", secretName: "s", data: { accessKeyId: "AKIAEXAMPLE", secretAccessKey: "x" } },
  };
}

describe("AwsProvider and the reconcile's abort signal", () => {
  // Port 9 on loopback: nothing listens, so without the signal the call fails on the connection.
  const provider = new AwsProvider({ endpoint: "http://127.0.0.1:9", maxAttempts: 1 });

  it("every SDK call carries the context's signal: an aborted reconcile stops waiting on AWS", async () => {
    const aborted = AbortSignal.abort();
    const err = await provider.clientsFor(ctx(aborted)).ec2.send(new DescribeInstancesCommand({})).then(() => undefined, (e: Error) => e);
    expect(err?.name).toBe("AbortError");
  });

  it("without a signal the same call goes to the network (and fails there, not as an abort)", async () => {
    const err = await provider.clientsFor(ctx()).ec2.send(new DescribeInstancesCommand({})).then(() => undefined, (e: Error) => e);
    expect(err).toBeDefined();
    expect(err?.name).not.toBe("AbortError");
  });

  it("the cached clients are shared, the signal is not", () => {
    const a = provider.clientsFor(ctx(new AbortController().signal));
    const b = provider.clientsFor(ctx());
    expect(a.ec2).not.toBe(b.ec2);
    expect(a.ec2.middlewareStack).toBe(b.ec2.middlewareStack);
  });
});
