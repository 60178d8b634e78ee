// The raw layer's struct arguments, with no KVM: every field is read once and
// before the fd (a getter that closes the object must not leave the ioctl to
// go to whatever takes its fd number), and a struct that is not an object is
// a coded TypeError. robustness.test.ts sends bad values to the real kernel.
import { describe, expect, test } from 'vitest';
import { Mapping, raw } from '../lib/index.js';
import { thrown } from './helpers.js';

/** An object whose listed getters log their reads into `log` and return `values`' value. */
function logged<T extends Record<string, unknown>>(values: T, log: string[]): T {
  const o = {} as T;
  for (const [k, v] of Object.entries(values)) Object.defineProperty(o, k, { enumerable: true, get: () => (log.push(k), v) });
  return o;
}

const region = { slot: 0, flags: 0, guestPhysAddr: 0, memorySize: 0x1000, userspaceAddr: 0, guestMemfdOffset: 0, guestMemfd: 0 };

describe('raw struct arguments', () => {
  // fd -1 is refused by the addon (ERR_INVALID_ARG_VALUE) after every field was read: nothing reaches a kernel.
  test.each([
    ['setUserMemoryRegion2', (vm: { fd: number }, log: string[]) => raw.setUserMemoryRegion2(vm, logged(region, log))],
    [
      'setUserMemoryRegion',
      (vm: { fd: number }, log: string[]) => {
        const { guestMemfd: _g, guestMemfdOffset: _o, ...v1 } = region;
        raw.setUserMemoryRegion(vm, logged(v1, log));
      },
    ],
    [
      'setMemoryAttributes',
      (vm: { fd: number }, log: string[]) => raw.setMemoryAttributes(vm, logged({ address: 0, size: 0x1000, attributes: 8, flags: 0 }, log)),
    ],
    ['createGuestMemfd', (vm: { fd: number }, log: string[]) => raw.createGuestMemfd(vm, logged({ size: 0x1000, flags: 0 }, log))],
  ])('%s reads each field once, then the fd', (_name, call) => {
    const log: string[] = [];
    const vm = logged({ fd: -1 }, log);
    expect((thrown(() => call(vm, log)) as { code?: string }).code).toMatch(/^ERR_INVALID_ARG/);
    expect(log.at(-1)).toBe('fd');
    expect(log.filter((k) => k === 'fd')).toHaveLength(1);
    const fields = log.slice(0, -1);
    expect(new Set(fields).size).toBe(fields.length);
  });

  test('enableCap reads its args array once, before the fd', () => {
    const log: string[] = [];
    const args = [1, 2];
    Object.defineProperty(args, 0, { get: () => (log.push('args[0]'), 1) });
    const vm = logged({ fd: -1 }, log);
    thrown(() => raw.enableCap(vm, 1, args));
    expect(log).toEqual(['args[0]', 'fd']);
  });

  test.each([undefined, null, 7, 'x'])('a struct that is %s is ERR_INVALID_ARG_TYPE naming the call', (bad) => {
    for (const [name, f] of [
      ['raw.setUserMemoryRegion2', () => raw.setUserMemoryRegion2(-1, bad as never)],
      ['raw.setUserMemoryRegion', () => raw.setUserMemoryRegion(-1, bad as never)],
      ['raw.setMemoryAttributes', () => raw.setMemoryAttributes(-1, bad as never)],
      ['raw.createGuestMemfd', () => raw.createGuestMemfd(-1, bad as never)],
      ['Mapping.unchecked', () => Mapping.unchecked(bad as never)],
    ] as const) {
      const e = thrown(f) as TypeError & { code?: string };
      expect(e).toBeInstanceOf(TypeError);
      expect(e.code).toBe('ERR_INVALID_ARG_TYPE');
      expect(e.message).toContain(name);
    }
  });
});
