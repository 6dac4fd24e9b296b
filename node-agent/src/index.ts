// The library's public surface: define replicated types, run an agent that hosts them, talk to a group.

export { ReplicatedObject, Persistent, MethodError } from './objects/replicated.ts';
export type { Json, UpdateContext, ReplicatedType } from './objects/replicated.ts';
export { KvStore, LogObject, shardForKey, BUILTIN_TYPES } from './objects/kv.ts';
export { Agent, resolveTypes } from './agent/agent.ts';
export type { AgentOptions } from './agent/agent.ts';
export { runAgent, EXIT_CONFIG, EXIT_REPLICA } from './agent/main.ts';
export { RequestError } from './agent/driver.ts';
export type { InvokeResult, WaitFor } from './agent/driver.ts';
export { DerechoClient, KvClient, DerechoError } from './client/client.ts';
export { loadAgentConfig, loadGroupManifest, parseGroupManifest } from './config/load.ts';
export { ConfigError } from './config/errors.ts';
export type { Version, NodeId, View } from './core/types.ts';
