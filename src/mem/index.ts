/** The memory layer: a heap of registered memory handing out leases. */
export { Heap, Lease, createHeap, sharedHeap } from "./heap.js";
export type { HeapOptions, HeapStats, ClassStats, LeakReport, MemoryRegistrar } from "./heap.js";
