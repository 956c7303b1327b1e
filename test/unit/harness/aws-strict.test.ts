// The strict AWS layer's pure parts: IAM policy evaluation, SigV4 verification, request reading
// and the small XML reader/writer. The layer itself is tested through the AWS SDK in
// test/integration/aws-strict-layer.test.ts.
import { createHash, createHmac } from "node:crypto";
import { describe, expect, it } from "vitest";
import { evaluate, globMatch, trustAllows, type PolicyDocument } from "../../../test/harness/aws-strict/policy-eval.js";
import { verifySigV4 } from "../../../test/harness/aws-strict/sigv4.js";
import { describeRequest, ec2Filters, queryList } from "../../../test/harness/aws-strict/wire.js";
import { elements, parseXml, textOf, writeXml } from "../../../test/harness/aws-strict/xml.js";

const doc = (...Statement: PolicyDocument["Statement"][]): PolicyDocument[] => Statement.map((s) => ({ Version: "2012-10-17", Statement: s }));

describe("policy evaluation", () => {
  it("matches actions case-insensitively and resources case-sensitively, with * and ?", () => {
    expect(globMatch("iam:Create*", "IAM:createrole", true)).toBe(true);
    expect(globMatch("arn:aws:iam::*:role/TowerForge-*", "arn:aws:iam::123456789012:role/TowerForge-a")).toBe(true);
    expect(globMatch("arn:aws:iam::*:role/TowerForge-*", "arn:aws:iam::123456789012:role/towerforge-a")).toBe(false);
    expect(globMatch("arn:aws:s3:::b/?x", "arn:aws:s3:::b/ax")).toBe(true);
    expect(globMatch("arn:aws:s3:::b/?x", "arn:aws:s3:::b/abx")).toBe(false);
    expect(globMatch("a.b", "aXb")).toBe(false);
  });

  it("explicit Deny beats Allow; nothing allowed is an implicit deny", () => {
    const p = doc(
      { Effect: "Allow", Action: "ec2:*", Resource: "*" },
      { Effect: "Deny", Action: "ec2:TerminateInstances", Resource: "arn:aws:ec2:*:*:instance/i-keep" },
    );
    expect(evaluate(p, "ec2:TerminateInstances", "arn:aws:ec2:eu-west-1:1:instance/i-other")).toBe("Allow");
    expect(evaluate(p, "ec2:TerminateInstances", "arn:aws:ec2:eu-west-1:1:instance/i-keep")).toBe("ExplicitDeny");
    expect(evaluate(p, "iam:GetRole", "*")).toBe("ImplicitDeny");
    expect(evaluate([], "iam:GetRole", "*")).toBe("ImplicitDeny");
  });

  it("NotAction and NotResource", () => {
    const p = doc({ Effect: "Allow", NotAction: ["iam:*"], NotResource: "arn:aws:s3:::secret/*", Resource: undefined });
    expect(evaluate(p, "s3:GetObject", "arn:aws:s3:::open/k")).toBe("Allow");
    expect(evaluate(p, "s3:GetObject", "arn:aws:s3:::secret/k")).toBe("ImplicitDeny");
    expect(evaluate(p, "iam:GetRole", "arn:aws:iam::1:role/x")).toBe("ImplicitDeny");
  });

  it("conditions: equality, likeness, IfExists, negation on a missing key, unknown operators fail closed", () => {
    const st = (Condition: Record<string, Record<string, string | string[]>>): PolicyDocument[] => doc({ Effect: "Allow", Action: "*", Resource: "*", Condition });
    expect(evaluate(st({ StringEquals: { "aws:RequestedRegion": ["eu-west-1", "us-east-1"] } }), "ec2:X", "*", { "aws:RequestedRegion": "us-east-1" })).toBe("Allow");
    expect(evaluate(st({ StringEquals: { "aws:RequestedRegion": "eu-west-1" } }), "ec2:X", "*", { "aws:RequestedRegion": "us-east-1" })).toBe("ImplicitDeny");
    expect(evaluate(st({ StringEquals: { "aws:RequestedRegion": "eu-west-1" } }), "ec2:X", "*", {})).toBe("ImplicitDeny");
    expect(evaluate(st({ StringEqualsIfExists: { "ec2:CreateAction": "RunInstances" } }), "ec2:X", "*", {})).toBe("Allow");
    expect(evaluate(st({ StringNotEquals: { "ec2:CreateAction": "RunInstances" } }), "ec2:X", "*", {})).toBe("Allow");
    expect(evaluate(st({ StringLike: { "aws:PrincipalArn": "arn:aws:iam::*:user/op-*" } }), "ec2:X", "*", { "aws:PrincipalArn": "arn:aws:iam::1:user/op-1" })).toBe("Allow");
    expect(evaluate(st({ NumericLessThan: { "aws:MultiFactorAuthAge": "3600" } }), "ec2:X", "*", { "aws:MultiFactorAuthAge": "10" })).toBe("ImplicitDeny");
  });

  it("trust policies: a named principal, the account, conditions", () => {
    const trust: PolicyDocument = {
      Version: "2012-10-17",
      Statement: [
        { Effect: "Allow", Principal: { AWS: "arn:aws:iam::1:user/a" }, Action: "sts:AssumeRole", Condition: { StringEquals: { "sts:ExternalId": "x" } } },
        { Effect: "Allow", Principal: { AWS: "1" }, Action: "sts:AssumeRole" },
      ],
    };
    expect(trustAllows(trust, "arn:aws:iam::1:user/a", "1", { "sts:ExternalId": "x" })).toBe("exact");
    expect(trustAllows(trust, "arn:aws:iam::1:user/a", "1", { "sts:ExternalId": "y" })).toBe("account");
    expect(trustAllows(trust, "arn:aws:iam::2:user/a", "2", {})).toBeUndefined();
  });
});

function sign(method: string, url: string, headers: Record<string, string>, body: string, secret: string, service: string, region = "eu-west-1"): Record<string, string> {
  const amzDate = "20261201T120000Z";
  const date = amzDate.slice(0, 8);
  const h: Record<string, string> = { ...headers, "x-amz-date": amzDate };
  const names = Object.keys(h).map((k) => k.toLowerCase()).sort();
  const [path, query = ""] = url.split("?");
  const canonQuery = query.split("&").filter(Boolean).sort().join("&");
  const canonical = [method, path, canonQuery, names.map((n) => `${n}:${h[n]}\n`).join(""), names.join(";"), createHash("sha256").update(body).digest("hex")].join("\n");
  const scope = `${date}/${region}/${service}/aws4_request`;
  const toSign = ["AWS4-HMAC-SHA256", amzDate, scope, createHash("sha256").update(canonical).digest("hex")].join("\n");
  const k = [date, region, service, "aws4_request"].reduce<Buffer | string>((key, part) => createHmac("sha256", key).update(part).digest(), `AWS4${secret}`);
  const sig = createHmac("sha256", k).update(toSign).digest("hex");
  return { ...h, authorization: `AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/${scope}, SignedHeaders=${names.join(";")}, Signature=${sig}` };
}

describe("SigV4 verification and request reading", () => {
  const body = "Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=tag%3Aa&Filter.1.Value.1=x&Filter.1.Value.2=y&InstanceId.2=i-2&InstanceId.1=i-1";
  const headers = sign("POST", "/", { host: "127.0.0.1:1", "content-type": "application/x-www-form-urlencoded" }, body, "s3cr3t", "ec2");

  it("accepts the right secret and refuses another or a changed body", () => {
    expect(verifySigV4({ method: "POST", url: "/", headers, body: Buffer.from(body) }, "s3cr3t")).toBe("ok");
    expect(verifySigV4({ method: "POST", url: "/", headers, body: Buffer.from(body) }, "other")).toBe("mismatch");
    expect(verifySigV4({ method: "POST", url: "/", headers, body: Buffer.from(`${body}&x=1`) }, "s3cr3t")).toBe("mismatch");
    expect(verifySigV4({ method: "POST", url: "/", headers: { host: "h" }, body: Buffer.from(body) }, "s3cr3t")).toBe("malformed");
  });

  it("reads service, region, key, operation, filters and lists of a query request", () => {
    const r = describeRequest("POST", "/", headers, Buffer.from(body))!;
    expect([r.service, r.region, r.accessKeyId, r.operation, r.action]).toEqual(["ec2", "eu-west-1", "AKIDEXAMPLE", "DescribeInstances", "ec2:DescribeInstances"]);
    expect(ec2Filters(r.params)).toEqual([{ name: "tag:a", values: ["x", "y"] }]);
    expect(queryList(r.params, "InstanceId")).toEqual(["i-1", "i-2"]);
  });

  it("reads S3 operations from method and path, and JSON operations from X-Amz-Target", () => {
    const auth = { authorization: "AWS4-HMAC-SHA256 Credential=K/20261201/eu-west-1/s3/aws4_request, SignedHeaders=host, Signature=0" };
    expect(describeRequest("GET", "/b/runs/x%20y", auth, Buffer.alloc(0))).toMatchObject({ operation: "GetObject", action: "s3:GetObject", bucket: "b", key: "runs/x y" });
    expect(describeRequest("HEAD", "/b/k", auth, Buffer.alloc(0))).toMatchObject({ operation: "HeadObject", action: "s3:GetObject" });
    expect(describeRequest("GET", "/b?list-type=2", auth, Buffer.alloc(0))).toMatchObject({ operation: "ListObjectsV2", action: "s3:ListBucket" });
    expect(describeRequest("GET", "/", auth, Buffer.alloc(0))).toMatchObject({ action: "s3:ListAllMyBuckets" });
    const logs = { authorization: "AWS4-HMAC-SHA256 Credential=K/20261201/eu-west-1/logs/aws4_request, SignedHeaders=host, Signature=0", "x-amz-target": "Logs_20140328.GetLogEvents" };
    expect(describeRequest("POST", "/", logs, Buffer.from('{"logGroupName":"g","logStreamName":"s"}'))).toMatchObject({ action: "logs:GetLogEvents", json: { logGroupName: "g", logStreamName: "s" } });
    expect(describeRequest("POST", "/moto-api/reset", {}, Buffer.alloc(0))).toBeUndefined();
  });
});

describe("XML", () => {
  it("writes back exactly what it read, and finds elements and decoded text", () => {
    const text = `<?xml version="1.0" encoding="UTF-8"?>\n<R xmlns="x"><a>1 &amp; 2</a><set><item><id>i-1</id><tags><item><k>n</k></item></tags></item><item><id>i-2</id></item></set><e/></R>`;
    const d = parseXml(text);
    expect(writeXml(d)).toBe(text);
    expect(textOf(d.root, "a")).toBe("1 & 2");
    const items = elements(d.root.children.find((c) => typeof c !== "string" && c.name === "set") as never, "item");
    expect(items.map((i) => textOf(i, "id"))).toEqual(["i-1", "i-2"]);
  });
});
