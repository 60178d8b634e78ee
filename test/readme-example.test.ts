// The README's example must run: this file takes the ```ts block out of
// README.md, points its `from 'kvm-gmem'` at lib/, writes it to a temporary
// file and imports it, so the example cannot drift from the API.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, test, vi } from 'vitest';
import { Kvm } from '../lib/index.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const readme = readFileSync(path.join(root, 'README.md'), 'utf8');
const blocks = [...readme.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((m) => m[1] ?? '');

// The example needs a VM type whose fd accepts guest_memfd memslots.
function guestMemfdVmType(): string | undefined {
  using kvm = Kvm.open();
  for (const type of kvm.capabilities().vmTypes) {
    using vm = kvm.createVm({ type });
    if (vm.capabilities().guestMemfd) return type;
  }
  return undefined;
}
const gmemType = guestMemfdVmType();

describe('README example', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  test('README.md has exactly one ```ts block, importing from kvm-gmem', () => {
    expect(blocks).toHaveLength(1);
    expect(blocks[0]).toContain("from 'kvm-gmem'");
  });

  test.skipIf(gmemType === undefined)('runs (needs a VM type with KVM_CAP_GUEST_MEMFD on its fd)', async () => {
    // An absolute path: vitest transforms the TypeScript sources it points at.
    const lib = path.join(root, 'lib', 'index.js');
    const source = (blocks[0] ?? '').replaceAll("from 'kvm-gmem'", `from '${lib}'`);
    const dir = mkdtempSync(path.join(tmpdir(), 'kvm-gmem-readme-'));
    const logged: unknown[][] = [];
    vi.spyOn(console, 'log').mockImplementation((...args: unknown[]) => void logged.push(args));
    try {
      const file = path.join(dir, 'readme-example.ts');
      writeFileSync(file, source);
      await import(file);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    // It wrote through the memslot's shared view and read it back, and saw
    // the guest_memfd binding.
    expect(logged[0]?.[0]).toBe('hello');
    expect(logged[0]?.[1]).toEqual([{ slot: 0, addressSpace: 0, offset: 0, size: 0x200000, gpa: 0x100000 }]);
    expect(logged).toHaveLength(2);
  });
});
