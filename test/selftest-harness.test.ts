// The KTAP harness of kvm-gmem/selftest, as the kernel's tools read it:
// each scenario of fixtures/selftest-scenarios.mjs runs in its own process
// (through the package's own 'kvm-gmem/selftest' entry) and its exact
// output and exit status are checked: TAP version 13, the plan, ok / not ok /
// # SKIP lines, '# ' diagnostics with expected and actual values and the
// failing line, the Totals line, Bail out!, and exits 0 / 1 / 4.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { beforeAll, describe, expect, test } from 'vitest';
import { ensureDist, needs } from './helpers.js';
import { root } from './support/cli-run.js';

const fixture = join(root, 'test', 'fixtures', 'selftest-scenarios.mjs');

function scenario(name: string, env: NodeJS.ProcessEnv = {}): { status: number | null; signal: NodeJS.Signals | null; lines: string[]; stderr: string } {
  const r = spawnSync(process.execPath, [fixture, name], { cwd: root, encoding: 'utf8', timeout: 60_000, env: { ...process.env, ...env } });
  if (r.error) throw r.error;
  return { status: r.status, signal: r.signal, lines: r.stdout.split('\n').slice(0, -1), stderr: r.stderr };
}

beforeAll(() => ensureDist(['examples']), 300_000);

describe('kvm-gmem/selftest: KTAP output and kselftest exit statuses', () => {
  test('pass, fail, skip, async and a thrown error: the lines kselftest prints, diagnostics before not ok, exit 1', () => {
    const r = scenario('mixed');
    expect(r.status).toBe(1);
    expect(r.lines.slice(0, 3)).toEqual(['TAP version 13', '1..5', 'ok 1 passes']);
    const failAt = r.lines.indexOf('not ok 2 fails with values');
    expect(r.lines.slice(3, failAt)).toEqual([
      '# fails with values: GM-3 st_size: expected { size: 4097n }, got { size: 4096n }',
      expect.stringMatching(/^# {3}at .*selftest-scenarios\.mjs:\d+:\d+\)?$/) as string,
    ]);
    expect(r.lines.slice(failAt + 1, failAt + 4)).toEqual(['ok 3 skips # SKIP needs something this host lacks', '# a diagnostic 42', 'ok 4 async passes']);
    expect(r.lines[failAt + 4]).toBe('# throws: RangeError: not an assertion');
    expect(r.lines.at(-2)).toBe('not ok 5 throws');
    expect(r.lines.at(-1)).toBe('# Totals: pass:2 fail:2 xfail:0 xpass:0 skip:1 error:0');
    expect(r.lines.every((l) => /^(TAP version 13|1\.\.\d+|(not )?ok \d+ .+|# .*|#)$/.test(l))).toBe(true);
  });

  test('all passing: exactly the header, the plan, the results and the totals; exit 0', () => {
    const r = scenario('all-pass');
    expect(r.status).toBe(0);
    expect(r.lines).toEqual(['TAP version 13', '1..2', 'ok 1 one', 'ok 2 two', '# Totals: pass:2 fail:0 xfail:0 xpass:0 skip:0 error:0']);
    expect(r.stderr).toBe('');
  });

  test('every test skipped: exit 4 (KSFT_SKIP); requires() with a predicate names its reason', () => {
    const r = scenario('all-skip');
    expect(r.status).toBe(4);
    expect(r.lines).toEqual([
      'TAP version 13',
      '1..2',
      'ok 1 one # SKIP Requirement not met: a predicate that is false',
      'ok 2 two # SKIP two',
      '# Totals: pass:0 fail:0 xfail:0 xpass:0 skip:2 error:0',
    ]);
  });

  test('a requirement unmet at the top level skips the file: `1..0 # SKIP reason`, exit 4, nothing else', () => {
    const r = scenario('file-skip');
    expect(r.status).toBe(4);
    expect(r.lines).toEqual(['TAP version 13', '1..0 # SKIP Requirement not met: the file needs a thing']);
    const d = scenario('file-skip-direct');
    expect(d.status).toBe(4);
    expect(d.lines).toEqual(['TAP version 13', '1..0 # SKIP no KVM_CAP_FOO here']);
  });

  test('openKvm(): a missing device skips the file naming it (exit 4); any other open error is a failure, not a skip', () => {
    const r = scenario('no-device');
    expect(r.status).toBe(4);
    expect(r.lines).toEqual([
      'TAP version 13',
      '1..0 # SKIP Cannot open /nonexistent/kvm: open failed: ENOENT (no such file or directory); sent path=/nonexistent/kvm',
    ]);
    const other = scenario('not-a-device');
    expect(other.status).not.toBe(4);
    expect(other.status).not.toBe(0);
    expect(other.lines.some((l) => l.includes('SKIP'))).toBe(false);
  });

  test('assertErrno: the kernel error is returned; another errno or a success fails with the request that was sent', () => {
    const r = scenario('errno');
    expect(r.status).toBe(1);
    expect(r.lines).toContain('ok 1 ENOENT from open');
    const wrong = r.lines.indexOf('not ok 2 not the errno expected');
    expect(r.lines[wrong - 3]).toBe(
      '# not the errno expected: GM-1 size 1: expected the kernel to fail with EINVAL, got KvmError ENOENT: open failed: ENOENT (no such file or directory); sent path=/nonexistent/kvm',
    );
    expect(r.lines[wrong - 2]).toMatch(/^# {3}at .*selftest-scenarios\.mjs:\d+/);
    expect(r.lines[wrong - 1]).toBe('#   open failed: ENOENT (no such file or directory); sent path=/nonexistent/kvm');
    expect(r.lines).toContain('# a call that succeeds: expected the kernel to fail with EINVAL, but the call succeeded (returned 7)');
    expect(r.lines).toContain('not ok 3 a call that succeeds');
    expect(r.lines).toContain('ok 4 assertThrows');
    expect(r.lines.at(-1)).toBe('# Totals: pass:2 fail:2 xfail:0 xpass:0 skip:0 error:0');
  });

  test('a malformed requirement fails its test with the valid names, not a skip', () => {
    const r = scenario('bad-requirement');
    expect(r.status).toBe(1);
    expect(r.lines.find((l) => l.startsWith('# a misspelt requirement'))).toContain("unknown requirement 'GUEST_MEMFDX'");
    expect(r.lines).toContain('not ok 1 a misspelt requirement fails the test');
  });

  test('an async test past its timeout fails as # TIMEOUT and the run goes on', () => {
    const r = scenario('async-timeout');
    expect(r.status).toBe(1);
    expect(r.lines).toEqual([
      'TAP version 13',
      '1..2',
      '# too slow: timed out after 100 ms',
      'not ok 1 too slow # TIMEOUT 100 ms',
      'ok 2 next one still runs',
      '# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0',
    ]);
  });

  test('a test that blocks its thread past its timeout: the watchdog prints Bail out! and the totals, and kills the process', () => {
    const r = scenario('blocked');
    expect(r.signal).toBe('SIGKILL');
    expect(r.lines).toEqual([
      'TAP version 13',
      '1..3',
      'ok 1 fine',
      '# timeout: test 2 (blocks the thread) blocked past its 200 ms',
      'Bail out! timeout: test 2 (blocks the thread) blocked past its 200 ms',
      '# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0',
    ]);
  });

  test('the file timeout (configure or KVM_GMEM_SELFTEST_TIMEOUT_S) ends the run the same way', () => {
    const r = scenario('file-timeout');
    expect(r.signal).toBe('SIGKILL');
    expect(r.lines.slice(-3)).toEqual([
      '# timeout: the file ran past its 300 ms',
      'Bail out! timeout: the file ran past its 300 ms',
      '# Totals: pass:0 fail:1 xfail:0 xpass:0 skip:0 error:0',
    ]);
    const e = scenario('all-pass', { KVM_GMEM_SELFTEST_TIMEOUT_S: '30' });
    expect(e.status).toBe(0);
  });

  test('a test registered while the run goes on is a Bail out!, exit 1', () => {
    const r = scenario('late-register');
    expect(r.status).toBe(1);
    expect(r.lines.at(-1)).toMatch(/^Bail out! test\('late'\) was registered after the run started/);
  });

  test('run() after a top-level await runs what was registered', () => {
    const r = scenario('explicit-run');
    expect(r.status).toBe(0);
    expect(r.lines).toEqual(['TAP version 13', '1..1', 'ok 1 after a top-level await', '# Totals: pass:1 fail:0 xfail:0 xpass:0 skip:0 error:0']);
  });
});

describe('a selftest against this kernel', () => {
  test('examples/guest-memfd-selftest.ts: every check ok where KVM_CAP_GUEST_MEMFD is offered, else the whole file skipped naming it (exit 4)', () => {
    const r = spawnSync(process.execPath, [join(root, 'dist', 'examples', 'guest-memfd-selftest.js')], { cwd: root, encoding: 'utf8', timeout: 300_000 });
    const lines = r.stdout.split('\n').slice(0, -1);
    if (needs.cap('GUEST_MEMFD', 'kvm').met) {
      expect(lines.slice(0, 2)).toEqual(['TAP version 13', '1..6']);
      expect(lines.filter((l) => /^(not )?ok /.test(l)).map((l) => l.replace(/ GM-\d+ .*/, ''))).toEqual(['ok 1', 'ok 2', 'ok 3', 'ok 4', 'ok 5', 'ok 6']);
      expect(lines.at(-1)).toBe('# Totals: pass:6 fail:0 xfail:0 xpass:0 skip:0 error:0');
      expect(r.status).toBe(0);
    } else {
      expect(lines[0]).toBe('TAP version 13');
      expect(lines[1]).toMatch(/^1\.\.0 # SKIP Requirement not met: GUEST_MEMFD \(/);
      expect(lines).toHaveLength(2);
      expect(r.status).toBe(4);
    }
  });
});
