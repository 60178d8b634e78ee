// Tests of the `kvm-gmem` command (bin/kvm-gmem.js -> dist/lib/cli/main.js):
// the probe report, as text and as JSON, against what the library itself
// answers; the one-line failures with advice; usage and exit statuses.
// dist/ is rebuilt with tsc first, so the command tested is the current code.
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, test } from 'vitest';
import { describeOpenFailure, type ProbeReport } from '../lib/cli/probe.js';
import { Cap, type CapName, KvmError, Kvm } from '../lib/index.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const bin = path.join(root, 'bin', 'kvm-gmem.js');

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function run(args: string[], script = bin): Run {
  const r = spawnSync(process.execPath, [script, ...args], { cwd: root, encoding: 'utf8', timeout: 60_000 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

beforeAll(() => {
  // Inside the test VM the tree is read-only: it uses the dist/ the host built.
  if (process.env.TESTVM === '1') {
    if (!existsSync(path.join(root, 'dist/lib/cli/main.js'))) throw new Error('dist/ is missing in the test VM: build it on the host first (npm run build:ts)');
    return;
  }
  const tsc = spawnSync(process.execPath, [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], { cwd: root, encoding: 'utf8' });
  if (tsc.status !== 0) throw new Error(`tsc -p tsconfig.json failed (status ${tsc.status}):\n${tsc.stdout}${tsc.stderr}`);
}, 300_000);

describe('kvm-gmem probe', () => {
  test('prints the host, the system capabilities and every VM type, and exits 0', () => {
    using kvm = Kvm.open();
    const r = run(['probe']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('Host');
    expect(r.stdout).toContain('/dev/kvm (KVM_GET_API_VERSION 12)');
    expect(r.stdout).toContain('System capabilities (KVM_CHECK_EXTENSION on /dev/kvm)');
    for (const type of kvm.capabilities().vmTypes) expect(r.stdout).toContain(`VM type '${type}'`);
    // One table row per capability, with the value the library reads.
    for (const name of Object.keys(Cap) as CapName[]) {
      const row = r.stdout.split('\n').find((l) => l.trim().startsWith(`KVM_CAP_${name} `));
      expect(row, `row for KVM_CAP_${name}`).toBeDefined();
      const value = kvm.checkExtension(name);
      expect(row).toMatch(new RegExp(`KVM_CAP_${name}\\s+(${value}|0x${value.toString(16)})\\s`));
    }
  });

  test('--json gives the same facts as the library, per VM type', () => {
    using kvm = Kvm.open();
    const r = run(['probe', '--json']);
    expect(r.status).toBe(0);
    const report = JSON.parse(r.stdout) as ProbeReport;
    expect(report.host.device).toBe('/dev/kvm');
    expect(report.host.apiVersion).toBe(kvm.apiVersion);
    expect(report.system.decoded).toEqual(kvm.capabilities());
    for (const row of report.system.capabilities) {
      expect(row.value, row.name).toBe(kvm.checkExtension(row.cap));
      expect(row.name).toBe(`KVM_CAP_${Object.entries(Cap).find(([, v]) => v === row.cap)?.[0]}`);
    }
    expect(report.vms.map((v) => v.type)).toEqual(kvm.capabilities().vmTypes);
    for (const v of report.vms) {
      expect(v.error, `VM type ${v.type}`).toBeUndefined();
      using vm = kvm.createVm({ type: v.type });
      const caps = vm.capabilities();
      expect(v.decoded).toEqual(caps);
      for (const row of v.capabilities ?? []) expect(row.value, `${v.type} ${row.name}`).toBe(vm.checkExtension(row.cap));
      expect(v.uses?.privateMemory).toBe(caps.memoryAttributes.private);
    }
  });

  test('a missing device: one line naming ENOENT and what to do, exit 2', () => {
    const r = run(['probe', '--device', '/nonexistent/kvm']);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    const lines = r.stderr.trimEnd().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain('/nonexistent/kvm');
    expect(lines[0]).toContain('ENOENT');
    expect(lines[0]).toMatch(/kvm_intel or kvm_amd/);
    expect(lines[0]).toMatch(/nested virtualization/);
  });

  test('--json on a missing device fails the same way', () => {
    const r = run(['probe', '--json', '--device', '/nonexistent/kvm']);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain('ENOENT');
  });

  test('a device that is not KVM: one line with the kernel error, exit 2', () => {
    const r = run(['probe', '--device', '/dev/null']);
    expect(r.status).toBe(2);
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

  test.skipIf(process.getuid?.() === 0)('a device without permissions: EACCES advice, exit 2 (root ignores file modes, so not as root)', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'kvm-gmem-cli-'));
    try {
      const file = path.join(dir, 'kvm');
      writeFileSync(file, '');
      chmodSync(file, 0o000);
      const r = run(['probe', '--device', file]);
      expect(r.status).toBe(2);
      expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
      expect(r.stderr).toContain('EACCES');
      expect(r.stderr).toContain("'kvm' group");
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
});
