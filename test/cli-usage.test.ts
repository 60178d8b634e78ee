// Tests of the `kvm-gmem` command that need no /dev/kvm: usage and exit
// statuses, and what the probe reports for a device that cannot be opened
// (missing, no permission) or that is not KVM. cli.test.ts checks the probe
// against a real kernel's answers.
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, test } from 'vitest';
import { describeOpenFailure, type ProbeReport } from '../lib/cli/probe.js';
import { KvmError } from '../lib/index.js';
import { gate, needs } from './helpers.js';
import { bin, buildCli, run } from './support/cli-run.js';

beforeAll(buildCli, 300_000);

const MISSING = '/nonexistent/kvm';

describe('kvm-gmem probe on a device that cannot be opened', () => {
  test('a missing device: a report without capabilities that names ENOENT and what to do, exit 0', () => {
    const r = run(['probe', '--device', MISSING]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('Host');
    expect(r.stdout).toMatch(new RegExp(`device\\s+${MISSING}: unavailable`));
    expect(r.stdout).toContain('No KVM capabilities: the device cannot be opened');
    const why = r.stdout.split('\n').find((l) => l.includes(`cannot open ${MISSING}`));
    expect(why).toContain('ENOENT');
    expect(why).toMatch(/kvm_intel or kvm_amd/);
    expect(why).toMatch(/nested virtualization/);
    expect(r.stdout).not.toContain('System capabilities');
  });

  test('--json on a missing device: host.deviceError set, system null, no VMs or defects, exit 0', () => {
    const r = run(['probe', '--json', '--device', MISSING]);
    expect(r.status).toBe(0);
    const report = JSON.parse(r.stdout) as ProbeReport;
    expect(report.host.device).toBe(MISSING);
    expect(report.host.apiVersion).toBeNull();
    expect(report.host.deviceError).toContain('ENOENT');
    expect(report.system).toBeNull();
    expect(report.vms).toEqual([]);
    expect(report.defects).toEqual([]);
    expect(report.requirements).toEqual([]);
  });

  test('every requirement is unmet without a device: exit 3, one line each naming the device and why', () => {
    const reqs = ['GUEST_MEMFD', 'vm-type:default', 'gmem-flag:mmap', 'sw-protected:attr:private'];
    const r = run(['probe', '--device', MISSING, '--require', reqs.join(',')]);
    expect(r.status).toBe(3);
    const lines = r.stderr.trimEnd().split('\n');
    expect(lines).toHaveLength(reqs.length);
    for (const l of lines)
      expect(l).toMatch(new RegExp(`^kvm-gmem probe: requirement \\S+ not met: ${MISSING} cannot be opened: cannot open ${MISSING}: ENOENT`));
    expect(r.stdout).toContain('Requirements (--require)');
    const j = JSON.parse(run(['probe', '--json', '--device', MISSING, '--require', 'GUEST_MEMFD']).stdout) as ProbeReport;
    expect(j.requirements).toEqual([
      { given: 'GUEST_MEMFD', requirement: 'GUEST_MEMFD', met: false, answered: expect.stringContaining('ENOENT') as string, since: '6.8' },
    ]);
  });

  test('a device that is not KVM: one line with the kernel error, exit 2', () => {
    const r = run(['probe', '--device', '/dev/null']);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain('KVM_GET_API_VERSION');
    expect(r.stderr).toContain('ENOTTY');
  });

  test('EACCES is explained as a permissions problem', () => {
    const e = new KvmError(13, 'open').withRequest({ path: '/dev/kvm' });
    const line = describeOpenFailure(e, '/dev/kvm');
    expect(line).not.toContain('\n');
    expect(line).toContain('EACCES');
    expect(line).toContain("'kvm' group");
    expect(line).toContain('run as root');
  });

  test('other open errors print the KvmError message', () => {
    const e = new KvmError(21, 'open').withRequest({ path: '/tmp' });
    expect(describeOpenFailure(e, '/tmp')).toBe(e.message.split('\n')[0]);
  });

  // Root ignores file modes, so this runs only as another user.
  gate(needs.env('non-root')).test('a device without permissions: EACCES advice in the report, exit 0', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'kvm-gmem-cli-'));
    try {
      const file = path.join(dir, 'kvm');
      writeFileSync(file, '');
      chmodSync(file, 0o000);
      const r = run(['probe', '--device', file]);
      expect(r.status).toBe(0);
      expect(r.stdout).toContain('EACCES');
      expect(r.stdout).toContain("'kvm' group");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('kvm-gmem usage', () => {
  test('--help prints the usage, exit 2', () => {
    const r = run(['--help']);
    expect(r.status).toBe(2);
    expect(r.stdout).toContain('usage: kvm-gmem <command>');
    expect(r.stdout).toContain('probe');
  });

  test('no command prints the usage on stderr, exit 2', () => {
    const r = run([]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('usage: kvm-gmem <command>');
  });

  test('an unknown command is named, with the usage, exit 2', () => {
    const r = run(['frobnicate']);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("unknown command 'frobnicate'");
    expect(r.stderr).toContain('usage: kvm-gmem <command>');
  });

  test('without dist/ the shim says how to build it, exit 2', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'kvm-gmem-shim-'));
    try {
      mkdirSync(path.join(dir, 'bin'));
      writeFileSync(path.join(dir, 'package.json'), '{"type":"module"}');
      copyFileSync(bin, path.join(dir, 'bin', 'kvm-gmem.js'));
      const r = run(['probe'], path.join(dir, 'bin', 'kvm-gmem.js'));
      expect(r.status).toBe(2);
      expect(r.stderr).toContain('dist/lib/cli/main.js');
      expect(r.stderr).toContain('npm run build:ts');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('an unknown option prints the probe usage, exit 2', () => {
    const r = run(['probe', '--bogus']);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("Unknown option '--bogus'");
    expect(r.stderr).toContain('usage: kvm-gmem probe');
  });

  test('an unknown requirement is a usage error: exit 2, the valid names listed, before the device is opened', () => {
    for (const bad of [
      'NO_SUCH_CAP',
      'vm-type:bogus',
      'default:vm-type:default',
      'gmem-flag:',
      'gmem-flag:huge',
      'attr:shared',
      'cap:GUEST_MEMFD',
      'a:b:c:d',
    ]) {
      const r = run(['probe', '--device', MISSING, '--require', `GUEST_MEMFD,${bad}`]);
      expect(r.status, bad).toBe(2);
      expect(r.stdout, bad).toBe('');
      expect(r.stderr, bad).toContain(`unknown requirement '${bad}'`);
      expect(r.stderr, bad).not.toContain('ENOENT');
      for (const valid of [
        'GUEST_MEMFD_FLAGS',
        'PRE_FAULT_MEMORY',
        'vm-type:sw-protected',
        'gmem-flag:mmap',
        'gmem-flag:init-shared',
        'attr:private',
        'TYPE:CAP',
      ]) {
        expect(r.stderr, `${bad} lists ${valid}`).toContain(valid);
      }
    }
    const empty = run(['probe', '--device', MISSING, '--require', 'GUEST_MEMFD,,USER_MEMORY2']);
    expect(empty.status).toBe(2);
    expect(empty.stderr).toContain("unknown requirement '' (empty)");
  });

  test('--json and --quiet exclude each other (exit 2); --help documents --require, exit 3 and the report without a device', () => {
    const both = run(['probe', '--json', '--quiet']);
    expect(both.status).toBe(2);
    expect(both.stderr).toContain('--json and --quiet exclude each other');
    const help = run(['probe', '--help']);
    expect(help.stdout).toContain('--require REQ');
    expect(help.stdout).toContain('vm-type:TYPE');
    expect(help.stdout).toMatch(/\n3 when a requirement is not met/);
    expect(help.stdout).toContain('also\non a host whose device cannot be opened');
  });
});
