// What the benchmarks use of the package: the public API plus the rules
// engine, imported from the sources so the numbers are the package's own.
export * from '../../lib/index.js';
export { MemslotTable, type SlotEntry } from '../../lib/model/memslot-table.js';
export { IntervalMap } from '../../lib/model/interval-map.js';
export { judge, apply, type MemslotLimits } from '../../lib/rules/memslot.js';
