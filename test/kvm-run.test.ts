// lib/binding/kvm-run.ts names every struct kvm_run offset the exit decoder
// reads; native/uapi.h pins the same fields with static_asserts against the
// kernel's layout. Here the TypeScript names meet the addon's offsetof
// values, so neither side can change without the other.
import { readFileSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { KvmRun, KvmRunLengths } from '../lib/binding/kvm-run.js';
import { native } from '../lib/binding/native.js';

function flatten(o: object, prefix = ''): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(o)) {
    if (typeof v === 'number') out[prefix + k] = v;
    else Object.assign(out, flatten(v as object, `${prefix}${k}.`));
  }
  return out;
}

describe('struct kvm_run offsets', () => {
  const layout = native.kvmRunLayout;

  test('every named offset equals offsetof in the compiled addon, and no name is missing on either side', () => {
    expect(flatten(KvmRun)).toEqual(layout.offsets);
  });

  test('array lengths equal the compiled ones; the exit union starts at 32 and every field lies inside it', () => {
    expect({ ...KvmRunLengths }).toEqual(layout.lengths);
    expect(layout.size).toBeGreaterThanOrEqual(32 + 256);
    for (const [name, off] of Object.entries(flatten(KvmRun))) {
      if (name.includes('.')) expect(off, name).toBeGreaterThanOrEqual(32);
      expect(off, name).toBeLessThan(32 + 256);
    }
  });

  test('the decoder reads kvm_run only through the names (no numeric offsets in lib/kvm/vcpu-exit.ts)', () => {
    const src = readFileSync(new URL('../lib/kvm/vcpu-exit.ts', import.meta.url), 'utf8');
    expect(src.match(/\b(?:get|set)(?:Big)?(?:Ui|I)nt(?:8|16|32|64)\(\s*\d/g)).toBeNull();
    expect(src.match(/byteOffset \+ \d/g)).toBeNull();
  });
});
