/** The memory layer: a heap of registered memory handing out leases. */
export { Heap, createHeap, sharedHeap } from "./heap.js";
export type { HeapOptions, HeapStats, ClassStats, LeakReport } from "./heap.js";
export { Lease } from "./lease.js";
export type { MemoryRegistrar } from "./slab.js";
