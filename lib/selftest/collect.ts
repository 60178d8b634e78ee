// Which harness a selftest file's calls go to. Run as a program, a file has
// the process's own harness. The suite runner (`kvm-gmem selftest`) imports
// several files into one process: while it loads and runs one, it sets the
// harness that file's calls go to. A global symbol, so that a second copy
// of this module (the package reached by another path) finds it too.
import { Harness } from './harness.js';

const COLLECTING = Symbol.for('kvm-gmem.selftest.collecting');
const slot = globalThis as Record<symbol, Harness | undefined>;
let own: Harness | undefined;

/** The harness of the file being loaded by the suite runner, else the process's own. */
export function current(): Harness {
  return slot[COLLECTING] ?? (own ??= new Harness());
}

/** The suite runner: route kvm-gmem/selftest's calls to `h` (null: back to the process's own harness). */
export function collectInto(h: Harness | null): void {
  slot[COLLECTING] = h ?? undefined;
}
