// Memory attributes (KVM_SET_MEMORY_ATTRIBUTES) and conversions between
// shared and private. A default VM has no attributes to set: that part runs
// everywhere. The rest needs a VM whose KVM_CAP_MEMORY_ATTRIBUTES includes
// PRIVATE ('sw-protected' on a kernel built with KVM_SW_PROTECTED_VM, as in
// the test VM); there, guest_memfds are created without flags and memslots
// use the default 'anonymous' backing.
import { expect, test, vi } from 'vitest';
import { AlignmentError, AttributeRuleError, MemoryAttribute, MissingCapabilityError, raw, RangeWrapError, type Vm } from '../lib/index.js';
import { expectKernel, expectKernelAgrees, expectRule, gate, needs, openKvm, tables } from './helpers.js';

const PRIVATE = MemoryAttribute.PRIVATE;
const ioctl = needs.memoryAttributes('any', 'kvm');
const noIoctl = needs.not(ioctl, 'no KVM_SET_MEMORY_ATTRIBUTES: KVM_CAP_MEMORY_ATTRIBUTES = 0 on /dev/kvm');
const defaultVmNoAttributes = needs.not(needs.memoryAttributes('any', 'default'), "KVM_CAP_MEMORY_ATTRIBUTES = 0 on a 'default' VM");
const swPrivate = gate(needs.memoryAttributes('private', 'sw-protected'));

function expectMissingAttributes(fn: () => unknown): MissingCapabilityError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(MissingCapabilityError);
  const m = err as MissingCapabilityError;
  expect(m.capability).toBe('KVM_CAP_MEMORY_ATTRIBUTES');
  expect(m.since).toBe('6.8');
  expect(m.message).toContain('KVM_CAP_MEMORY_ATTRIBUTES');
  expect(m.message).toContain('6.8');
  return m;
}

gate(defaultVmNoAttributes).describe('a default VM: no memory attributes', () => {
  gate(noIoctl).test(
    'no KVM_SET_MEMORY_ATTRIBUTES: setMemoryAttributes() and convert() throw MissingCapabilityError naming KVM_CAP_MEMORY_ATTRIBUTES and 6.8',
    () => {
      using kvm = openKvm();
      using vm = kvm.createVm();
      const m = vm.addMemslot({ gpa: 0x100000, size: 0x4000 });
      m.view()[0] = 0x5a;
      const before = tables(vm);
      expect(expectMissingAttributes(() => vm.setMemoryAttributes({ gpa: 0x100000, size: 0x1000 }, PRIVATE)).message).toContain('KVM_SET_MEMORY_ATTRIBUTES');
      expectMissingAttributes(() => vm.setMemoryAttributes({ gpa: 0x100000, size: 0x1000 }, 0));
      expectMissingAttributes(() => vm.convert({ gpa: 0x100000, size: 0x1000 }, 'private', { discard: true }));
      expectMissingAttributes(() => vm.convert({ gpa: 0x100000, size: 0x1000 }, 'shared', { discard: true }));
      // Nothing changed, nothing was discarded.
      expect(tables(vm)).toEqual(before);
      expect(m.view()[0]).toBe(0x5a);
      expect(vm.privateRanges()).toEqual([]);
      expect(vm.attributeRanges()).toEqual([]);
      expect(vm.isPrivate(0x100000)).toBe(false);
      expect(vm.attributes(0x100000)).toBe(0);
    },
  );

  gate(ioctl).test(
    'the ioctl exists but this VM takes no attribute: PRIVATE is memory-attributes-unsupported (EINVAL, as the kernel says), attributes 0 are accepted as the kernel accepts them',
    () => {
      using kvm = openKvm();
      using vm = kvm.createVm();
      const m = vm.addMemslot({ gpa: 0x100000, size: 0x4000 });
      m.view()[0] = 0x5a;
      const before = tables(vm);
      const err = expectRule(() => vm.setMemoryAttributes({ gpa: 0x100000, size: 0x1000 }, PRIVATE), AttributeRuleError, 'memory-attributes-unsupported');
      expect(err.message).toContain('KVM_CAP_MEMORY_ATTRIBUTES = 0x0');
      expectKernelAgrees(err, () => raw.setMemoryAttributes(vm, { address: 0x100000, size: 0x1000, attributes: PRIVATE }));
      expectRule(() => vm.convert({ gpa: 0x100000, size: 0x1000 }, 'private', { discard: true }), AttributeRuleError, 'memory-attributes-unsupported');
      expect(tables(vm)).toEqual(before);
      expect(m.view()[0]).toBe(0x5a);
      // Attributes 0 on a default VM: the kernel takes them (every gfn is shared already).
      vm.setMemoryAttributes({ gpa: 0x100000, size: 0x1000 }, 0);
      raw.setMemoryAttributes(vm, { address: 0x100000, size: 0x1000, attributes: 0 });
      expect(tables(vm)).toEqual(before);
      expect(vm.privateRanges()).toEqual([]);
    },
  );

  gate(noIoctl).test('raw, the kernel answers ENOTTY', () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    const k = expectKernel(() => raw.setMemoryAttributes(vm, { address: 0x100000, size: 0x1000, attributes: PRIVATE }), 'ENOTTY');
    expect(k.syscall).toBe('ioctl(KVM_SET_MEMORY_ATTRIBUTES)');
    expect(k.request).toEqual({ address: 0x100000, size: 0x1000, attributes: PRIVATE, flags: 0 });
  });

  gate(ioctl).test('raw, the kernel answers EINVAL: PRIVATE is not offered to a default VM', () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    expectKernel(() => raw.setMemoryAttributes(vm, { address: 0x100000, size: 0x1000, attributes: PRIVATE }), 'EINVAL');
  });
});

function swVm(): { vm: Vm; [Symbol.dispose](): void } {
  const kvm = openKvm();
  const vm = kvm.createVm({ type: 'sw-protected' });
  return {
    vm,
    [Symbol.dispose]: () => {
      vm.close();
      kvm.close();
    },
  };
}

swPrivate.describe("setMemoryAttributes on a 'sw-protected' VM", () => {
  test('PRIVATE on ranges: attributes(), isPrivate() and privateRanges() follow through merge, split and overwrite', () => {
    using h = swVm();
    const { vm } = h;
    vm.setMemoryAttributes({ gpa: 0x10000, size: 0x4000 }, PRIVATE);
    expect(vm.privateRanges()).toEqual([{ gpa: 0x10000, size: 0x4000 }]);
    expect(vm.attributeRanges()).toEqual([{ gfn: 0x10, npages: 4, attributes: PRIVATE }]);
    expect([vm.isPrivate(0xffff), vm.isPrivate(0x10000), vm.isPrivate(0x13fff), vm.isPrivate(0x14000)]).toEqual([false, true, true, false]);
    expect(vm.attributes(0x12345)).toBe(PRIVATE);
    expect(vm.attributes(0x14000)).toBe(0);
    // Merge with the right and the left neighbour.
    vm.setMemoryAttributes({ gpa: 0x14000, size: 0x2000 }, PRIVATE);
    vm.setMemoryAttributes({ gpa: 0xe000, size: 0x2000 }, PRIVATE);
    expect(vm.privateRanges()).toEqual([{ gpa: 0xe000, size: 0x8000 }]);
    // Split: a shared page in the middle.
    vm.setMemoryAttributes({ gpa: 0x11000, size: 0x1000 }, 0);
    expect(vm.privateRanges()).toEqual([
      { gpa: 0xe000, size: 0x3000 },
      { gpa: 0x12000, size: 0x4000 },
    ]);
    expect(vm.isPrivate(0x11000)).toBe(false);
    // A second, separate range.
    vm.setMemoryAttributes({ gpa: 0x40000, size: 0x1000 }, PRIVATE);
    expect(vm.privateRanges()).toHaveLength(3);
    // Overwrite everything, then clear everything.
    vm.setMemoryAttributes({ gpa: 0, size: 0x100000 }, PRIVATE);
    expect(vm.privateRanges()).toEqual([{ gpa: 0, size: 0x100000 }]);
    vm.setMemoryAttributes({ gpa: 0, size: 0x100000 }, 0);
    expect(vm.privateRanges()).toEqual([]);
    expect(vm.attributeRanges()).toEqual([]);
  });

  test.each([
    ['bit 0', 1],
    ['PRIVATE | bit 0', PRIVATE | 1],
    ['bit 31', 2 ** 31],
  ])('unsupported attribute bits (%s) are memory-attributes-unsupported; raw, EINVAL; the shadow map is unchanged', (_name, attributes) => {
    using h = swVm();
    const { vm } = h;
    vm.setMemoryAttributes({ gpa: 0x10000, size: 0x2000 }, PRIVATE);
    const before = vm.attributeRanges();
    const err = expectRule(() => vm.setMemoryAttributes({ gpa: 0x10000, size: 0x1000 }, attributes), AttributeRuleError, 'memory-attributes-unsupported');
    expect(err.message).toContain(`0x${((attributes & ~PRIVATE) >>> 0).toString(16)}`);
    expect(err.message).toContain('KVM_CAP_MEMORY_ATTRIBUTES');
    expect(vm.attributeRanges()).toEqual(before);
    expectKernelAgrees(err, () => raw.setMemoryAttributes(vm, { address: 0x10000, size: 0x1000, attributes }));
    expect(vm.attributeRanges()).toEqual(before);
  });

  const badRanges: [
    string,
    number | bigint,
    number | bigint,
    typeof AttributeRuleError | typeof AlignmentError | typeof RangeWrapError,
    string,
    string | undefined,
  ][] = [
    ['size 0', 0x10000, 0, AttributeRuleError, 'attribute-range-empty', undefined],
    ['an unaligned gpa', 0x10800, 0x1000, AlignmentError, 'page-alignment', 'address'],
    ['an unaligned size', 0x10000, 0x1800, AlignmentError, 'page-alignment', 'size'],
    ['gpa + size past 2^64', 2n ** 64n - 0x1000n, 0x2000, RangeWrapError, 'range-wraps', 'gpa'],
    ['gpa + size exactly 2^64', 2n ** 64n - 0x1000n, 0x1000, RangeWrapError, 'range-wraps', 'gpa'],
  ];
  test.each(badRanges)('%s is refused before the kernel; raw, EINVAL; the shadow map is unchanged', (_name, gpa, size, cls, rule, field) => {
    using h = swVm();
    const { vm } = h;
    vm.setMemoryAttributes({ gpa: 0x10000, size: 0x2000 }, PRIVATE);
    const before = vm.attributeRanges();
    const err = expectRule(() => vm.setMemoryAttributes({ gpa, size }, PRIVATE), cls, rule);
    if (field !== undefined) expect((err as AlignmentError | RangeWrapError).field).toBe(field);
    expect(vm.attributeRanges()).toEqual(before);
    expectKernelAgrees(err, () => raw.setMemoryAttributes(vm, { address: gpa, size, attributes: PRIVATE }));
    expect(vm.attributeRanges()).toEqual(before);
  });

  test('raw: flags other than 0 are EINVAL (the typed API never sends them)', () => {
    using h = swVm();
    expectKernel(() => raw.setMemoryAttributes(h.vm, { address: 0x10000, size: 0x1000, attributes: PRIVATE, flags: 1 }), 'EINVAL');
    raw.setMemoryAttributes(h.vm, { address: 0x10000, size: 0x1000, attributes: PRIVATE, flags: 0 });
  });
});

swPrivate.describe("convert() on a 'sw-protected' VM", () => {
  test('without discard: only the attributes change; the record says so', () => {
    using h = swVm();
    const { vm } = h;
    const g = vm.createGuestMemfd({ size: 0x10000 });
    const m = vm.addMemslot({ gpa: 0x100000, size: 0x8000, guestMemfd: g });
    expect(m.backing).toBe('anonymous');
    m.view()[0x1000] = 0x5a;
    const punch = vi.spyOn(g, 'punchHole');
    expect(vm.convert({ gpa: 0x101000, size: 0x1000 }, 'private')).toEqual({ gpa: 0x101000, size: 0x1000, to: 'private', attributes: PRIVATE, discarded: [] });
    expect(vm.isPrivate(0x101000)).toBe(true);
    expect(m.view()[0x1000]).toBe(0x5a);
    expect(vm.convert({ gpa: 0x101000, size: 0x1000 }, 'shared')).toEqual({ gpa: 0x101000, size: 0x1000, to: 'shared', attributes: 0, discarded: [] });
    expect(vm.isPrivate(0x101000)).toBe(false);
    expect(m.view()[0x1000]).toBe(0x5a);
    expect(punch).not.toHaveBeenCalled();
  });

  test('to private with discard: the shared copy of the range reads zero, its neighbours keep their data', () => {
    using h = swVm();
    const { vm } = h;
    const g = vm.createGuestMemfd({ size: 0x10000 });
    const m = vm.addMemslot({ gpa: 0x100000, size: 0x8000, guestMemfd: g });
    const v = m.view();
    v.fill(0x5a);
    const rec = vm.convert({ gpa: 0x101000, size: 0x2000 }, 'private', { discard: true });
    expect(rec).toEqual({
      gpa: 0x101000,
      size: 0x2000,
      to: 'private',
      attributes: PRIVATE,
      discarded: [{ slot: m.slot, addressSpace: 0, what: 'shared-backing', gpa: 0x101000, size: 0x2000 }],
    });
    expect(v.subarray(0x1000, 0x3000).every((b) => b === 0)).toBe(true);
    expect(v[0x0fff]).toBe(0x5a);
    expect(v[0x3000]).toBe(0x5a);
    expect(vm.privateRanges()).toEqual([{ gpa: 0x101000, size: 0x2000 }]);
  });

  test('to shared with discard: the guest_memfd range of the memslot is punched', () => {
    using h = swVm();
    const { vm } = h;
    const g = vm.createGuestMemfd({ size: 0x10000 });
    const m = vm.addMemslot({ gpa: 0x100000, size: 0x8000, guestMemfd: g, guestMemfdOffset: 0x8000 });
    g.allocate(0x8000, 0x8000);
    vm.convert({ gpa: 0x100000, size: 0x8000 }, 'private');
    const punch = vi.spyOn(g, 'punchHole');
    const rec = vm.convert({ gpa: 0x102000, size: 0x3000 }, 'shared', { discard: true });
    expect(rec.discarded).toEqual([{ slot: m.slot, addressSpace: 0, what: 'guest_memfd', gpa: 0x102000, size: 0x3000 }]);
    expect(punch).toHaveBeenCalledTimes(1);
    expect(punch).toHaveBeenCalledWith(0x8000 + 0x2000, 0x3000);
    expect(vm.privateRanges()).toEqual([
      { gpa: 0x100000, size: 0x2000 },
      { gpa: 0x105000, size: 0x3000 },
    ]);
    // guest_memfd does not count pages in st_blocks, so fstat cannot show the punch.
    expect(g.stat().size).toBe(0x10000);
  });

  test('a range across two memslots and a hole: one step per memslot, clipped, with the reason when nothing was dropped', () => {
    using h = swVm();
    const { vm } = h;
    const g = vm.createGuestMemfd({ size: 0x10000 });
    const a = vm.addMemslot({ gpa: 0x200000, size: 0x4000, guestMemfd: g, guestMemfdOffset: 0x8000 });
    const b = vm.addMemslot({ gpa: 0x208000, size: 0x4000, backing: { kind: 'none' } });
    a.view().fill(1);
    const toPrivate = vm.convert({ gpa: 0x202000, size: 0x8000 }, 'private', { discard: true });
    expect(toPrivate.discarded).toEqual([
      { slot: a.slot, addressSpace: 0, what: 'shared-backing', gpa: 0x202000, size: 0x2000 },
      { slot: b.slot, addressSpace: 0, what: 'shared-backing', gpa: 0x208000, size: 0x2000, skipped: 'memslot has no shared backing' },
    ]);
    expect(a.view()[0x1fff]).toBe(1);
    expect(a.view()[0x2000]).toBe(0);
    expect(vm.privateRanges()).toEqual([{ gpa: 0x202000, size: 0x8000 }]);
    const toShared = vm.convert({ gpa: 0x202000, size: 0x8000 }, 'shared', { discard: true });
    expect(toShared.discarded).toEqual([
      { slot: a.slot, addressSpace: 0, what: 'guest_memfd', gpa: 0x202000, size: 0x2000 },
      { slot: b.slot, addressSpace: 0, what: 'guest_memfd', gpa: 0x208000, size: 0x2000, skipped: 'memslot has no guest_memfd' },
    ]);
    expect(vm.privateRanges()).toEqual([]);
  });

  test('a refused range discards nothing and changes nothing', () => {
    using h = swVm();
    const { vm } = h;
    const g = vm.createGuestMemfd({ size: 0x10000 });
    const m = vm.addMemslot({ gpa: 0x100000, size: 0x4000, guestMemfd: g });
    m.view().fill(7);
    const before = tables(vm, [g]);
    expectRule(() => vm.convert({ gpa: 0x100000, size: 0 }, 'private', { discard: true }), AttributeRuleError, 'attribute-range-empty');
    expectRule(() => vm.convert({ gpa: 0x100800, size: 0x1000 }, 'private', { discard: true }), AlignmentError, 'page-alignment');
    expect(tables(vm, [g])).toEqual(before);
    expect(m.view().every((b) => b === 7)).toBe(true);
    expect(() => vm.convert({ gpa: 0x100000, size: 0x1000 }, 'secret' as 'private')).toThrow(TypeError);
  });
});
