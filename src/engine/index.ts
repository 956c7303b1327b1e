// Public surface of the controller engine. src/engine imports nothing else from src/.
export * from "./kube.js";
export * from "./clock.js";
export * from "./store.js";
export * from "./reflector.js";
export * from "./queue.js";
export * from "./controller.js";
export * from "./echoes.js";
export * from "./finalizers.js";
export * from "./conditions.js";
export * from "./events.js";
export * from "./leader.js";
export * from "./metrics.js";
export * from "./health.js";
export * from "./logger.js";
export * from "./kubeconfig.js";
