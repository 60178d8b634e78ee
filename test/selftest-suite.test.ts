// `kvm-gmem selftest`, the suite runner, as kernel CI reads it: the exact
// KTAP it prints in its three forms (in-process by default, --isolate,
// --kernel-tap as runner.sh prints), its exit statuses, and its usage
// errors, on the fixture files of test/fixtures/suite (a file that passes,
// one that fails, one skipped at its top level, one that reads its argv).
// The real suite (dist/selftests) runs against the kernel in
// test/selftests.test.ts.
import { join } from 'node:path';
import { beforeAll, describe, expect, test } from 'vitest';
import { ensureDist } from './helpers.js';
import { root, run } from './support/cli-run.js';

const dir = join(root, 'test', 'fixtures', 'suite');
const lines = (s: string): string[] => s.split('\n').slice(0, -1);
// Wall times differ run to run.
const timeless = (s: string): string[] => lines(s).map((l) => l.replace(/time: \d+\.\d{3} s$/, 'time: T s'));

beforeAll(() => ensureDist(['selftests']), 300_000);

const fileA = ['    TAP version 13', '    1..2', '    # loaded'];
const fileB = ['    TAP version 13', '    1..2'];
const failB = ['    # fails: one: expected 2, got 1', expect.stringMatching(/^ {4}# {3}at .*b_fails\.js:\d+:\d+\)?$/) as string, '    not ok 2 fails'];
const skipC = ['    TAP version 13', '    1..0 # SKIP Requirement not met: a capability this file invents'];

describe('kvm-gmem selftest: the suite runner', () => {
  test('in one process: each file a subtest indented four spaces, a wall time per test and per file, totals over files; exit 1 when one failed', () => {
    const r = run(['selftest', '--dir', dir, '--', '-n', '2']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(1);
    expect(timeless(r.stdout)).toEqual([
      'TAP version 13',
      '1..4',
      ...fileA,
      '    # time: T s',
      '    ok 1 first',
      '    # time: T s',
      '    ok 2 second',
      '    # Totals: pass:2 fail:0 xfail:0 xpass:0 skip:0 error:0',
      '# time: T s',
      'ok 1 a_passes',
      ...fileB,
      '    # time: T s',
      '    ok 1 passes',
      '    # time: T s',
      ...failB,
      '    # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0',
      '# time: T s',
      'not ok 2 b_fails # exit=1',
      ...skipC,
      '# time: T s',
      'ok 3 c_skips # SKIP',
      '    TAP version 13',
      '    1..1',
      '    # time: T s',
      '    ok 1 argv',
      '    # Totals: pass:1 fail:0 xfail:0 xpass:0 skip:0 error:0',
      '# time: T s',
      'ok 4 d_args',
      '# Totals: pass:2 fail:1 xfail:0 xpass:0 skip:1 error:0',
    ]);
  });

  test('--isolate: the same stream, each file its own process', () => {
    const inProcess = run(['selftest', '--dir', dir, '--', '-n', '2']);
    const isolated = run(['selftest', '--dir', dir, '--isolate', '--', '-n', '2']);
    expect(isolated.status).toBe(1);
    expect(timeless(isolated.stdout)).toEqual(timeless(inProcess.stdout));
  });

  test("--kernel-tap: what kselftest's runner.sh prints: '# selftests: kvm: NAME', the file's lines behind '# ', `ok N selftests: kvm: NAME`", () => {
    const r = run(['selftest', '--dir', dir, '--kernel-tap', 'a_passes', 'c_skips']);
    expect(r.status).toBe(0);
    expect(timeless(r.stdout)).toEqual([
      'TAP version 13',
      '1..2',
      '# selftests: kvm: a_passes',
      '# TAP version 13',
      '# 1..2',
      '# # loaded',
      '# # time: T s',
      '# ok 1 first',
      '# # time: T s',
      '# ok 2 second',
      '# # Totals: pass:2 fail:0 xfail:0 xpass:0 skip:0 error:0',
      'ok 1 selftests: kvm: a_passes',
      '# selftests: kvm: c_skips',
      '# TAP version 13',
      '# 1..0 # SKIP Requirement not met: a capability this file invents',
      'ok 2 selftests: kvm: c_skips # SKIP',
      '# Totals: pass:1 fail:0 xfail:0 xpass:0 skip:1 error:0',
    ]);
  });

  test('every file skipped: exit 4 (KSFT_SKIP); names select files, in the order given, once each', () => {
    const r = run(['selftest', '--dir', dir, 'c_skips', 'c_skips']);
    expect(r.status).toBe(4);
    expect(timeless(r.stdout)).toEqual([
      'TAP version 13',
      '1..1',
      ...skipC,
      '# time: T s',
      'ok 1 c_skips # SKIP',
      '# Totals: pass:0 fail:0 xfail:0 xpass:0 skip:1 error:0',
    ]);
  });

  test('--list names the files; an unknown name, option or empty directory is a usage error (exit 2) naming what exists', () => {
    expect(run(['selftest', '--dir', dir, '--list'])).toEqual({ status: 0, stdout: 'a_passes\nb_fails\nc_skips\nd_args\n', stderr: '' });
    const unknown = run(['selftest', '--dir', dir, 'nope']);
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toBe('kvm-gmem selftest: no test named nope; the tests are: a_passes, b_fails, c_skips, d_args\n');
    const bad = run(['selftest', '--frobnicate']);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/^kvm-gmem selftest: unknown option '--frobnicate'\nusage: kvm-gmem selftest/);
    const empty = run(['selftest', '--dir', join(root, 'test', 'fixtures', 'no-such-dir')]);
    expect(empty.status).toBe(2);
    expect(empty.stderr).toContain('no tests in');
  });

  test('the shipped suite lists its ports', () => {
    const r = run(['selftest', '--list']);
    expect(r.status).toBe(0);
    expect(lines(r.stdout)).toEqual(expect.arrayContaining(['guest_memfd_test', 'pre_fault_memory_test', 'private_mem_kvm_exits_test', 'vm_types_test']));
  });
});
