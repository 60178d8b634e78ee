// Memory probes: touch memory with SIGBUS and SIGSEGV caught by the addon
// (native/mmap.cc), so a fault comes back as a value (the kernel selftests'
// TEST_EXPECT_SIGBUS). Mapping.probe() probes a mapping the package owns;
// raw.probeMemory() any address.
import { argError, rangeError, typeCode } from '../args.js';
import type { NativeProbe } from './native.js';

/** What a probe saw: 'ok', or the signal the first faulting byte raised and its address. */
export interface ProbeResult {
  result: 'ok' | 'SIGBUS' | 'SIGSEGV';
  /** The faulting address; null when result is 'ok'. */
  address: bigint | null;
  /** Bytes read or written before the fault (the whole length when 'ok'). */
  done: number;
  /** A read's bytes, the `done` first of the range (a copy); null for a write. */
  data: Uint8Array | null;
}

export type ProbeAccess = 'read' | 'write';

/** Checks a probe's access and byte (the range is the caller's). @internal */
export function probeArgs(access: unknown, byte: unknown, op: string): { write: boolean; byte: number } {
  if (access !== 'read' && access !== 'write')
    throw argError(
      `${op}: access must be 'read' or 'write', got ${String(access)}`,
      typeof access === 'string' ? 'ERR_INVALID_ARG_VALUE' : 'ERR_INVALID_ARG_TYPE',
    );
  if (typeof byte !== 'number' || !Number.isInteger(byte) || byte < 0 || byte > 255) {
    if (typeof byte !== 'number') throw argError(`${op}: byte must be an integer 0..255`, typeCode(byte, 'number'));
    throw rangeError(`${op}: byte must be an integer 0..255, got ${byte}`);
  }
  return { write: access === 'write', byte };
}

/** @internal */
export function probeResult(r: NativeProbe): ProbeResult {
  return { result: r.result, address: r.address, done: r.done, data: r.data === null ? null : new Uint8Array(r.data, 0, r.done) };
}
