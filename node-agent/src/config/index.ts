// Configuration of the node agent and the DerechoGroup resource: one schema source (schema.ts), loaders
// for YAML manifests, config files and DERECHO_* variables (load.ts), and error formatting (errors.ts).
export * from './errors.ts';
export * from './load.ts';
export * from './schema.ts';
