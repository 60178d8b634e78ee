// What the benchmarks use of the package: the public API plus the rules
// engine, imported from the sources so the numbers are the package's own.
export * from '../../lib/index.js';
export { MemslotTable, type SlotEntry } from '../../lib/memslot-table.js';
export { IntervalMap } from '../../lib/util/interval-map.js';
export { judge, apply, type MemslotLimits } from '../../lib/memslot-rules.js';
