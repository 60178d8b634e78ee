// raw.withInterrupts: the signal timer behind the EINTR tests (kvm.test.ts's
// KVM_CREATE_VM and guest-memfd.test.ts's fallocate under a storm, which
// need /dev/kvm). Here, with no KVM: what it returns and throws, that its
// timer exists only while `fn` runs (the kernel lists a process's POSIX
// timers in /proc/self/timers), and that the process lives through them.
import { readFileSync, readlinkSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { raw } from '../lib/index.js';
import { gate, needs, thrown } from './helpers.js';

const procTimers = gate(needs.env('proc-timers'));

/** The POSIX timers of this process, as the kernel lists them. */
function timers(): string[] {
  return readFileSync('/proc/self/timers', 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('ID:'));
}

/** fn throws under the timer: the very error comes out of withInterrupts. */
function expectThrowPassesThrough(): void {
  const boom = new RangeError('from fn');
  expect(
    thrown(() =>
      raw.withInterrupts(5000, () => {
        throw boom;
      }),
    ),
  ).toBe(boom);
}

describe('raw.withInterrupts', () => {
  test("returns fn's value", () => {
    expect(raw.withInterrupts(1000, () => 42)).toBe(42);
  });

  test("fn's error comes back unchanged", () => {
    expectThrowPassesThrough();
  });

  procTimers.test('its timer signals this thread and is gone afterwards', () => {
    const before = timers().length;
    let during: string[] = [];
    const got = raw.withInterrupts(1000, () => {
      during = readFileSync('/proc/self/timers', 'utf8').split('\n');
      return 42;
    });
    expect(got).toBe(42);
    expect(during.filter((l) => l.startsWith('ID:')).length).toBe(before + 1);
    // "notify: signal/tid.<tid>": the signal goes to this thread, not the process.
    const tid = readlinkSync('/proc/thread-self').split('/').pop();
    expect(during).toContain(`notify: signal/tid.${tid}`);
    expect(timers().length).toBe(before);
  });

  procTimers.test('a throw from fn deletes the timer too', () => {
    const before = timers().length;
    expectThrowPassesThrough();
    expect(timers().length).toBe(before);
  });

  procTimers.test('nests: each call owns its own timer', () => {
    const before = timers().length;
    const inner = raw.withInterrupts(1000, () => raw.withInterrupts(1000, () => timers().length));
    expect(inner).toBe(before + 2);
    expect(timers().length).toBe(before);
  });

  test('the process goes on through the signals (the handler does nothing)', () => {
    // 50 ms at the shortest interval (1 ms): some tens of signals handled inside this loop.
    const n = raw.withInterrupts(1000, () => {
      let i = 0;
      const end = Date.now() + 50;
      while (Date.now() < end) i++;
      return i;
    });
    expect(n).toBeGreaterThan(0);
  });

  test.each([
    [0, 'ERR_INVALID_ARG_VALUE'],
    [999, 'ERR_INVALID_ARG_VALUE'],
    [-1, 'ERR_INVALID_ARG_VALUE'],
    [1_000_001, 'ERR_INVALID_ARG_VALUE'],
    [1.5, 'ERR_INVALID_ARG_VALUE'],
    ['1000', 'ERR_INVALID_ARG_VALUE'],
    [2n, 'ERR_INVALID_ARG_VALUE'],
  ])('intervalUs %s is refused (%s), fn not called', (us, code) => {
    let called = false;
    const e = thrown(() =>
      raw.withInterrupts(us as number, () => {
        called = true;
      }),
    ) as NodeJS.ErrnoException;
    expect(e.code).toBe(code);
    expect(e.message).toContain('intervalUs must be an integer 1000..1000000');
    expect(called).toBe(false);
  });

  procTimers.test('a refused call leaves no timer', () => {
    const before = timers().length;
    thrown(() => raw.withInterrupts(999, () => undefined));
    thrown(() => raw.withInterrupts(1000, null as unknown as () => void));
    expect(timers().length).toBe(before);
  });

  test('fn must be a function (ERR_INVALID_ARG_TYPE)', () => {
    const e = thrown(() => raw.withInterrupts(1000, 7 as unknown as () => void)) as NodeJS.ErrnoException;
    expect(e.code).toBe('ERR_INVALID_ARG_TYPE');
    expect(e.message).toContain('fn must be a function');
  });
});
