// Every resource type the emulator serves, and the VM helpers the test controls use.
import type { Emulator } from "../emulator.js";
import { computeTypes, installVmDelete } from "./compute.js";
import type { TypeDef } from "./framework.js";
import { identityTypes } from "./identity.js";
import { keyVaultTypes } from "./keyvault.js";
import { monitorTypes } from "./monitor.js";
import { networkTypes } from "./network.js";
import { storageTypes } from "./storage.js";

export { controlVm, listVmsForControl, vmHost, type VmPowerControl } from "./compute.js";

export function allTypes(em: Emulator): TypeDef[] {
  installVmDelete(em.arm);
  return [
    ...identityTypes(),
    ...networkTypes(() => em.router),
    ...storageTypes(),
    ...keyVaultTypes(),
    ...computeTypes({
      router: () => em.router,
      catalog: em.catalog,
      capacity: () => em.capacity,
      consumeCapacity: (c) => {
        if (c.count !== undefined) c.count -= 1;
      },
    }),
    ...monitorTypes({ onWorkspacePurged: (id) => em.logs.onWorkspaceDeleted(id) }, em.graveyard),
  ];
}
