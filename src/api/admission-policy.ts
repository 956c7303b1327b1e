/**
 * What the CRDs' own rules cannot check, as a ValidatingAdmissionPolicy the API server evaluates:
 * the size of a Run's `pipeline.params`. Params are free-form (x-kubernetes-preserve-unknown-fields),
 * and such data is out of reach of a CRD's CEL rules; an admission policy sees the whole object.
 * Written to crds/ by `npm run gen:crds` beside the CRDs, and shipped with them.
 */
import { GROUP, LABEL_PART_OF, PART_OF_VALUE, VERSION } from "./constants.js";
import { USER_DATA_TEXT_BUDGET_BYTES } from "./schema.js";

export interface PolicyObject {
  apiVersion: string;
  kind: "ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding";
  metadata: { name: string; labels: Record<string, string> };
  spec: Record<string, unknown>;
}

export const RUN_BUDGET_POLICY = "runs-user-data-budget.vmforge.dev";

/**
 * A Run's share of the machine's user data: `pipeline.config` and `pipeline.params` (counted as
 * CEL renders them, which is their JSON size) together at most USER_DATA_TEXT_BUDGET_BYTES.
 * Checked on create only (a Run's pipeline never changes), so Runs admitted before stay editable.
 */
export function admissionPolicyObjects(): PolicyObject[] {
  const labels = { [LABEL_PART_OF]: PART_OF_VALUE };
  const budget = USER_DATA_TEXT_BUDGET_BYTES;
  return [
    {
      apiVersion: "admissionregistration.k8s.io/v1",
      kind: "ValidatingAdmissionPolicy",
      metadata: { name: RUN_BUDGET_POLICY, labels },
      spec: {
        failurePolicy: "Fail",
        matchConstraints: {
          resourceRules: [{ apiGroups: [GROUP], apiVersions: [VERSION], operations: ["CREATE"], resources: ["runs"] }],
        },
        variables: [
          { name: "params", expression: "has(object.spec.pipeline) && has(object.spec.pipeline.params) ? bytes('%s'.format([object.spec.pipeline.params])).size() : 0" },
          { name: "config", expression: "has(object.spec.pipeline) && has(object.spec.pipeline.config) ? bytes(object.spec.pipeline.config).size() : 0" },
        ],
        validations: [
          {
            expression: `variables.params + variables.config <= ${budget}`,
            reason: "Invalid",
            messageExpression:
              `'spec.pipeline.params and spec.pipeline.config together must be at most ${budget} bytes: they travel in the machine\\'s user data (16 KiB on EC2, sent gzip-compressed, shared with the launcher and the ComputeEnvironment\\'s config and scripts); params are ' + string(variables.params) + ' bytes as JSON, config ' + string(variables.config) + ' bytes'`,
          },
        ],
      },
    },
    {
      apiVersion: "admissionregistration.k8s.io/v1",
      kind: "ValidatingAdmissionPolicyBinding",
      metadata: { name: RUN_BUDGET_POLICY, labels },
      spec: { policyName: RUN_BUDGET_POLICY, validationActions: ["Deny"] },
    },
  ];
}
