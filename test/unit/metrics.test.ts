// The operator's own metrics (src/metrics.ts): CE readiness, Runs by phase, oldest active Run,
// run timing histograms from status timestamps, and cloud calls reported by the AWS clients'
// middleware (against a local HTTP server that answers like AWS: success, throttling, error).
import { createServer, type Server } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Registry } from "prom-client";
import { DescribeRegionsCommand } from "@aws-sdk/client-ec2";
import { GetCallerIdentityCommand } from "@aws-sdk/client-sts";
import { registerOperatorMetrics } from "../../src/metrics.js";
import { setCloudCallObserver } from "../../src/cloud/call-metrics.js";
import { awsClients } from "../../src/cloud/aws/clients.js";
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import type { KubeClient } from "../../src/engine/kube.js";
import { noteFreshRead, setFreshReadObserver } from "../../src/controllers/fresh-reads.js";
import { releaseUnusedSecrets } from "../../src/controllers/shared.js";

const T0 = Date.parse("2026-01-01T00:00:00Z");
const iso = (s: number) => new Date(T0 + s * 1000).toISOString().replace(/\.\d{3}Z$/, "Z");
const cond = (type: string, status: "True" | "False", reason = "R") => ({ type, status, reason, message: "", lastTransitionTime: iso(0) });

function ce(name: string, ready: boolean, stalledReason?: string): ComputeEnvironment {
  return {
    metadata: { name, namespace: "ns" },
    spec: { provider: "aws" } as ComputeEnvironment["spec"],
    status: { conditions: [cond("Ready", ready ? "True" : "False"), cond("Stalled", stalledReason ? "True" : "False", stalledReason ?? "Progressing")] },
  };
}
function run(uid: string, status: Run["status"], created = 0): Run {
  return { metadata: { name: uid, namespace: "ns", uid, creationTimestamp: iso(created) }, spec: {} as Run["spec"], status };
}

afterAll(() => setCloudCallObserver(undefined));

describe("reads past the watch caches", () => {
  it("are counted by resource and why, where the controllers send them", async () => {
    const registry = new Registry();
    const names = registerOperatorMetrics(registry, { ces: () => [], runs: () => [] });
    expect(names).toContain("vmforge_fresh_reads_total");
    try {
      noteFreshRead("runs", "launch-in-flight");
      noteFreshRead("runs", "launch-in-flight");
      // Releasing unused Secrets lists Secrets and CEs from the API: both counted.
      const lists: string[] = [];
      const client = { list: async (rt: { plural: string }) => { lists.push(rt.plural); return { items: [] }; } } as unknown as KubeClient;
      await releaseUnusedSecrets(client, "ns");
      expect(lists.sort()).toEqual(["computeenvironments", "secrets"]);
      const text = await registry.metrics();
      expect(text).toContain('vmforge_fresh_reads_total{resource="runs",why="launch-in-flight"} 2');
      expect(text).toContain('vmforge_fresh_reads_total{resource="secrets",why="secret-release"} 1');
      expect(text).toContain('vmforge_fresh_reads_total{resource="computeenvironments",why="secret-release"} 1');
    } finally {
      setFreshReadObserver(undefined);
    }
  });
});

describe("operator metrics from the caches", () => {
  it("CE readiness and Stalled reason, Runs per phase, the oldest active Run per phase", async () => {
    const registry = new Registry();
    let now = T0 + 1000 * 1000;
    const runs: Run[] = [
      run("a", { phase: "Pending" }, 100),
      run("b", undefined, 900),
      run("c", { phase: "Launching", launchedAt: iso(700) }, 600),
      run("d", { phase: "Launching" }, 400),
      run("e", { phase: "Succeeded" }),
    ];
    const names = registerOperatorMetrics(registry, { ces: () => [ce("ok", true), ce("bad", false, "InvalidSpec")], runs: () => runs, now: () => now });
    expect(names).toContain("vmforge_cloud_requests_total");
    const text = await registry.metrics();
    expect(text).toContain('vmforge_computeenvironment_ready{namespace="ns",name="ok",provider="aws"} 1');
    expect(text).toContain('vmforge_computeenvironment_ready{namespace="ns",name="bad",provider="aws"} 0');
    expect(text).toContain('vmforge_computeenvironment_stalled{namespace="ns",name="bad",provider="aws",reason="InvalidSpec"} 1');
    expect(text).toContain('vmforge_computeenvironment_stalled{namespace="ns",name="ok",provider="aws",reason=""} 0');
    expect(text).toContain('vmforge_runs{namespace="ns",phase="Pending"} 2');
    expect(text).toContain('vmforge_runs{namespace="ns",phase="Launching"} 2');
    expect(text).toContain('vmforge_runs{namespace="ns",phase="Succeeded"} 1');
    expect(text).toContain('vmforge_run_oldest_seconds{phase="Pending"} 900');
    // d never launched: its age counts from creation (600 s), c from its launch (300 s).
    expect(text).toContain('vmforge_run_oldest_seconds{phase="Launching"} 600');
    expect(text).toContain('vmforge_run_oldest_seconds{phase="Running"} 0');
    now += 100_000;
    expect(await registry.metrics()).toContain('vmforge_run_oldest_seconds{phase="Pending"} 1000');
  });

  it("run timings: observed once per Run from its timestamps, never for Runs from before the process started", async () => {
    const registry = new Registry();
    const start = T0 + 10_000 * 1000;
    const runs: Run[] = [
      run("old", { phase: "Succeeded", launchedAt: iso(10), startTime: iso(20), completionTime: iso(30) }),
      run("new", { phase: "Running", launchedAt: iso(10_030), startTime: iso(10_060) }, 10_000),
    ];
    registerOperatorMetrics(registry, { ces: () => [], runs: () => runs, now: () => start });
    let text = await registry.metrics();
    expect(text).toContain("vmforge_run_launch_seconds_count 1");
    expect(text).toContain("vmforge_run_launch_seconds_sum 30");
    expect(text).toContain("vmforge_run_start_seconds_sum 60");
    expect(text).not.toMatch(/vmforge_run_duration_seconds_count\{phase="Succeeded"\} [1-9]/);
    runs[1] = run("new", { phase: "Failed", launchedAt: iso(10_030), startTime: iso(10_060), completionTime: iso(10_630) }, 10_000);
    text = await registry.metrics();
    expect(text).toContain("vmforge_run_launch_seconds_count 1");
    expect(text).toContain('vmforge_run_duration_seconds_sum{phase="Failed"} 600');
    expect(text).toContain('vmforge_run_duration_seconds_count{phase="Failed"} 1');
  });
});

describe("cloud call metrics from the AWS clients", () => {
  let server: Server;
  let endpoint = "";
  beforeAll(async () => {
    server = createServer((req, res) => {
      let body = "";
      req.on("data", (c: Buffer) => (body += c.toString()));
      req.on("end", () => {
        if (body.includes("Action=GetCallerIdentity")) {
          res.writeHead(200, { "content-type": "text/xml" });
          res.end('<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult><Arn>arn:aws:iam::123456789012:user/x</Arn><UserId>AIDA</UserId><Account>123456789012</Account></GetCallerIdentityResult></GetCallerIdentityResponse>');
        } else if (req.headers["x-test"] === "throttle" || body.includes("Action=DescribeRegions&Version=2016-11-15&AllRegions=true")) {
          res.writeHead(503, { "content-type": "text/xml" });
          res.end("<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>1</RequestID></Response>");
        } else {
          res.writeHead(400, { "content-type": "text/xml" });
          res.end("<Response><Errors><Error><Code>InvalidParameterValue</Code><Message>bad</Message></Error></Errors><RequestID>2</RequestID></Response>");
        }
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    endpoint = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  it("counts success, throttled and error by service and operation, with latency", async () => {
    const registry = new Registry();
    registerOperatorMetrics(registry, { ces: () => [], runs: () => [] });
    const c = awsClients({ credentials: { source: "secret", data: { accessKeyId: "AKIDEXAMPLE", secretAccessKey: "x" } }, region: "eu-west-1", endpoint, maxAttempts: 1 });
    try {
      await c.sts.send(new GetCallerIdentityCommand({}));
      await expect(c.ec2.send(new DescribeRegionsCommand({ AllRegions: true }))).rejects.toThrow(/limit/i);
      await expect(c.ec2.send(new DescribeRegionsCommand({}))).rejects.toThrow(/bad/);
    } finally {
      c.destroy();
    }
    const text = await registry.metrics();
    expect(text).toContain('vmforge_cloud_requests_total{provider="aws",service="STS",operation="GetCallerIdentity",outcome="success"} 1');
    expect(text).toContain('vmforge_cloud_requests_total{provider="aws",service="EC2",operation="DescribeRegions",outcome="throttled"} 1');
    expect(text).toContain('vmforge_cloud_requests_total{provider="aws",service="EC2",operation="DescribeRegions",outcome="error"} 1');
    expect(text).toContain('vmforge_cloud_request_duration_seconds_count{provider="aws",service="EC2",operation="DescribeRegions"} 2');
  });
});
