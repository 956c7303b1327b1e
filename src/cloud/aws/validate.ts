/**
 * Validation of `spec.aws` against the account (the seed's "validate" permissions, plus the
 * optional "read" ones used when granted). Resolves the defaults: instance type, newest Amazon
 * Linux 2023 AMI, default VPC, all subnets of the VPC.
 *
 * Every finding is a CloudError Terminal "InvalidSpec" whose message starts with the field and
 * names the value, e.g. `spec.aws.amiId: ami-123 not found in us-east-1`.
 *
 * Only ec2:Describe* calls are made. ec2:DescribeVpcs and ec2:DescribeKeyPairs belong to the
 * optional read set: when denied, the VPC is derived from subnets and the key pair is not checked
 * (a note says so).
 */
import {
  DescribeImagesCommand,
  DescribeInstanceTypesCommand,
  DescribeKeyPairsCommand,
  DescribeSecurityGroupsCommand,
  DescribeSubnetsCommand,
  DescribeVpcsCommand,
  type Filter,
  type Image,
  type SecurityGroup,
  type Subnet,
  type _InstanceType,
} from "@aws-sdk/client-ec2";
import {
  DEFAULT_AWS_GRAVITON_INSTANCE_TYPE,
  DEFAULT_AWS_INSTANCE_TYPE,
  DEFAULT_BOOT_DISK_GIB,
  MAX_BOOT_DISK_GIB,
  MIN_BOOT_DISK_GIB,
  SUPPORTED_AWS_REGIONS,
} from "../../api/constants.js";
import type { AwsEnvironment } from "../../api/types.js";
import { CloudError } from "../provider.js";
import { awsCall, awsErrorCode, hasAwsCode, type AwsClients } from "./clients.js";
import { checkUserTags, parseIamArn } from "./iam.js";
import { parseS3Url } from "./policy.js";

export type Architecture = "x86_64" | "arm64";

/** Owner alias and name patterns of the default image (Amazon Linux 2023, standard, not minimal). */
export const DEFAULT_AMI_OWNER = "amazon";
export function defaultAmiNamePattern(arch: Architecture): string {
  return `al2023-ami-2023.*-kernel-*-${arch}`;
}

export interface ValidatedAwsSpec {
  region: string;
  instanceType: string;
  architecture: Architecture;
  amiId: string;
  amiName?: string;
  rootDeviceName: string;
  /** Size of the AMI's root snapshot (the boot disk may not be smaller). */
  rootSnapshotGiB?: number;
  bootDiskSizeGiB: number;
  vpcId: string;
  subnetIds: string[];
  securityGroupIds: string[];
  keyPair?: string;
  /** Work directory bucket and prefix. */
  workDir: { bucket: string; prefix: string };
  /** Work directory bucket first, then the allowed buckets, without duplicates. */
  buckets: string[];
  /** Bring-your-own instance profile, when given. */
  instanceProfileArn?: string;
  /** Things not checked for lack of an optional permission, and the like. */
  notes: string[];
}

function invalid(message: string): CloudError {
  return CloudError.terminal("InvalidSpec", message);
}

function isAccessDenied(err: unknown): boolean {
  return err instanceof CloudError && err.kind === "Terminal" && err.reason === "AccessDenied";
}

/** The checks that need no AWS call. */
export function validateStatic(spec: AwsEnvironment | undefined): {
  region: string;
  workDir: { bucket: string; prefix: string };
  buckets: string[];
  bootDiskSizeGiB: number;
  instanceProfileArn?: string;
} {
  if (!spec) throw invalid("spec.aws: required when spec.provider is aws");
  if (!(SUPPORTED_AWS_REGIONS as readonly string[]).includes(spec.region)) {
    throw invalid(`spec.aws.region: ${spec.region} is not a supported region (supported: ${SUPPORTED_AWS_REGIONS.join(", ")})`);
  }
  const workDir = parseS3Url(spec.workDir ?? "");
  if (!workDir) throw invalid(`spec.aws.workDir: ${JSON.stringify(spec.workDir)} is not s3://bucket[/path] with a valid bucket name`);
  const buckets = [workDir.bucket];
  for (const [i, b] of (spec.allowBuckets ?? []).entries()) {
    const parsed = parseS3Url(b);
    if (!parsed) throw invalid(`spec.aws.allowBuckets[${i}]: ${JSON.stringify(b)} is not s3://bucket with a valid bucket name`);
    if (!buckets.includes(parsed.bucket)) buckets.push(parsed.bucket);
  }
  const tagProblem = checkUserTags(spec.tags);
  if (tagProblem) throw invalid(tagProblem);
  const boot = spec.bootDiskSizeGiB ?? DEFAULT_BOOT_DISK_GIB;
  if (!Number.isInteger(boot) || boot < MIN_BOOT_DISK_GIB || boot > MAX_BOOT_DISK_GIB) {
    throw invalid(`spec.aws.bootDiskSizeGiB: ${boot} is outside ${MIN_BOOT_DISK_GIB}..${MAX_BOOT_DISK_GIB}`);
  }
  const out: ReturnType<typeof validateStatic> = { region: spec.region, workDir, buckets, bootDiskSizeGiB: boot };
  if (spec.instanceProfileArn !== undefined) {
    const arn = parseIamArn(spec.instanceProfileArn);
    if (!arn || arn.type !== "instance-profile") {
      throw invalid(
        `spec.aws.instanceProfileArn: ${JSON.stringify(spec.instanceProfileArn)} is not an instance profile ARN (arn:aws:iam::<account>:instance-profile/<name>)`,
      );
    }
    out.instanceProfileArn = spec.instanceProfileArn;
  }
  return out;
}

async function allSubnets(clients: AwsClients, filters: Filter[]): Promise<Subnet[]> {
  const out: Subnet[] = [];
  let token: string | undefined;
  do {
    const page = await awsCall("ec2:DescribeSubnets", () =>
      clients.ec2.send(new DescribeSubnetsCommand({ Filters: filters, NextToken: token })),
    );
    out.push(...(page.Subnets ?? []));
    token = page.NextToken;
  } while (token);
  return out;
}

async function allSecurityGroups(clients: AwsClients, filters: Filter[]): Promise<SecurityGroup[]> {
  const out: SecurityGroup[] = [];
  let token: string | undefined;
  do {
    const page = await awsCall("ec2:DescribeSecurityGroups", () =>
      clients.ec2.send(new DescribeSecurityGroupsCommand({ Filters: filters, NextToken: token })),
    );
    out.push(...(page.SecurityGroups ?? []));
    token = page.NextToken;
  } while (token);
  return out;
}

async function checkInstanceType(clients: AwsClients, spec: AwsEnvironment, arch: Architecture): Promise<string> {
  const given = spec.instanceType;
  const type = given ?? (arch === "arm64" ? DEFAULT_AWS_GRAVITON_INSTANCE_TYPE : DEFAULT_AWS_INSTANCE_TYPE);
  const field = given === undefined ? `spec.aws.instanceType (default ${type})` : "spec.aws.instanceType";
  let info;
  try {
    const out = await awsCall("ec2:DescribeInstanceTypes", () =>
      clients.ec2.send(new DescribeInstanceTypesCommand({ InstanceTypes: [type as _InstanceType] })),
    );
    info = out.InstanceTypes?.find((t) => t.InstanceType === type);
  } catch (err) {
    if (!hasAwsCode(err, "InvalidInstanceType") && !(err instanceof CloudError && err.kind === "NotFound")) throw err;
  }
  if (!info) throw invalid(`${field}: ${type} does not exist in ${spec.region}`);
  const archs = info.ProcessorInfo?.SupportedArchitectures ?? [];
  if (!archs.includes(arch)) {
    const hint = arch === "arm64" ? "graviton is true, which needs an arm64 (Graviton) type" : "graviton is false; set graviton: true for arm64 types";
    throw invalid(`${field}: ${type} supports ${archs.join(", ") || "no known architecture"}, not ${arch} (${hint})`);
  }
  return type;
}

function rootSnapshotSize(img: Image): number | undefined {
  const root = img.BlockDeviceMappings?.find((m) => m.DeviceName === img.RootDeviceName);
  return root?.Ebs?.VolumeSize;
}

async function checkAmi(
  clients: AwsClients,
  spec: AwsEnvironment,
  arch: Architecture,
  bootGiB: number,
): Promise<{ id: string; name?: string; rootDeviceName: string; rootSnapshotGiB?: number }> {
  let img: Image | undefined;
  let field: string;
  if (spec.amiId !== undefined) {
    field = "spec.aws.amiId";
    const id = spec.amiId;
    try {
      const out = await awsCall("ec2:DescribeImages", () => clients.ec2.send(new DescribeImagesCommand({ ImageIds: [id] })));
      img = out.Images?.find((i) => i.ImageId === id);
    } catch (err) {
      const code = awsErrorCode(err) ?? "";
      if (!code.startsWith("InvalidAMIID")) throw err;
    }
    if (!img) throw invalid(`spec.aws.amiId: ${id} not found in ${spec.region}`);
    if (img.State !== "available") throw invalid(`spec.aws.amiId: ${id} is ${img.State ?? "not available"}, not available`);
    if (img.Architecture !== arch) {
      throw invalid(`spec.aws.amiId: ${id} is built for ${img.Architecture ?? "an unknown architecture"}, but the instances are ${arch} (graviton is ${arch === "arm64"})`);
    }
    if (String(img.Platform ?? "").toLowerCase() === "windows") throw invalid(`spec.aws.amiId: ${id} is a Windows image; a Linux image is needed`);
  } else {
    field = "spec.aws.amiId (default Amazon Linux 2023)";
    const images: Image[] = [];
    let token: string | undefined;
    do {
      const page = await awsCall("ec2:DescribeImages", () =>
        clients.ec2.send(
          new DescribeImagesCommand({
            Owners: [DEFAULT_AMI_OWNER],
            Filters: [
              { Name: "name", Values: [defaultAmiNamePattern(arch)] },
              { Name: "architecture", Values: [arch] },
              { Name: "state", Values: ["available"] },
            ],
            MaxResults: 1000,
            NextToken: token,
          }),
        ),
      );
      images.push(...(page.Images ?? []));
      token = page.NextToken;
    } while (token);
    images.sort(
      (a, b) => (b.CreationDate ?? "").localeCompare(a.CreationDate ?? "") || (b.Name ?? "").localeCompare(a.Name ?? ""),
    );
    img = images[0];
    if (!img?.ImageId) throw invalid(`${field}: no Amazon Linux 2023 image for ${arch} found in ${spec.region}; set spec.aws.amiId`);
  }
  const id = img.ImageId ?? "";
  if (!img.RootDeviceName) throw invalid(`${field}: ${id} has no root device name`);
  const snap = rootSnapshotSize(img);
  if (snap !== undefined && snap > bootGiB) {
    throw invalid(`spec.aws.bootDiskSizeGiB: ${bootGiB} is smaller than the root snapshot (${snap} GiB) of image ${id}`);
  }
  return {
    id,
    ...(img.Name !== undefined ? { name: img.Name } : {}),
    rootDeviceName: img.RootDeviceName,
    ...(snap !== undefined ? { rootSnapshotGiB: snap } : {}),
  };
}

async function checkNetwork(
  clients: AwsClients,
  spec: AwsEnvironment,
  notes: string[],
): Promise<{ vpcId: string; subnetIds: string[] }> {
  const region = spec.region;
  let vpcId = spec.vpcId;
  /** True when the VPC's existence was seen directly (ec2:DescribeVpcs). */
  let vpcSeen = false;
  const givenSubnets = spec.subnetIds ?? [];

  if (vpcId !== undefined) {
    const id = vpcId;
    try {
      const out = await awsCall("ec2:DescribeVpcs", () =>
        clients.ec2.send(new DescribeVpcsCommand({ Filters: [{ Name: "vpc-id", Values: [id] }] })),
      );
      if (!out.Vpcs?.some((v) => v.VpcId === id)) throw invalid(`spec.aws.vpcId: ${id} not found in ${region}`);
      vpcSeen = true;
    } catch (err) {
      if (!isAccessDenied(err)) throw err;
      notes.push("ec2:DescribeVpcs is not allowed (optional permission): the VPC was checked through its subnets");
    }
  } else if (givenSubnets.length === 0) {
    try {
      const out = await awsCall("ec2:DescribeVpcs", () =>
        clients.ec2.send(new DescribeVpcsCommand({ Filters: [{ Name: "is-default", Values: ["true"] }] })),
      );
      vpcId = out.Vpcs?.find((v) => v.IsDefault)?.VpcId ?? out.Vpcs?.[0]?.VpcId;
      vpcSeen = vpcId !== undefined;
    } catch (err) {
      if (!isAccessDenied(err)) throw err;
      notes.push("ec2:DescribeVpcs is not allowed (optional permission): the default VPC was found through its default subnets");
      const defaults = await allSubnets(clients, [{ Name: "default-for-az", Values: ["true"] }]);
      vpcId = defaults.find((s) => s.VpcId)?.VpcId;
    }
    if (vpcId === undefined) throw invalid(`spec.aws.vpcId: not set, and ${region} has no default VPC; set spec.aws.vpcId`);
  }

  let subnets: Subnet[];
  if (givenSubnets.length > 0) {
    const found = await allSubnets(clients, [{ Name: "subnet-id", Values: [...givenSubnets] }]);
    const byId = new Map(found.map((s) => [s.SubnetId, s]));
    for (const id of givenSubnets) if (!byId.has(id)) throw invalid(`spec.aws.subnetIds: ${id} not found in ${region}`);
    if (vpcId === undefined) {
      const vpcs = [...new Set(found.map((s) => s.VpcId))];
      if (vpcs.length !== 1 || !vpcs[0]) {
        throw invalid(`spec.aws.subnetIds: the subnets are in several VPCs (${vpcs.join(", ")}); they must share one VPC`);
      }
      vpcId = vpcs[0];
      notes.push(`spec.aws.vpcId not set: using ${vpcId}, the VPC of the given subnets`);
    } else {
      for (const id of givenSubnets) {
        const s = byId.get(id);
        if (s?.VpcId !== vpcId) throw invalid(`spec.aws.subnetIds: ${id} is in ${s?.VpcId ?? "another VPC"}, not in spec.aws.vpcId ${vpcId}`);
      }
    }
    subnets = givenSubnets.map((id) => byId.get(id)!);
  } else {
    const id = vpcId!;
    subnets = await allSubnets(clients, [{ Name: "vpc-id", Values: [id] }]);
    if (subnets.length === 0) {
      const field = spec.vpcId !== undefined ? "spec.aws.vpcId" : "spec.aws.vpcId (default VPC)";
      throw invalid(vpcSeen ? `${field}: ${id} has no subnets in ${region}` : `${field}: ${id} not found in ${region} (or it has no subnets)`);
    }
    subnets.sort((a, b) => (a.AvailabilityZone ?? "").localeCompare(b.AvailabilityZone ?? "") || (a.SubnetId ?? "").localeCompare(b.SubnetId ?? ""));
  }
  return { vpcId: vpcId!, subnetIds: subnets.map((s) => s.SubnetId!).filter(Boolean) };
}

async function checkSecurityGroups(clients: AwsClients, spec: AwsEnvironment, vpcId: string): Promise<string[]> {
  const ids = spec.securityGroupIds ?? [];
  if (ids.length === 0) return [];
  const found = await allSecurityGroups(clients, [{ Name: "group-id", Values: [...ids] }]);
  const byId = new Map(found.map((g) => [g.GroupId, g]));
  for (const id of ids) {
    const g = byId.get(id);
    if (!g) throw invalid(`spec.aws.securityGroupIds: ${id} not found in ${spec.region}`);
    if (g.VpcId !== vpcId) throw invalid(`spec.aws.securityGroupIds: ${id} is in ${g.VpcId ?? "no VPC"}, not in VPC ${vpcId}`);
  }
  return [...ids];
}

async function checkKeyPair(clients: AwsClients, spec: AwsEnvironment, notes: string[]): Promise<string | undefined> {
  const name = spec.keyPair;
  if (name === undefined) return undefined;
  try {
    const out = await awsCall("ec2:DescribeKeyPairs", () =>
      clients.ec2.send(new DescribeKeyPairsCommand({ Filters: [{ Name: "key-name", Values: [name] }] })),
    );
    if (!out.KeyPairs?.some((k) => k.KeyName === name)) throw invalid(`spec.aws.keyPair: ${name} not found in ${spec.region}`);
  } catch (err) {
    if (!isAccessDenied(err)) throw err;
    notes.push(`ec2:DescribeKeyPairs is not allowed (optional permission): key pair ${name} was not checked`);
  }
  return name;
}

/** Checks `spec.aws` against the account and resolves its defaults. Read-only. */
export async function validateAwsSpec(clients: AwsClients, spec: AwsEnvironment | undefined): Promise<ValidatedAwsSpec> {
  const s = validateStatic(spec);
  const aws = spec!;
  const notes: string[] = [];
  const architecture: Architecture = aws.graviton ? "arm64" : "x86_64";
  const instanceType = await checkInstanceType(clients, aws, architecture);
  const ami = await checkAmi(clients, aws, architecture, s.bootDiskSizeGiB);
  const net = await checkNetwork(clients, aws, notes);
  const securityGroupIds = await checkSecurityGroups(clients, aws, net.vpcId);
  const keyPair = await checkKeyPair(clients, aws, notes);
  return {
    region: s.region,
    instanceType,
    architecture,
    amiId: ami.id,
    ...(ami.name !== undefined ? { amiName: ami.name } : {}),
    rootDeviceName: ami.rootDeviceName,
    ...(ami.rootSnapshotGiB !== undefined ? { rootSnapshotGiB: ami.rootSnapshotGiB } : {}),
    bootDiskSizeGiB: s.bootDiskSizeGiB,
    vpcId: net.vpcId,
    subnetIds: net.subnetIds,
    securityGroupIds,
    ...(keyPair !== undefined ? { keyPair } : {}),
    workDir: s.workDir,
    buckets: s.buckets,
    ...(s.instanceProfileArn !== undefined ? { instanceProfileArn: s.instanceProfileArn } : {}),
    notes,
  };
}
