// The pure parts of tools/bench/selftests.ts (options, the C build per
// kernel, medians, outcomes, the suite's per-file times, the table): no
// /dev/kvm and no built C tests needed. The bench itself runs with
// `npm run bench:selftests` (docs/BENCHMARKS.md).
import { describe, expect, test } from 'vitest';
import { benchArgs, buildFor, makeRow, outcome, parseArgs, renderTable, suiteFileTimes } from '../tools/bench/selftests.js';
import { median } from '../tools/bench/stats.js';
import type { RunRecord } from '../tools/selftests-c/parse.js';

const run = (wallMs: number, exitCode: number | null = 0, timedOut = false): RunRecord => ({
  exitCode,
  signal: exitCode === null ? 'SIGKILL' : null,
  timedOut,
  timeoutS: 150,
  wallMs,
  output: '',
});

describe('bench:selftests', () => {
  test('options', () => {
    expect(parseArgs([])).toMatchObject({ rounds: 3, build: undefined, timeoutS: 150 });
    expect(parseArgs([]).tests).toContain('memslot_perf_test');
    expect(parseArgs(['--rounds', '5', '--test', 'vm_types_test', '--build', '6.12'])).toMatchObject({ rounds: 5, tests: ['vm_types_test'], build: '6.12' });
    expect(() => parseArgs(['--rounds', '0'])).toThrow(/positive integer/);
    expect(() => parseArgs(['--test', 'nope'])).toThrow(/--test takes one of/);
    expect(() => parseArgs(['--build', '6.1'])).toThrow(/--build takes 6.12 or 7.3/);
    expect(() => parseArgs(['--bogus'])).toThrow(/unknown option --bogus/);
  });

  test('the C build per kernel: 7.3 from 6.13 on, else 6.12', () => {
    expect(buildFor('6.1.192')).toBe('6.12');
    expect(buildFor('6.12.117')).toBe('6.12');
    expect(buildFor('6.18.0-pvm')).toBe('7.3');
    expect(buildFor('7.3.4')).toBe('7.3');
  });

  test("both sides' arguments: the comparison's, and -t 120 for memslot_perf_test where the C build has -t", () => {
    expect(benchArgs('memslot_perf_test', '7.3')).toEqual(['-l', '1', '-s', '1024', '-t', '120']);
    expect(benchArgs('memslot_perf_test', '6.12')).toEqual(['-l', '1', '-s', '1024']);
    expect(benchArgs('guest_memfd_test', '7.3')).toEqual([]);
  });

  test('median and outcome', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 2, 3])).toBe(2.5);
    expect(median([])).toBeNaN();
    expect(outcome(run(1))).toBe('pass');
    expect(outcome(run(1, 4))).toBe('skip');
    expect(outcome(run(1, 1))).toBe('fail (1)');
    expect(outcome(run(1, null, true))).toBe('hang');
  });

  test("the suite's per-file times: unindented lines only", () => {
    const ktap = [
      'TAP version 13',
      '1..2',
      '    TAP version 13',
      '    1..1',
      '    # time: 0.500 s',
      '    ok 1 GM-1 something',
      '# time: 1.250 s',
      'ok 1 guest_memfd_test',
      '    1..0 # SKIP no',
      '# time: 0.010 s',
      'ok 2 vm_types_test # SKIP',
      'not ok 3 set_memory_region_test # exit=1',
    ].join('\n');
    expect(suiteFileTimes(ktap)).toEqual({ guest_memfd_test: 1.25, vm_types_test: 0.01 });
  });

  test('rows, the target and the table', () => {
    // A 2 s C test whose port takes 2.2 s alone and 2.1 s in the suite: 1.05x in the suite, met.
    const long = makeRow('set_memory_region_test', [run(2000), run(2100), run(1900)], [run(2200), run(2300), run(2100)], [2.1, 2.0, 2.2]);
    expect(long).toMatchObject({ c: { outcome: 'pass', medianS: 2 }, port: { outcome: 'pass', medianS: 2.2 }, target: 'met' });
    expect(long.inSuiteRatio).toBeCloseTo(1.05);
    const slow = makeRow('x', [run(2000)], [run(5000)], [4]);
    expect(slow.target).toBe('missed');
    const short = makeRow('vm_types_test', [run(10)], [run(300, 4)], [0.05]);
    expect(short).toMatchObject({ port: { outcome: 'skip' }, target: 'n/a (C < 1 s)' });
    const table = renderTable({
      kernel: '7.3.4',
      build: '7.3',
      rounds: 3,
      rows: [long, short],
      totals: { cS: 2.01, portS: 2.5, suiteS: 2.9, suiteOutcome: 'pass', nodeStartS: 0.75 },
      memslotPerf: [],
    }).split('\n');
    expect(table[0]).toMatch(/^test +C 7\.3 +port +port\/C +in suite +in suite\/C +over C +target <= 1\.2$/);
    expect(table[1]).toMatch(/^set_memory_region_test +2\.00 s pass +2\.20 s pass +1\.10x +2\.10 s +1\.05x +0\.10 s +met$/);
    expect(table[3]).toMatch(/^total +2\.01 s +2\.50 s +1\.24x +2\.90 s pass +1\.44x +0\.89 s$/);
    expect(table[4]).toContain("Node's start-up and module load once: 0.75 s");
  });
});
