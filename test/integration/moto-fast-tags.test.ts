// The harness loads test/harness/moto_fast_tags.py into moto (a tag read that does not scan every
// tagged resource, issue 13). This proves its answers unchanged: a stock moto and a patched moto,
// seeded alike and given the same requests, answer the same DescribeInstances calls identically,
// for tag, tag-key, tag-value, state and instance-id filters, wildcards and pagination.
import { CreateTagsCommand, DeleteTagsCommand, DescribeImagesCommand, DescribeInstancesCommand, EC2Client, RunInstancesCommand, TerminateInstancesCommand, type DescribeInstancesCommandInput, type Filter } from "@aws-sdk/client-ec2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startMoto, type Moto } from "../harness/moto.js";

const REGION = "eu-west-1";
const servers: { stock?: Moto; fast?: Moto } = {};
const ec2: { stock?: EC2Client; fast?: EC2Client } = {};
let ids: string[] = [];

function client(m: Moto): EC2Client {
  return new EC2Client({ endpoint: m.endpoint, region: REGION, credentials: { accessKeyId: "testing", secretAccessKey: "testing" }, maxAttempts: 1 });
}

/** Sends the same command to both servers, one after the other (same order of random draws). */
async function both<T>(send: (c: EC2Client) => Promise<T>): Promise<[T, T]> {
  const a = await send(ec2.stock!);
  const b = await send(ec2.fast!);
  return [a, b];
}

/** Times differ between two servers by the clock, not by the lookup. */
const CLOCK_FIELDS = new Set(["LaunchTime", "AttachTime", "UsageOperationUpdateTime", "StateTransitionReason"]);
function withoutClock(v: unknown): unknown {
  return JSON.parse(JSON.stringify(v, (k, x: unknown) => (CLOCK_FIELDS.has(k) ? undefined : x)));
}

/** All pages of a DescribeInstances call, without what differs per call (request ids) or by the clock. */
async function pages(c: EC2Client, input: DescribeInstancesCommandInput): Promise<unknown[]> {
  const out: unknown[] = [];
  let token: string | undefined;
  do {
    const res = await c.send(new DescribeInstancesCommand({ ...input, ...(token ? { NextToken: token } : {}) }));
    token = res.NextToken;
    out.push(withoutClock({ Reservations: res.Reservations, NextToken: res.NextToken }));
  } while (token && out.length < 100);
  return out;
}

beforeAll(async () => {
  [servers.stock, servers.fast] = await Promise.all([startMoto({ fastTags: false }), startMoto({ fastTags: true })]);
  ec2.stock = client(servers.stock);
  ec2.fast = client(servers.fast);
  for (const m of [servers.stock, servers.fast]) {
    const res = await fetch(new URL("/moto-api/seed?a=1913", m.endpoint), { method: "POST" });
    expect(res.status).toBe(200);
  }
  const [images] = await both((c) => c.send(new DescribeImagesCommand({ Owners: ["amazon"] })));
  const imageId = images.Images!.find((i) => i.Architecture === "x86_64")!.ImageId!;
  for (let i = 0; i < 24; i++) {
    const tags = [
      { Key: "group", Value: ["a", "b", "c"][i % 3]! },
      { Key: "n", Value: `n-${i}` },
      ...(i % 4 === 0 ? [{ Key: "flag", Value: "x" }] : []),
    ];
    const [a, b] = await both((c) =>
      c.send(
        new RunInstancesCommand({
          ImageId: imageId,
          MinCount: 1,
          MaxCount: i % 5 === 0 ? 2 : 1,
          InstanceType: "t3.micro",
          ClientToken: `token-${i}`,
          TagSpecifications: [{ ResourceType: "instance", Tags: tags }, { ResourceType: "volume", Tags: tags }],
        }),
      ),
    );
    // Seeded alike, both servers hand out the same ids: answers can be compared as they are.
    expect(b.Instances!.map((x) => x.InstanceId)).toEqual(a.Instances!.map((x) => x.InstanceId));
    ids.push(...a.Instances!.map((x) => x.InstanceId!));
  }
  await both((c) => c.send(new TerminateInstancesCommand({ InstanceIds: ids.slice(0, 5) })));
  await both((c) => c.send(new CreateTagsCommand({ Resources: ids.slice(3, 9), Tags: [{ Key: "late", Value: "y" }, { Key: "group", Value: "d" }] })));
  await both((c) => c.send(new DeleteTagsCommand({ Resources: ids.slice(6, 8), Tags: [{ Key: "flag" }, { Key: "late" }] })));
});

afterAll(async () => {
  ec2.stock?.destroy();
  ec2.fast?.destroy();
  await Promise.allSettled([servers.stock?.stop(), servers.fast?.stop()]);
  ids = [];
});

describe("moto with fast tag reads answers DescribeInstances exactly as stock moto", () => {
  const cases: [string, () => DescribeInstancesCommandInput][] = [
    ["no filter", () => ({})],
    ["tag:K one value", () => ({ Filters: [{ Name: "tag:group", Values: ["a"] }] })],
    ["tag:K several values", () => ({ Filters: [{ Name: "tag:group", Values: ["b", "d"] }] })],
    ["tag:K wildcard", () => ({ Filters: [{ Name: "tag:n", Values: ["n-1*"] }] })],
    ["tag-key", () => ({ Filters: [{ Name: "tag-key", Values: ["flag"] }] })],
    ["tag-key added later", () => ({ Filters: [{ Name: "tag-key", Values: ["late"] }] })],
    ["tag-value", () => ({ Filters: [{ Name: "tag-value", Values: ["x", "y"] }] })],
    ["two tag filters", () => ({ Filters: [{ Name: "tag:group", Values: ["a", "d"] }, { Name: "tag-key", Values: ["flag"] }] })],
    ["tag and state", () => ({ Filters: [{ Name: "tag:group", Values: ["a", "b", "c", "d"] }, { Name: "instance-state-name", Values: ["running", "pending"] }] })],
    ["state only", () => ({ Filters: [{ Name: "instance-state-name", Values: ["terminated"] }] })],
    ["instance ids", () => ({ InstanceIds: ids.slice(2, 7) })],
    ["instance-id filter with a tag", () => ({ Filters: [{ Name: "instance-id", Values: ids.slice(0, 12) }, { Name: "tag:group", Values: ["c"] }] })],
    ["tag:K many values", () => ({ Filters: [{ Name: "tag:n", Values: Array.from({ length: 30 }, (_, i) => `n-${i}`) }] as Filter[] })],
    ["no match", () => ({ Filters: [{ Name: "tag:group", Values: ["zzz"] }] })],
    ["paginated, tag filter", () => ({ Filters: [{ Name: "tag-key", Values: ["group"] }], MaxResults: 5 })],
    ["paginated, no filter", () => ({ MaxResults: 6 })],
  ];
  it.each(cases)("%s", async (_name, input) => {
    const [stock, fast] = await both((c) => pages(c, input()));
    expect(fast).toEqual(stock);
    // The comparison means something: the case returns what it should on at least one page.
    expect(stock.length).toBeGreaterThan(0);
  });

  it("the cases do select instances (not all empty answers)", async () => {
    const [stock] = await both((c) => pages(c, { Filters: [{ Name: "tag:group", Values: ["a"] }] }));
    const found = (stock as { Reservations?: { Instances?: unknown[] }[] }[]).flatMap((p) => p.Reservations ?? []).flatMap((r) => r.Instances ?? []);
    expect(found.length).toBeGreaterThan(3);
  });
});
