/**
 * TypeBox definitions of the ComputeEnvironment and Run APIs: the single source of both the static
 * TypeScript types (src/api/types.ts) and the OpenAPI v3 schemas of the generated CRDs (crds/).
 *
 * Rules for this file, so the output stays a valid Kubernetes structural schema:
 * - every property, list item and map value carries a `description` (shown by `kubectl explain`);
 * - enums are plain `{type: string, enum}` (no anyOf/const), maps use `additionalProperties`;
 * - every string, list and map that a CEL rule reads has maxLength / maxItems / maxProperties, so
 *   the apiserver's cost estimate of the rules stays inside its budget;
 * - user-facing formats are checked with CEL rules (x-kubernetes-validations) rather than bare
 *   `pattern`, so the rejection message says what is expected in words.
 */
import { Type, type TString, type TUnsafe } from "@sinclair/typebox";
import {
  CLOUDWATCH_RETENTION_DAYS,
  COMPUTE_ENVIRONMENT_PHASES,
  DEFAULT_LOG_RETENTION_DAYS,
  MAX_LOG_ANALYTICS_RETENTION_DAYS,
  MIN_LOG_ANALYTICS_RETENTION_DAYS,
  DEFAULT_AZURE_VM_SIZE,
  DEFAULT_BOOT_DISK_GIB,
  DEFAULT_PLATFORM_TOKEN_KEY,
  MAX_BOOT_DISK_GIB,
  MAX_SCRIPT_BYTES,
  MIN_BOOT_DISK_GIB,
  RUN_PHASES,
  SUPPORTED_AWS_REGIONS,
} from "./constants.js";
import { DURATION_PATTERN, MIN_RUN_TIMEOUT } from "./duration.js";

/** One CEL validation rule (apiextensions.k8s.io/v1 ValidationRule). */
export interface CelRule {
  rule: string;
  message: string;
  fieldPath?: string;
  reason?: "FieldValueInvalid" | "FieldValueForbidden" | "FieldValueRequired" | "FieldValueDuplicate";
}

const XV = "x-kubernetes-validations";

/** `self.matches(...)` with a message; `re` is an RE2 expression without single quotes. */
function matches(re: string, message: string): CelRule {
  if (re.includes("'")) throw new Error(`pattern must not contain a single quote: ${re}`);
  return { rule: `self.matches(r'${re}')`, message };
}

function immutable(what: string, hint: string): CelRule {
  return { rule: "self == oldSelf", message: `${what} is immutable; ${hint}` };
}

/** A string enum rendered as `{type: string, enum: [...]}`. */
function StringEnum<const T extends readonly string[]>(
  values: T,
  options: { description: string; default?: T[number]; [XV]?: CelRule[] },
): TUnsafe<T[number]> {
  return Type.Unsafe<T[number]>({ type: "string", enum: [...values], ...options });
}

/** A string -> string map rendered with `additionalProperties`. */
function StringMap(options: {
  description: string;
  valueDescription: string;
  maxProperties: number;
  valueMaxLength: number;
  rules?: CelRule[];
}): TUnsafe<Record<string, string>> {
  return Type.Unsafe<Record<string, string>>({
    type: "object",
    description: options.description,
    maxProperties: options.maxProperties,
    additionalProperties: { type: "string", description: options.valueDescription, maxLength: options.valueMaxLength },
    ...(options.rules ? { [XV]: options.rules } : {}),
  });
}

const DNS_SUBDOMAIN_RE = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

function ObjectName(description: string, kind: string): TString {
  return Type.String({
    description,
    minLength: 1,
    maxLength: 253,
    [XV]: [
      matches(
        DNS_SUBDOMAIN_RE,
        `must be the name of a ${kind} in the same namespace (lowercase letters, digits, '-' and '.')`,
      ),
    ],
  });
}

function BootDiskSize(description: string, defaultGiB?: number) {
  return Type.Integer({
    description,
    minimum: MIN_BOOT_DISK_GIB,
    maximum: MAX_BOOT_DISK_GIB,
    format: "int32",
    ...(defaultGiB === undefined ? {} : { default: defaultGiB }),
  });
}

// ---------------------------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------------------------

export const SecretKeyRefSchema = Type.Object(
  {
    name: ObjectName("Name of a Secret in the ComputeEnvironment's namespace.", "Secret"),
    key: Type.Optional(
      Type.String({
        description: `Key inside the Secret's data that holds the value. Defaults to "${DEFAULT_PLATFORM_TOKEN_KEY}".`,
        default: DEFAULT_PLATFORM_TOKEN_KEY,
        minLength: 1,
        maxLength: 253,
        [XV]: [matches("^[-._a-zA-Z0-9]+$", "key must consist of letters, digits, '-', '_' or '.'")],
      }),
    ),
  },
  { description: "Reference to one key of a Secret in the same namespace." },
);

export const ConditionSchema = Type.Object(
  {
    type: Type.String({
      description:
        "Type of the condition: Ready, Reconciling and Stalled (kstatus), plus detail types such as CredentialsValid and Validated.",
      minLength: 1,
      maxLength: 316,
    }),
    status: StringEnum(["True", "False", "Unknown"] as const, {
      description: "Status of the condition: True, False or Unknown.",
    }),
    reason: Type.String({
      description: "Machine-readable CamelCase reason for the condition's last transition.",
      maxLength: 1024,
    }),
    message: Type.String({ description: "Human-readable details about the last transition.", maxLength: 32768 }),
    observedGeneration: Type.Optional(
      Type.Integer({
        description: "metadata.generation the condition was computed from.",
        format: "int64",
        minimum: 0,
      }),
    ),
    lastTransitionTime: Type.String({
      description: "When the condition last changed status (RFC 3339).",
      format: "date-time",
    }),
  },
  { description: "One observation about the object's state, in the style of metav1.Condition." },
);

function Conditions(description: string) {
  return Type.Array(ConditionSchema, {
    description,
    maxItems: 32,
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
  });
}

// Cloud tag rules. Only size()/startsWith() on map keys: their cost does not grow with key length.
const AWS_TAG_RULES: CelRule[] = [
  { rule: "self.all(k, k.size() >= 1 && k.size() <= 128)", message: "tag keys must be 1 to 128 characters long" },
  { rule: "self.all(k, !k.startsWith('aws:'))", message: "tag keys must not start with 'aws:' (reserved by AWS)" },
  {
    rule: "self.all(k, !k.startsWith('vmforge.dev/'))",
    message: "tag keys starting with 'vmforge.dev/' are reserved for the operator's own tags",
  },
];
const AZURE_TAG_RULES: CelRule[] = [
  { rule: "self.all(k, k.size() >= 1 && k.size() <= 512)", message: "tag names must be 1 to 512 characters long" },
  {
    rule: "self.all(k, !k.startsWith('vmforge.dev/'))",
    message: "tag names starting with 'vmforge.dev/' are reserved for the operator's own tags",
  },
];

// ---------------------------------------------------------------------------------------------
// ComputeEnvironment
// ---------------------------------------------------------------------------------------------

export const AwsEnvironmentSchema = Type.Object(
  {
    // Typed as plain string (the contract's type); the enum is enforced at admission.
    region: Type.Unsafe<string>({
      type: "string",
      enum: [...SUPPORTED_AWS_REGIONS],
      description: `AWS region to launch instances in. One of: ${SUPPORTED_AWS_REGIONS.join(", ")}. Immutable.`,
      [XV]: [immutable("aws.region", "create a new ComputeEnvironment to use another region")],
    }),
    instanceType: Type.Optional(
      Type.String({
        description:
          "EC2 instance type every Run of this environment uses unless the Run overrides it. The whole pipeline runs on this one machine, so it bounds the CPUs and memory available. When unset the operator uses m6i.large, or m7g.large when graviton is true.",
        maxLength: 64,
        [XV]: [
          matches(
            "^[a-z][a-z0-9-]*\\.[a-z0-9]+$",
            "instanceType must be an EC2 instance type such as m6i.large or c7g.2xlarge",
          ),
        ],
      }),
    ),
    graviton: Type.Optional(
      Type.Boolean({
        description:
          "Use Graviton (arm64) instances. The tooling of your pipelines must support ARM. Defaults to false.",
        default: false,
      }),
    ),
    amiId: Type.Optional(
      Type.String({
        description:
          "ID of the AMI to boot. It must provide a Docker engine started at boot, the CloudWatch agent and a working `shutdown` command. When unset the operator picks the managed image for the architecture.",
        maxLength: 21,
        [XV]: [matches("^ami-[0-9a-f]{8,17}$", "amiId must look like ami-0123456789abcdef0")],
      }),
    ),
    keyPair: Type.Optional(
      Type.String({
        description: "Name of an EC2 key pair to allow SSH access to the instances. When unset no SSH key is installed.",
        minLength: 1,
        maxLength: 255,
      }),
    ),
    vpcId: Type.Optional(
      Type.String({
        description: "ID of the VPC to launch instances in. When unset the region's default VPC is used.",
        maxLength: 21,
        [XV]: [matches("^vpc-[0-9a-f]{8,17}$", "vpcId must look like vpc-0123456789abcdef0")],
      }),
    ),
    subnetIds: Type.Optional(
      Type.Array(
        Type.String({
          description: "ID of a subnet, e.g. subnet-0123456789abcdef0.",
          maxLength: 24,
          [XV]: [matches("^subnet-[0-9a-f]{8,17}$", "subnet IDs must look like subnet-0123456789abcdef0")],
        }),
        {
          description: "Subnets instances may be launched in. When unset every subnet of the VPC may be used.",
          maxItems: 16,
          "x-kubernetes-list-type": "set",
        },
      ),
    ),
    securityGroupIds: Type.Optional(
      Type.Array(
        Type.String({
          description: "ID of a security group, e.g. sg-0123456789abcdef0.",
          maxLength: 20,
          [XV]: [matches("^sg-[0-9a-f]{8,17}$", "security group IDs must look like sg-0123456789abcdef0")],
        }),
        {
          description: "Security groups attached to the instances. When unset no security groups are set.",
          maxItems: 16,
          "x-kubernetes-list-type": "set",
        },
      ),
    ),
    instanceProfileArn: Type.Optional(
      Type.String({
        description:
          "ARN of an existing instance profile for the instances (bring your own). When unset the operator creates a TowerForge-* role and instance profile with the permissions a run needs.",
        maxLength: 512,
        [XV]: [
          matches(
            "^arn:aws(-[a-z]+)*:iam::[0-9]{12}:instance-profile/[A-Za-z0-9+=,.@_/-]{1,128}$",
            "instanceProfileArn must be an IAM instance profile ARN like arn:aws:iam::123456789012:instance-profile/my-profile",
          ),
        ],
      }),
    ),
    roleArn: Type.Optional(
      Type.String({
        description:
          "IAM role the operator assumes (STS AssumeRole) with its own ambient identity (IRSA, EKS Pod Identity, instance profile) to work in this environment's account, so no long-lived keys are stored. Only without credentials.secretRef (a Secret names its role in its own roleArn key). The role needs the documented operator policy (vmforge policy aws) and must trust the operator's identity.",
        maxLength: 2048,
        [XV]: [
          matches(
            "^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$",
            "roleArn must be an IAM role ARN like arn:aws:iam::123456789012:role/vmforge-operator",
          ),
        ],
      }),
    ),
    externalId: Type.Optional(
      Type.String({
        description: "External ID passed when assuming roleArn (sts:ExternalId), as the role's trust policy requires. Requires roleArn.",
        minLength: 2,
        maxLength: 1224,
        [XV]: [matches("^[A-Za-z0-9+=,.@:/_-]+$", "externalId may contain letters, digits and + = , . @ : / _ -")],
      }),
    ),
    platformTokenArn: Type.Optional(
      Type.String({
        description:
          "ARN of an SSM Parameter Store parameter (SecureString; arn:aws:ssm:<region>:<account>:parameter/<name>) or a Secrets Manager secret (arn:aws:secretsmanager:<region>:<account>:secret:<name>) holding the Seqera Platform access token. The instance reads it at boot with its own role, so the token never travels in user data; the operator grants the TowerForge-* role read access to exactly this ARN (with instanceProfileArn, grant ssm:GetParameter or secretsmanager:GetSecretValue yourself; a customer managed KMS key also needs kms:Decrypt for the role). Takes the place of spec.platformTokenSecretRef on AWS. Mutually exclusive with platformTokenInUserData.",
        maxLength: 2048,
        [XV]: [
          matches(
            "^arn:aws(-[a-z]+)*:(ssm:[a-z0-9-]+:[0-9]{12}:parameter/[A-Za-z0-9_./-]+|secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+)$",
            "platformTokenArn must be the ARN of an SSM parameter (arn:aws:ssm:<region>:<account>:parameter/<name>) or of a Secrets Manager secret (arn:aws:secretsmanager:<region>:<account>:secret:<name>)",
          ),
        ],
      }),
    ),
    platformTokenInUserData: Type.Optional(
      Type.Boolean({
        description:
          "Accept that the token from spec.platformTokenSecretRef travels in the instance's user data, readable by anyone allowed ec2:DescribeInstanceAttribute (e.g. the ReadOnlyAccess policy) and by processes on the instance for as long as it exists. The operator has no AWS permission to store a secret only the instance can read, so without platformTokenArn this opt-in is the only way to hand the token over; a CE with platformTokenSecretRef and neither setting fails its launches. Requires spec.platformTokenSecretRef; mutually exclusive with platformTokenArn. Defaults to false.",
        default: false,
      }),
    ),
    bootDiskSizeGiB: Type.Optional(
      BootDiskSize(
        `Size in GiB of the gp3 EBS boot disk (${MIN_BOOT_DISK_GIB}..${MAX_BOOT_DISK_GIB}). Defaults to ${DEFAULT_BOOT_DISK_GIB}.`,
        DEFAULT_BOOT_DISK_GIB,
      ),
    ),
    workDir: Type.String({
      description:
        "S3 path used as the Nextflow work directory, s3://bucket[/path]. The instance role is granted access to it.",
      maxLength: 1024,
      [XV]: [
        matches(
          "^s3://[a-z0-9.-]{3,63}(/.*)?$",
          "workDir must be an S3 path like s3://my-bucket/work (bucket name: 3 to 63 lowercase letters, digits, '.' or '-')",
        ),
      ],
    }),
    allowBuckets: Type.Optional(
      Type.Array(
        Type.String({
          description: "An S3 bucket, s3://bucket.",
          maxLength: 69,
          [XV]: [matches("^s3://[a-z0-9.-]{3,63}/?$", "allowBuckets entries must be bucket URLs like s3://my-bucket")],
        }),
        {
          description: "Extra S3 buckets the instances may read and write, besides the work directory's.",
          maxItems: 32,
          "x-kubernetes-list-type": "set",
        },
      ),
    ),
    tags: Type.Optional(
      StringMap({
        description:
          "Tags put on every AWS resource the operator creates for this environment (at most 40; the operator adds its own ownership tags).",
        valueDescription: "Tag value (at most 256 characters).",
        maxProperties: 40,
        valueMaxLength: 256,
        rules: AWS_TAG_RULES,
      }),
    ),
  },
  { description: "AWS settings. Required when provider is aws, forbidden otherwise." },
);

export const AzureEnvironmentSchema = Type.Object(
  {
    subscriptionId: Type.Optional(
      Type.String({
        description: "Azure subscription to deploy into. When unset the subscription of the credentials is used.",
        maxLength: 36,
        [XV]: [
          matches(
            "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
            "subscriptionId must be a GUID like 00000000-0000-0000-0000-000000000000",
          ),
          immutable("azure.subscriptionId", "the environment's resources stay in their subscription; create a new ComputeEnvironment to use another"),
        ],
      }),
    ),
    location: Type.String({
      description: "Azure region (location) of the environment's resources, e.g. westeurope or eastus2.",
      maxLength: 64,
      [XV]: [
        matches(
          "^[a-z][a-z0-9]+$",
          "location must be an Azure region name such as westeurope or eastus2 (lowercase letters and digits)",
        ),
        immutable("azure.location", "create a new ComputeEnvironment to use another location"),
      ],
    }),
    vmSize: Type.Optional(
      Type.String({
        description: `Virtual machine size every Run uses unless the Run overrides it. Defaults to ${DEFAULT_AZURE_VM_SIZE}.`,
        default: DEFAULT_AZURE_VM_SIZE,
        maxLength: 64,
        [XV]: [matches("^[A-Za-z][A-Za-z0-9_-]+$", "vmSize must be an Azure VM size such as Standard_D4ds_v5")],
      }),
    ),
    image: Type.Optional(
      Type.String({
        description:
          "Image of the Runs' VMs: a platform image as publisher:offer:sku:version (version may be latest), or the resource ID of a managed image or an Azure Compute Gallery image (version). A Linux image with cloud-init, bash, curl and Docker. Defaults to Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest.",
        maxLength: 1024,
        [XV]: [
          matches(
            "(?i)^([A-Za-z0-9][A-Za-z0-9._-]*:[A-Za-z0-9][A-Za-z0-9._-]*:[A-Za-z0-9][A-Za-z0-9._-]*:[A-Za-z0-9][A-Za-z0-9._-]*|/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\\.Compute/(images/[^/]+|galleries/[^/]+/images/[^/]+(/versions/[^/]+)?))$",
            "image must be publisher:offer:sku:version (e.g. Canonical:ubuntu-24_04-lts:server:latest) or the resource ID of a managed image or a gallery image",
          ),
        ],
      }),
    ),
    storageAccount: Type.Optional(
      Type.String({
        description:
          "Storage account holding the work directory's container. When unset the account named in the credentials is used.",
        maxLength: 24,
        [XV]: [matches("^[a-z0-9]{3,24}$", "storageAccount must be 3 to 24 lowercase letters and digits")],
      }),
    ),
    workDir: Type.String({
      description: "Blob container path used as the Nextflow work directory, az://container[/path].",
      maxLength: 1024,
      [XV]: [
        matches(
          "^az://[a-z0-9][a-z0-9-]{1,61}[a-z0-9](/.*)?$",
          "workDir must be a blob container path like az://my-container/work (container name: 3 to 63 lowercase letters, digits or '-')",
        ),
      ],
    }),
    network: Type.Optional(
      Type.Object(
        {
          subnetId: Type.String({
            description:
              "Resource ID of the subnet, /subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.Network/virtualNetworks/<vnet>/subnets/<subnet>.",
            maxLength: 1024,
            [XV]: [
              matches(
                "(?i)^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\\.Network/virtualNetworks/[^/]+/subnets/[^/]+$",
                "network.subnetId must be a subnet resource ID like /subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.Network/virtualNetworks/<vnet>/subnets/<subnet>",
              ),
            ],
          }),
        },
        {
          description:
            "An existing virtual network subnet to place the VMs in. When unset the operator creates a virtual network for the environment.",
        },
      ),
    ),
    platformTokenSecretUri: Type.Optional(
      Type.String({
        description:
          "Key Vault secret holding the Seqera Platform access token, as its identifier https://<vault>.vault.azure.net/secrets/<name>[/<version>] (no version: the current one). The VM reads it at boot with the environment's user-assigned identity (vmforge-vm-identity in the environment's resource group), so the token never travels in userData. Grant that identity read access to the secret yourself (the Key Vault Secrets User role on the vault or the secret, or a get-secret access policy): the operator's roles hold no Key Vault permission. Takes the place of spec.platformTokenSecretRef on Azure. Mutually exclusive with platformTokenInUserData.",
        maxLength: 2048,
        [XV]: [
          matches(
            "^https://[A-Za-z0-9-]{3,24}\\.vault\\.(azure\\.net|azure\\.cn|usgovcloudapi\\.net)/secrets/[A-Za-z0-9-]{1,127}(/[0-9a-fA-F]{32})?$",
            "platformTokenSecretUri must be a Key Vault secret identifier like https://my-vault.vault.azure.net/secrets/tower-token (optionally followed by /<32-hex version>)",
          ),
        ],
      }),
    ),
    platformTokenInUserData: Type.Optional(
      Type.Boolean({
        description:
          "Accept that the token from spec.platformTokenSecretRef travels in the VM's userData, readable by anyone allowed Microsoft.Compute/virtualMachines/read (userData is returned with the VM) and by processes on the VM through the instance metadata service, for as long as the VM exists. Without it (and without platformTokenSecretUri) a CE with platformTokenSecretRef fails its launches. Requires spec.platformTokenSecretRef; mutually exclusive with platformTokenSecretUri. Defaults to false.",
        default: false,
      }),
    ),
    tags: Type.Optional(
      StringMap({
        description: "Tags put on every Azure resource the operator creates for this environment (at most 40).",
        valueDescription: "Tag value (at most 256 characters).",
        maxProperties: 40,
        valueMaxLength: 256,
        rules: AZURE_TAG_RULES,
      }),
    ),
  },
  { description: "Azure settings. Required when provider is azure, forbidden otherwise." },
);

/**
 * Budget, in bytes, of the text a ComputeEnvironment (nextflowConfig and scripts together) and a
 * Run (pipeline.config) each put into a machine's user data. Two full budgets plus the launcher
 * fit EC2's 16 KiB once gzip-compressed, for text that compresses as configuration does; the
 * launch still checks the real size.
 */
export const USER_DATA_TEXT_BUDGET_BYTES = 16 * 1024;

/** Timeout of a Run that sets none, unless its ComputeEnvironment says otherwise (spec.defaultRunTimeout). */
export const DEFAULT_RUN_TIMEOUT = "72h";

function ScriptSchema(when: string) {
  return Type.String({
    description: `Shell script run on the VM ${when} (at most ${MAX_SCRIPT_BYTES} bytes).`,
    maxLength: MAX_SCRIPT_BYTES,
    [XV]: [
      {
        rule: `bytes(self).size() <= ${MAX_SCRIPT_BYTES}`,
        message: `scripts must be at most ${MAX_SCRIPT_BYTES} bytes (1 KiB)`,
      },
    ],
  });
}

export const ComputeEnvironmentSpecSchema = Type.Object(
  {
    provider: StringEnum(["aws", "azure"] as const, {
      description: "Cloud the environment runs in: aws or azure. Immutable.",
      [XV]: [immutable("provider", "create a new ComputeEnvironment to use another cloud")],
    }),
    credentials: Type.Optional(
      Type.Object(
        {
          secretRef: Type.Optional(
            Type.Object(
              {
                name: ObjectName(
                  "Name of a Secret in the ComputeEnvironment's namespace. AWS keys: accessKeyId, secretAccessKey, optional sessionToken and roleArn. Azure keys: tenantId, clientId, clientSecret.",
                  "Secret",
                ),
              },
              { description: "Secret holding the cloud credentials." },
            ),
          ),
        },
        {
          description:
            "Cloud credentials. Without secretRef the operator uses its ambient identity (IRSA or EKS Pod Identity on AWS, workload or managed identity on Azure).",
        },
      ),
    ),
    aws: Type.Optional(AwsEnvironmentSchema),
    azure: Type.Optional(AzureEnvironmentSchema),
    wave: Type.Optional(
      Type.Boolean({ description: "Enable Wave containers for the pipelines. Defaults to true.", default: true }),
    ),
    fusion: Type.Optional(
      Type.Boolean({
        description: "Enable the Fusion file system for the work directory. Requires wave. Defaults to true.",
        default: true,
      }),
    ),
    platformTokenSecretRef: Type.Optional(
      Type.Object(SecretKeyRefSchema.properties, {
        description:
          'Secret key holding the Seqera Platform access token that Fusion (and Wave) use. The key defaults to "token". On AWS the token from this Secret reaches the instance only through its user data, which needs the explicit opt-in aws.platformTokenInUserData; prefer aws.platformTokenArn, which keeps the token out of user data. Likewise on Azure: the opt-in azure.platformTokenInUserData, or (preferred) azure.platformTokenSecretUri, a Key Vault secret the VM reads with its identity.',
      }),
    ),
    nextflowConfig: Type.Optional(
      Type.String({
        description: "Nextflow configuration text added to every run of this environment.",
        maxLength: 65536,
      }),
    ),
    preRunScript: Type.Optional(ScriptSchema("before the pipeline starts")),
    postRunScript: Type.Optional(ScriptSchema("after the pipeline finished")),
    defaultRunTimeout: Type.Optional(
      Type.String({
        description:
          `Timeout of every Run of this environment that sets no timeout of its own, e.g. 24h or 90m (whole hours, minutes and seconds, at least ${MIN_RUN_TIMEOUT}), so that no machine runs (and bills) forever by default. Default ${DEFAULT_RUN_TIMEOUT}.`,
        maxLength: 24,
        default: DEFAULT_RUN_TIMEOUT,
        [XV]: [
          {
            rule: `self.matches(r'${DURATION_PATTERN}') && self != ''`,
            message: "defaultRunTimeout must be a duration such as 90m, 24h or 1h30m (whole h, m and s units in that order)",
          },
          {
            rule: `!self.matches(r'${DURATION_PATTERN}') || self == '' || duration(self) >= duration('${MIN_RUN_TIMEOUT}')`,
            message: `defaultRunTimeout must be at least ${MIN_RUN_TIMEOUT}`,
          },
        ],
      }),
    ),
    maxConcurrentRuns: Type.Optional(
      Type.Integer({
        description:
          "Most Runs of this environment that may have a machine at once; further Runs wait in Pending. Unlimited when unset.",
        minimum: 1,
        maximum: 10000,
        format: "int32",
      }),
    ),
    logRetentionDays: Type.Optional(
      Type.Integer({
        description: `How many days the Runs' logs are kept: the retention of the environment's CloudWatch Logs group on AWS (one of ${CLOUDWATCH_RETENTION_DAYS.join(", ")}; applied by the instances' CloudWatch agent) and of its Log Analytics table on Azure (${MIN_LOG_ANALYTICS_RETENTION_DAYS} to ${MAX_LOG_ANALYTICS_RETENTION_DAYS}). Defaults to ${DEFAULT_LOG_RETENTION_DAYS}. The log group or table is deleted with the environment unless deletionPolicy is Retain.`,
        default: DEFAULT_LOG_RETENTION_DAYS,
        minimum: 1,
        maximum: 3653,
        format: "int32",
      }),
    ),
    runHistory: Type.Optional(
      Type.Object(
        {
          succeededLimit: Type.Optional(
            Type.Integer({
              description:
                "How many Succeeded Runs of this environment to keep; the oldest (by completion time) beyond it are deleted. Unlimited when unset.",
              minimum: 0,
              maximum: 10000,
              format: "int32",
            }),
          ),
          failedLimit: Type.Optional(
            Type.Integer({
              description:
                "How many Failed or Cancelled Runs of this environment to keep; the oldest (by completion time) beyond it are deleted. Unlimited when unset.",
              minimum: 0,
              maximum: 10000,
              format: "int32",
            }),
          ),
        },
        {
          description:
            "How many finished Runs of this environment to keep, like a CronJob's successfulJobsHistoryLimit and failedJobsHistoryLimit. Active Runs are never counted or deleted. Deleting a finished Run touches nothing in the cloud but what is left of its own machine.",
          [XV]: [
            {
              rule: "has(self.succeededLimit) || has(self.failedLimit)",
              message: "runHistory must set succeededLimit, failedLimit or both (leave runHistory out to keep every finished Run)",
            },
          ] satisfies CelRule[],
        },
      ),
    ),
    deletionPolicy: Type.Optional(
      StringEnum(["Delete", "Retain"] as const, {
        description:
          "What happens to the cloud resources the operator created when the ComputeEnvironment is deleted: Delete (default) removes them, Retain leaves them in place.",
        default: "Delete",
      }),
    ),
  },
  {
    description: "Desired state of a ComputeEnvironment.",
    [XV]: [
      {
        rule:
          "(has(self.nextflowConfig) ? bytes(self.nextflowConfig).size() : 0) + (has(self.preRunScript) ? bytes(self.preRunScript).size() : 0)" +
          ` + (has(self.postRunScript) ? bytes(self.postRunScript).size() : 0) <= ${USER_DATA_TEXT_BUDGET_BYTES}`,
        message: `nextflowConfig, preRunScript and postRunScript together must be at most ${USER_DATA_TEXT_BUDGET_BYTES} bytes: they travel in every machine's user data (16 KiB on EC2, sent gzip-compressed, shared with the launcher and the Run's config)`,
        fieldPath: ".nextflowConfig",
      },
      {
        rule: "self.provider != 'aws' || has(self.aws)",
        message: "spec.aws is required when provider is aws",
        fieldPath: ".aws",
        reason: "FieldValueRequired",
      },
      {
        rule: "self.provider != 'azure' || has(self.azure)",
        message: "spec.azure is required when provider is azure",
        fieldPath: ".azure",
        reason: "FieldValueRequired",
      },
      {
        rule: "self.provider == 'aws' || !has(self.aws)",
        message: "spec.aws is only allowed when provider is aws",
        fieldPath: ".aws",
        reason: "FieldValueForbidden",
      },
      {
        rule: "self.provider == 'azure' || !has(self.azure)",
        message: "spec.azure is only allowed when provider is azure",
        fieldPath: ".azure",
        reason: "FieldValueForbidden",
      },
      {
        rule: "!has(self.aws) || !has(self.aws.platformTokenInUserData) || !self.aws.platformTokenInUserData || has(self.platformTokenSecretRef)",
        message: "aws.platformTokenInUserData requires platformTokenSecretRef: it puts the token from that Secret into the instance's user data",
        fieldPath: ".aws.platformTokenInUserData",
        reason: "FieldValueInvalid",
      },
      {
        rule: "!has(self.aws) || !has(self.aws.platformTokenArn) || !has(self.aws.platformTokenInUserData) || !self.aws.platformTokenInUserData",
        message: "aws.platformTokenArn and aws.platformTokenInUserData are mutually exclusive: with platformTokenArn the instance reads the token itself, so leave platformTokenInUserData unset or false",
        fieldPath: ".aws.platformTokenInUserData",
        reason: "FieldValueForbidden",
      },
      {
        rule: "!has(self.azure) || !has(self.azure.platformTokenInUserData) || !self.azure.platformTokenInUserData || has(self.platformTokenSecretRef)",
        message: "azure.platformTokenInUserData requires platformTokenSecretRef: it puts the token from that Secret into the VM's userData",
        fieldPath: ".azure.platformTokenInUserData",
        reason: "FieldValueInvalid",
      },
      {
        rule: "!has(self.azure) || !has(self.azure.platformTokenSecretUri) || !has(self.azure.platformTokenInUserData) || !self.azure.platformTokenInUserData",
        message: "azure.platformTokenSecretUri and azure.platformTokenInUserData are mutually exclusive: with platformTokenSecretUri the VM reads the token itself, so leave platformTokenInUserData unset or false",
        fieldPath: ".azure.platformTokenInUserData",
        reason: "FieldValueForbidden",
      },
      {
        rule: "!has(self.aws) || !has(self.aws.externalId) || has(self.aws.roleArn)",
        message: "aws.externalId is only used with aws.roleArn",
        fieldPath: ".aws.externalId",
        reason: "FieldValueForbidden",
      },
      {
        rule: "!has(self.aws) || !has(self.aws.roleArn) || !has(self.credentials) || !has(self.credentials.secretRef)",
        message: "aws.roleArn is assumed with the operator's own (ambient) identity and cannot be combined with credentials.secretRef; to assume a role with a Secret's keys, put roleArn (and externalId) in the Secret",
        fieldPath: ".aws.roleArn",
        reason: "FieldValueForbidden",
      },
      {
        rule: "!(has(self.fusion) && self.fusion) || !has(self.wave) || self.wave",
        message: "fusion requires wave: set wave to true or fusion to false",
        fieldPath: ".fusion",
      },
      {
        rule: `self.provider != 'aws' || !has(self.logRetentionDays) || self.logRetentionDays in [${CLOUDWATCH_RETENTION_DAYS.join(", ")}]`,
        message: `logRetentionDays on AWS must be a retention CloudWatch Logs offers: ${CLOUDWATCH_RETENTION_DAYS.join(", ")} days`,
        fieldPath: ".logRetentionDays",
        reason: "FieldValueInvalid",
      },
      {
        rule: `self.provider != 'azure' || !has(self.logRetentionDays) || (self.logRetentionDays >= ${MIN_LOG_ANALYTICS_RETENTION_DAYS} && self.logRetentionDays <= ${MAX_LOG_ANALYTICS_RETENTION_DAYS})`,
        message: `logRetentionDays on Azure must be ${MIN_LOG_ANALYTICS_RETENTION_DAYS} to ${MAX_LOG_ANALYTICS_RETENTION_DAYS} days (a Log Analytics table's retention)`,
        fieldPath: ".logRetentionDays",
        reason: "FieldValueInvalid",
      },
    ] satisfies CelRule[],
  },
);

export const CloudResourceRefSchema = Type.Object(
  {
    kind: Type.String({
      description: "Kind of cloud resource, e.g. IAMRole, InstanceProfile, ResourceGroup.",
      maxLength: 128,
    }),
    id: Type.String({ description: "Cloud identifier of the resource (ARN or resource ID).", maxLength: 2048 }),
    name: Type.Optional(Type.String({ description: "Name of the resource, when it has one.", maxLength: 1024 })),
  },
  { description: "A cloud resource owned by the ComputeEnvironment." },
);

export const ComputeEnvironmentStatusSchema = Type.Object(
  {
    observedGeneration: Type.Optional(
      Type.Integer({
        description: "metadata.generation last acted on by the operator.",
        format: "int64",
        minimum: 0,
      }),
    ),
    phase: Type.Optional(
      StringEnum(COMPUTE_ENVIRONMENT_PHASES, {
        description: `Summary of the environment's state: ${COMPUTE_ENVIRONMENT_PHASES.join(", ")}.`,
      }),
    ),
    conditions: Type.Optional(
      Conditions("Ready, Reconciling and Stalled (kstatus) plus CredentialsValid and Validated."),
    ),
    resources: Type.Optional(
      Type.Array(CloudResourceRefSchema, {
        description: "Every cloud resource this environment owns.",
        maxItems: 256,
      }),
    ),
    aws: Type.Optional(
      Type.Object(
        {
          accountId: Type.Optional(Type.String({ description: "AWS account ID of the credentials.", maxLength: 12 })),
          roleArn: Type.Optional(Type.String({ description: "ARN of the instances' IAM role.", maxLength: 2048 })),
          instanceProfileArn: Type.Optional(
            Type.String({ description: "ARN of the instance profile instances are launched with.", maxLength: 2048 }),
          ),
          vpcId: Type.Optional(Type.String({ description: "VPC the instances are launched in.", maxLength: 64 })),
          subnetIds: Type.Optional(
            Type.Array(Type.String({ description: "Subnet ID.", maxLength: 64 }), {
              description: "Subnets the instances may be launched in.",
              maxItems: 256,
            }),
          ),
          securityGroupIds: Type.Optional(
            Type.Array(Type.String({ description: "Security group ID.", maxLength: 64 }), {
              description: "Security groups attached to the instances.",
              maxItems: 64,
            }),
          ),
          amiId: Type.Optional(Type.String({ description: "AMI the instances boot.", maxLength: 64 })),
          rootDeviceName: Type.Optional(
            Type.String({ description: "Root device name of the AMI, e.g. /dev/xvda.", maxLength: 128 }),
          ),
          architecture: Type.Optional(
            StringEnum(["x86_64", "arm64"] as const, { description: "CPU architecture of the AMI and instance type." }),
          ),
          instanceType: Type.Optional(
            Type.String({ description: "Instance type Runs use unless they override it.", maxLength: 64 }),
          ),
          logGroup: Type.Optional(
            Type.String({ description: "CloudWatch Logs group receiving the runs' logs.", maxLength: 512 }),
          ),
        },
        { description: "What the operator resolved and validated in AWS." },
      ),
    ),
    azure: Type.Optional(
      StringMap({
        description: "What the operator resolved in Azure (resource IDs by name).",
        valueDescription: "Value, usually an Azure resource ID.",
        maxProperties: 64,
        valueMaxLength: 2048,
      }),
    ),
    activeRuns: Type.Optional(
      Type.Integer({ description: "Number of Runs that currently have a machine.", minimum: 0, format: "int32" }),
    ),
  },
  { description: "Observed state of a ComputeEnvironment, written by the operator." },
);

// ---------------------------------------------------------------------------------------------
// Run
// ---------------------------------------------------------------------------------------------

export const PipelineSchema = Type.Object(
  {
    repository: Type.String({
      description:
        "Git repository of the Nextflow pipeline: an https:// URL (e.g. https://github.com/nextflow-io/hello) or an SSH address git@host:org/repo.git.",
      minLength: 1,
      maxLength: 2048,
      [XV]: [
        {
          rule: "self.matches(r'^https://[A-Za-z0-9.-]+(:[0-9]+)?/[^\\s]+$') || self.matches(r'^git@[A-Za-z0-9.-]+:[^\\s]+$')",
          message:
            "pipeline.repository must be an https:// URL of a git repository (e.g. https://github.com/nextflow-io/hello) or an SSH address like git@github.com:org/repo.git",
        },
      ],
    }),
    revision: Type.Optional(
      Type.String({
        description: "Branch, tag or commit of the pipeline to run. The repository's default branch when unset.",
        maxLength: 255,
        [XV]: [
          matches(
            "^[^\\s~^:?*\\[\\\\]+$",
            "revision must be a branch, tag or commit without spaces or any of ~ ^ : ? * [ \\",
          ),
        ],
      }),
    ),
    profiles: Type.Optional(
      Type.Array(
        Type.String({
          description: "A configuration profile name.",
          maxLength: 64,
          [XV]: [matches("^[A-Za-z0-9_.-]+$", "profile names may only contain letters, digits, '.', '_' and '-'")],
        }),
        {
          description: "Nextflow configuration profiles to activate (-profile).",
          maxItems: 32,
        },
      ),
    ),
    params: Type.Optional(
      Type.Unsafe<Record<string, unknown>>({
        type: "object",
        description: "Pipeline parameters as a free-form object (passed as a params file).",
        maxProperties: 1024,
        "x-kubernetes-preserve-unknown-fields": true,
      }),
    ),
    config: Type.Optional(
      Type.String({
        description: "Extra Nextflow configuration text for this run, applied after the environment's.",
        maxLength: 65536,
      }),
    ),
    resume: Type.Optional(
      Type.Boolean({
        description: "Resume from the cached results in the work directory (-resume). Defaults to false.",
        default: false,
      }),
    ),
    nextflowVersion: Type.Optional(
      Type.String({
        description: "Nextflow version to run, e.g. 25.04.6 or 25.10.0-edge. The image's version when unset.",
        maxLength: 32,
        [XV]: [
          matches(
            "^[0-9]+\\.[0-9]+\\.[0-9]+(-[A-Za-z0-9.]+)?$",
            "nextflowVersion must be a release number such as 25.04.6 or 25.10.0-edge",
          ),
        ],
      }),
    ),
    resumeFrom: Type.Optional(
      Type.String({
        description:
          "Name of an earlier Run in this namespace (same ComputeEnvironment work directory) whose Nextflow session this run resumes, reusing its cached task results (-resume <session>). Each Run is a fresh machine; the cache lives in the work directory.",
        maxLength: 253,
        [XV]: [matches("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", "resumeFrom must be the name of a Run (a DNS subdomain name)")],
      }),
    ),
    runName: Type.Optional(
      Type.String({
        description: "Nextflow run name (-name). Nextflow picks a random one when unset.",
        maxLength: 80,
        [XV]: [
          matches(
            "^[a-z]([a-z0-9]|[-_][a-z0-9])*$",
            "runName must start with a lowercase letter and contain only lowercase letters, digits and single '-' or '_' between them",
          ),
        ],
      }),
    ),
    workDir: Type.Optional(
      Type.String({
        description:
          "Work directory for this run, overriding the environment's (s3://bucket[/path] on AWS, az://container[/path] on Azure).",
        maxLength: 1024,
        [XV]: [
          matches(
            "^(s3://[a-z0-9.-]{3,63}|az://[a-z0-9][a-z0-9-]{1,61}[a-z0-9])(/.*)?$",
            "pipeline.workDir must be a path like s3://my-bucket/work or az://my-container/work",
          ),
        ],
      }),
    ),
  },
  {
    description: "The Nextflow pipeline to run.",
    [XV]: [
      {
        rule: `!has(self.config) || bytes(self.config).size() <= ${USER_DATA_TEXT_BUDGET_BYTES}`,
        message: `config must be at most ${USER_DATA_TEXT_BUDGET_BYTES} bytes: it travels in the machine's user data (16 KiB on EC2, sent gzip-compressed, shared with the launcher and the ComputeEnvironment's config and scripts)`,
        fieldPath: ".config",
      },
    ],
  },
);

export const RunSpecSchema = Type.Object(
  {
    computeEnvironmentRef: Type.Object(
      {
        name: ObjectName("Name of the ComputeEnvironment.", "ComputeEnvironment"),
      },
      {
        description: "The ComputeEnvironment, in the same namespace, to run on. Immutable.",
        [XV]: [immutable("computeEnvironmentRef", "create a new Run to use another ComputeEnvironment")],
      },
    ),
    pipeline: PipelineSchema,
    overrides: Type.Optional(
      Type.Object(
        {
          instanceType: Type.Optional(
            Type.String({
              description: "Instance type (AWS) or VM size (Azure) for this run instead of the environment's.",
              maxLength: 64,
              [XV]: [
                matches(
                  "^[A-Za-z][A-Za-z0-9_.-]*$",
                  "overrides.instanceType must be an instance type such as m6i.xlarge or a VM size such as Standard_D4ds_v5",
                ),
              ],
            }),
          ),
          bootDiskSizeGiB: Type.Optional(
            BootDiskSize(
              `Boot disk size in GiB for this run (${MIN_BOOT_DISK_GIB}..${MAX_BOOT_DISK_GIB}) instead of the environment's.`,
            ),
          ),
          spot: Type.Optional(
            Type.Boolean({ description: "Run on a Spot instance (cheaper, may be interrupted). On-demand when unset." }),
          ),
        },
        { description: "Per-run changes to the environment's machine settings." },
      ),
    ),
    timeout: Type.Optional(
      Type.String({
        description:
          "Longest the run may take, e.g. 90m, 6h or 1h30m (whole hours, minutes and seconds, at least 1m). The machine is stopped and the Run fails when it is exceeded. When unset, the ComputeEnvironment's defaultRunTimeout applies.",
        maxLength: 24,
        [XV]: [
          {
            rule: `self.matches(r'${DURATION_PATTERN}') && self != ''`,
            message: "timeout must be a duration such as 90m, 6h or 1h30m (whole h, m and s units in that order)",
          },
          {
            rule: `!self.matches(r'${DURATION_PATTERN}') || self == '' || duration(self) >= duration('${MIN_RUN_TIMEOUT}')`,
            message: `timeout must be at least ${MIN_RUN_TIMEOUT}`,
          },
        ],
      }),
    ),
    ttlSecondsAfterFinished: Type.Optional(
      Type.Integer({
        description:
          "Delete the Run this many seconds after it finished (Succeeded, Failed or Cancelled; counted from status.completionTime), as for a Job. 0 deletes it as soon as it finished. Kept until deleted by hand (or by its ComputeEnvironment's runHistory) when unset. May be changed at any time.",
        minimum: 0,
        maximum: 2147483647,
        format: "int32",
      }),
    ),
    cancel: Type.Optional(
      Type.Boolean({
        description:
          "Set to true to cancel the run: the machine is stopped and the Run ends Cancelled. Cannot be set back to false. Defaults to false.",
        default: false,
        [XV]: [{ rule: "self || !oldSelf", message: "cancel cannot be set back to false once a Run was cancelled" }],
      }),
    ),
  },
  {
    description: "Desired state of a Run. Only `cancel` and `ttlSecondsAfterFinished` may change after creation.",
    [XV]: [
      {
        rule:
          "self.pipeline == oldSelf.pipeline" +
          " && has(self.overrides) == has(oldSelf.overrides) && (!has(self.overrides) || self.overrides == oldSelf.overrides)" +
          " && has(self.timeout) == has(oldSelf.timeout) && (!has(self.timeout) || self.timeout == oldSelf.timeout)",
        message: "a Run is once-only: only spec.cancel and spec.ttlSecondsAfterFinished may change after creation; create a new Run instead",
      },
    ] satisfies CelRule[],
  },
);

export const RunStatusSchema = Type.Object(
  {
    observedGeneration: Type.Optional(
      Type.Integer({
        description: "metadata.generation last acted on by the operator.",
        format: "int64",
        minimum: 0,
      }),
    ),
    phase: Type.Optional(
      StringEnum(RUN_PHASES, {
        description: `Where the run is in its life: ${RUN_PHASES.join(", ")}. Succeeded, Failed and Cancelled are final.`,
      }),
    ),
    conditions: Type.Optional(Conditions("Ready, Reconciling and Stalled (kstatus) plus detail types.")),
    reason: Type.Optional(
      Type.String({ description: "CamelCase reason for the current phase, e.g. WaitingForEnvironment.", maxLength: 1024 }),
    ),
    message: Type.Optional(Type.String({ description: "Human-readable detail about the current phase.", maxLength: 32768 })),
    instance: Type.Optional(
      Type.Object(
        {
          id: Type.String({ description: "Instance ID (AWS) or VM resource ID (Azure).", maxLength: 1024 }),
          type: Type.Optional(Type.String({ description: "Instance type or VM size.", maxLength: 64 })),
          zone: Type.Optional(Type.String({ description: "Availability zone.", maxLength: 64 })),
          privateIp: Type.Optional(Type.String({ description: "Private IP address.", maxLength: 64 })),
          spot: Type.Optional(Type.Boolean({ description: "Whether the machine is a Spot instance." })),
          state: Type.Optional(Type.String({ description: "Last machine state seen in the cloud.", maxLength: 64 })),
        },
        { description: "The machine running the pipeline." },
      ),
    ),
    launchedAt: Type.Optional(
      Type.String({ description: "When the machine was launched (RFC 3339).", format: "date-time" }),
    ),
    startTime: Type.Optional(
      Type.String({ description: "When the operator started working on the run (RFC 3339).", format: "date-time" }),
    ),
    completionTime: Type.Optional(
      Type.String({ description: "When the run reached a final phase (RFC 3339).", format: "date-time" }),
    ),
    exitCode: Type.Optional(Type.Integer({ description: "Exit code of the pipeline, once known.", format: "int32" })),
    capacityWait: Type.Optional(
      Type.Object(
        {
          refusals: Type.Integer({ description: "Launch attempts the cloud refused for capacity or quota so far.", format: "int32", minimum: 1 }),
          notBefore: Type.String({ description: "The next launch attempt is not made before this time (RFC 3339); the wait doubles with each refusal, up to 5 minutes.", format: "date-time" }),
          reason: Type.Optional(Type.String({ description: "The cloud's reason for the last refusal (e.g. AllocationFailed, SkuNotAvailable).", maxLength: 128 })),
        },
        { description: "Once the cloud refused the Run's launch for capacity or quota: how often, when it is tried again, and why (kept across operator restarts, and through a launch the cloud accepts, as it may still fail to place the machine). Removed once the machine runs or the Run ends." },
      ),
    ),
    log: Type.Optional(
      Type.Object(
        {
          provider: StringEnum(["cloudwatch", "loganalytics"] as const, {
            description: "Where the log lives: cloudwatch (AWS) or loganalytics (Azure).",
          }),
          group: Type.Optional(Type.String({ description: "CloudWatch Logs group.", maxLength: 512 })),
          stream: Type.Optional(Type.String({ description: "CloudWatch Logs stream.", maxLength: 512 })),
          workspace: Type.Optional(
            Type.String({ description: "Log Analytics workspace (resource ID or customer ID).", maxLength: 1024 }),
          ),
          table: Type.Optional(Type.String({ description: "Log Analytics table.", maxLength: 256 })),
        },
        { description: "Where the run's log can be read." },
      ),
    ),
  },
  { description: "Observed state of a Run, written by the operator." },
);
