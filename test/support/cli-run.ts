// Runs the `kvm-gmem` command as a user would (node bin/kvm-gmem.js ARGS),
// for the CLI tests; buildCli() makes sure dist/ holds the current code.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureDist } from '../helpers.js';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const bin = path.join(root, 'bin', 'kvm-gmem.js');

export interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function run(args: string[], script = bin): Run {
  const r = spawnSync(process.execPath, [script, ...args], { cwd: root, encoding: 'utf8', timeout: 60_000 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** dist/ from the current sources (in the test VM the tree is read-only: the host built it). */
export function buildCli(): void {
  if (process.env.TESTVM === '1') {
    if (!existsSync(path.join(root, 'dist/lib/cli/main.js'))) throw new Error('dist/ is missing in the test VM: build it on the host first (npm run build:ts)');
    return;
  }
  ensureDist();
}
