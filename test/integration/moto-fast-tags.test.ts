// The harness loads test/harness/moto_fast_tags.py into moto (a tag read that does not scan every
// tagged resource, issue 13). This proves its answers unchanged: on one server holding one state,
// the stock code and the fast code (switched at run time) answer the same DescribeInstances calls
// identically, for tag, tag-key, tag-value, state and instance-id filters, wildcards and
// pagination. (Two servers seeded alike do not reliably hand out the same ids, so the earlier
// two-server comparison flaked.)
import { CreateTagsCommand, DeleteTagsCommand, DescribeImagesCommand, DescribeInstancesCommand, EC2Client, RunInstancesCommand, TerminateInstancesCommand, type DescribeInstancesCommandInput, type Filter } from "@aws-sdk/client-ec2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startMoto, type Moto } from "../harness/moto.js";

const REGION = "eu-west-1";
let server: Moto | undefined;
let ec2: EC2Client | undefined;
let ids: string[] = [];

function client(m: Moto): EC2Client {
  return new EC2Client({ endpoint: m.endpoint, region: REGION, credentials: { accessKeyId: "testing", secretAccessKey: "testing" }, maxAttempts: 1 });
}

async function fastMode(to?: "on" | "off"): Promise<{ fast: boolean; fastReads: number }> {
  const res = await fetch(new URL(`/vmforge/fast-tags${to ? `/${to}` : ""}`, server!.endpoint), { method: to ? "POST" : "GET" });
  expect(res.status).toBe(200);
  return (await res.json()) as { fast: boolean; fastReads: number };
}

/** Sends the same read with the stock code, then with the fast code, on the same state; checks
 *  that the stock read did not go through the fast code and the fast read did. */
async function both<T>(send: (c: EC2Client) => Promise<T>): Promise<[T, T]> {
  const off = await fastMode("off");
  expect(off.fast).toBe(false);
  const a = await send(ec2!);
  const on = await fastMode("on");
  expect(on.fastReads).toBe(off.fastReads);
  const b = await send(ec2!);
  expect((await fastMode()).fastReads).toBeGreaterThan(on.fastReads);
  return [a, b];
}

/** All pages of a DescribeInstances call, without what differs per call (request ids). */
async function pages(c: EC2Client, input: DescribeInstancesCommandInput): Promise<unknown[]> {
  const out: unknown[] = [];
  let token: string | undefined;
  do {
    const res = await c.send(new DescribeInstancesCommand({ ...input, ...(token ? { NextToken: token } : {}) }));
    token = res.NextToken;
    out.push({ Reservations: res.Reservations, NextToken: res.NextToken });
  } while (token && out.length < 100);
  return out;
}

beforeAll(async () => {
  server = await startMoto({ fastTags: true });
  ec2 = client(server);
  // The fast code is what the harness runs by default.
  expect((await fastMode()).fast).toBe(true);
  const images = await ec2.send(new DescribeImagesCommand({ Owners: ["amazon"] }));
  const imageId = images.Images!.find((i) => i.Architecture === "x86_64")!.ImageId!;
  for (let i = 0; i < 24; i++) {
    const tags = [
      { Key: "group", Value: ["a", "b", "c"][i % 3]! },
      { Key: "n", Value: `n-${i}` },
      ...(i % 4 === 0 ? [{ Key: "flag", Value: "x" }] : []),
    ];
    const res = await ec2.send(
      new RunInstancesCommand({
        ImageId: imageId,
        MinCount: 1,
        MaxCount: i % 5 === 0 ? 2 : 1,
        InstanceType: "t3.micro",
        ClientToken: `token-${i}`,
        TagSpecifications: [{ ResourceType: "instance", Tags: tags }, { ResourceType: "volume", Tags: tags }],
      }),
    );
    ids.push(...res.Instances!.map((x) => x.InstanceId!));
  }
  await ec2.send(new TerminateInstancesCommand({ InstanceIds: ids.slice(0, 5) }));
  await ec2.send(new CreateTagsCommand({ Resources: ids.slice(3, 9), Tags: [{ Key: "late", Value: "y" }, { Key: "group", Value: "d" }] }));
  await ec2.send(new DeleteTagsCommand({ Resources: ids.slice(6, 8), Tags: [{ Key: "flag" }, { Key: "late" }] }));
});

afterAll(async () => {
  ec2?.destroy();
  await server?.stop();
  ids = [];
});

describe("moto with fast tag reads answers DescribeInstances exactly as the stock code", () => {
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
    ["the operator's narrow look: two tag filters and the states but running, paginated", () => ({ Filters: [{ Name: "tag-key", Values: ["group"] }, { Name: "tag:group", Values: ["a", "b", "c", "d"] }, { Name: "instance-state-name", Values: ["pending", "shutting-down", "terminated", "stopping", "stopped"] }], MaxResults: 5 })],
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
