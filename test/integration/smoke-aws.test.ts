// Smoke tests of the moto server (AWS emulator) through the AWS SDK v3 clients vmforge uses.
import { CloudWatchLogsClient, CreateLogGroupCommand, CreateLogStreamCommand, DeleteLogGroupCommand, GetLogEventsCommand, PutLogEventsCommand } from "@aws-sdk/client-cloudwatch-logs";
import { DescribeImagesCommand, DescribeInstancesCommand, EC2Client, RunInstancesCommand, TerminateInstancesCommand } from "@aws-sdk/client-ec2";
import {
  AddRoleToInstanceProfileCommand, CreateAccessKeyCommand, CreateInstanceProfileCommand, CreateRoleCommand, CreateUserCommand,
  DeleteInstanceProfileCommand, DeleteRoleCommand, GetInstanceProfileCommand, GetRoleCommand, IAMClient, ListRolesCommand,
  PutUserPolicyCommand, RemoveRoleFromInstanceProfileCommand,
} from "@aws-sdk/client-iam";
import { GetCallerIdentityCommand, STSClient } from "@aws-sdk/client-sts";
import { beforeAll, describe, expect, it } from "vitest";
import { awsTestConfig, motoEndpoint, motoReset, randomSuffix } from "../harness/helpers.js";
import { startMoto } from "../harness/moto.js";

describe("moto (AWS emulator)", () => {
  beforeAll(async () => {
    await motoReset();
  });

  it("listens on loopback and answers STS as the emulated account", async () => {
    expect(new URL(motoEndpoint()).hostname).toBe("127.0.0.1");
    const id = await new STSClient(awsTestConfig()).send(new GetCallerIdentityCommand({}));
    expect(id.Account).toMatch(/^\d{12}$/);
  });

  it("creates and deletes an IAM role and instance profile", async () => {
    const iam = new IAMClient(awsTestConfig());
    const name = `TowerForge-smoke-${randomSuffix()}`;
    const trust = { Version: "2012-10-17", Statement: [{ Effect: "Allow", Principal: { Service: "ec2.amazonaws.com" }, Action: "sts:AssumeRole" }] };
    const role = await iam.send(new CreateRoleCommand({ RoleName: name, AssumeRolePolicyDocument: JSON.stringify(trust), Tags: [{ Key: "vmforge.dev/owner", Value: "smoke" }] }));
    expect(role.Role?.Arn).toMatch(new RegExp(`^arn:aws:iam::\\d{12}:role/${name}$`));
    await iam.send(new CreateInstanceProfileCommand({ InstanceProfileName: name }));
    await iam.send(new AddRoleToInstanceProfileCommand({ InstanceProfileName: name, RoleName: name }));

    const profile = await iam.send(new GetInstanceProfileCommand({ InstanceProfileName: name }));
    expect(profile.InstanceProfile?.Roles?.map((r) => r.RoleName)).toEqual([name]);

    await iam.send(new RemoveRoleFromInstanceProfileCommand({ InstanceProfileName: name, RoleName: name }));
    await iam.send(new DeleteInstanceProfileCommand({ InstanceProfileName: name }));
    await iam.send(new DeleteRoleCommand({ RoleName: name }));
    await expect(iam.send(new GetRoleCommand({ RoleName: name }))).rejects.toMatchObject({ name: "NoSuchEntityException" });
    await expect(iam.send(new GetInstanceProfileCommand({ InstanceProfileName: name }))).rejects.toMatchObject({ name: "NoSuchEntityException" });
  });

  it("runs an EC2 instance with tags and finds it by a tag filter", async () => {
    const ec2 = new EC2Client(awsTestConfig("eu-west-1"));
    const images = await ec2.send(new DescribeImagesCommand({ Filters: [{ Name: "architecture", Values: ["x86_64"] }] }));
    const imageId = images.Images?.[0]?.ImageId;
    expect(imageId).toMatch(/^ami-/);

    const runTag = randomSuffix();
    const run = await ec2.send(
      new RunInstancesCommand({
        ImageId: imageId,
        InstanceType: "m6i.large",
        MinCount: 1,
        MaxCount: 1,
        TagSpecifications: [{ ResourceType: "instance", Tags: [{ Key: "vmforge.dev/run", Value: runTag }, { Key: "Name", Value: "smoke" }] }],
      }),
    );
    const instanceId = run.Instances?.[0]?.InstanceId;
    expect(instanceId).toMatch(/^i-/);
    // A second, untagged instance must not match the filter.
    await ec2.send(new RunInstancesCommand({ ImageId: imageId, InstanceType: "t3.micro", MinCount: 1, MaxCount: 1 }));

    const found = await ec2.send(new DescribeInstancesCommand({ Filters: [{ Name: "tag:vmforge.dev/run", Values: [runTag] }] }));
    const instances = (found.Reservations ?? []).flatMap((r) => r.Instances ?? []);
    expect(instances.map((i) => i.InstanceId)).toEqual([instanceId]);
    expect(instances[0]?.InstanceType).toBe("m6i.large");
    expect(instances[0]?.Tags).toContainEqual({ Key: "vmforge.dev/run", Value: runTag });

    const none = await ec2.send(new DescribeInstancesCommand({ Filters: [{ Name: "tag:vmforge.dev/run", Values: [`${runTag}-other`] }] }));
    expect((none.Reservations ?? []).flatMap((r) => r.Instances ?? [])).toEqual([]);

    const term = await ec2.send(new TerminateInstancesCommand({ InstanceIds: [instanceId!] }));
    expect(term.TerminatingInstances?.[0]?.InstanceId).toBe(instanceId);
  });

  it("writes a CloudWatch Logs event and reads it back", async () => {
    const logs = new CloudWatchLogsClient(awsTestConfig());
    const group = `/vmforge/smoke-${randomSuffix()}`;
    const stream = "run-1";
    await logs.send(new CreateLogGroupCommand({ logGroupName: group }));
    await logs.send(new CreateLogStreamCommand({ logGroupName: group, logStreamName: stream }));
    const now = Date.now();
    await logs.send(
      new PutLogEventsCommand({
        logGroupName: group,
        logStreamName: stream,
        logEvents: [
          { timestamp: now, message: "N E X T F L O W  ~  version 25.04.0" },
          { timestamp: now + 1, message: "pipeline completed" },
        ],
      }),
    );
    const got = await logs.send(new GetLogEventsCommand({ logGroupName: group, logStreamName: stream, startFromHead: true }));
    expect(got.events?.map((e) => e.message)).toEqual(["N E X T F L O W  ~  version 25.04.0", "pipeline completed"]);
    await logs.send(new DeleteLogGroupCommand({ logGroupName: group }));
  });

  it("forgets everything on reset", async () => {
    const iam = new IAMClient(awsTestConfig());
    const name = `reset-probe-${randomSuffix()}`;
    await iam.send(new CreateInstanceProfileCommand({ InstanceProfileName: name }));
    await motoReset();
    await expect(iam.send(new GetInstanceProfileCommand({ InstanceProfileName: name }))).rejects.toMatchObject({ name: "NoSuchEntityException" });
  });

  it("can run a separate moto that enforces IAM policies (for least-privilege tests)", async () => {
    // The first three requests are unauthenticated (set-up); everything after is checked against IAM.
    const moto = await startMoto({ env: { INITIAL_NO_AUTH_ACTION_COUNT: "3" } });
    try {
      const base = { ...awsTestConfig(), endpoint: moto.endpoint };
      const setup = new IAMClient(base);
      await setup.send(new CreateUserCommand({ UserName: "limited" }));
      const key = (await setup.send(new CreateAccessKeyCommand({ UserName: "limited" }))).AccessKey!;
      const policy = { Version: "2012-10-17", Statement: [{ Effect: "Allow", Action: "iam:ListRoles", Resource: "*" }] };
      await setup.send(new PutUserPolicyCommand({ UserName: "limited", PolicyName: "list-roles", PolicyDocument: JSON.stringify(policy) }));

      // From now on the placeholder credentials are unknown to the emulated account ...
      await expect(setup.send(new ListRolesCommand({}))).rejects.toMatchObject({ name: "InvalidClientTokenId" });
      // ... and the user may do exactly what its policy allows.
      const limited = new IAMClient({ ...base, credentials: { accessKeyId: key.AccessKeyId!, secretAccessKey: key.SecretAccessKey! } });
      expect((await limited.send(new ListRolesCommand({}))).Roles).toEqual([]);
      const trust = { Version: "2012-10-17", Statement: [{ Effect: "Allow", Principal: { Service: "ec2.amazonaws.com" }, Action: "sts:AssumeRole" }] };
      await expect(limited.send(new CreateRoleCommand({ RoleName: "nope", AssumeRolePolicyDocument: JSON.stringify(trust) }))).rejects.toMatchObject({ name: "AccessDenied" });

      // The shared moto server is unaffected: it still accepts the placeholder credentials.
      await new IAMClient(awsTestConfig()).send(new ListRolesCommand({}));
    } finally {
      await moto.stop();
    }
  });
});
