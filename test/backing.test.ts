// A memslot's userspace backing stays mapped while the memslot exists: the
// kernel keeps userspace_addr, and whatever the process maps there next
// would become guest memory (found by the fuzz campaign under ASan: a
// guest_memfd closed under its memslot, the allocator's heap mapped at the
// freed address, the allocator's headers overwritten).
import { describe, expect } from 'vitest';
import { Kvm, MappingInUseError } from '../lib/index.js';
import { gate, needs, thrown } from './helpers.js';

const both = gate(needs.gmemFlags(['mmap', 'init-shared'], 'default'));

describe('the guest_memfd mapping behind a memslot', () => {
  both.test('cannot be unmapped while a memslot uses it; closing the guest_memfd unmaps it when the last such memslot goes', () => {
    using kvm = Kvm.open();
    using vm = kvm.createVm();
    const gmem = vm.createGuestMemfd({ size: 0x4000, flags: ['mmap', 'init-shared'] });
    const map = gmem.map();
    const a = vm.addMemslot({ gpa: 0x100000, size: 0x2000, guestMemfd: gmem, guestMemfdOffset: 0, backing: { kind: 'guest-memfd' } });
    const b = vm.addMemslot({ gpa: 0x200000, size: 0x2000, guestMemfd: gmem, guestMemfdOffset: 0x2000, backing: { kind: 'guest-memfd' } });
    expect(a.userspaceAddr).toBe(map.address);
    expect(b.userspaceAddr).toBe(map.address + 0x2000n);

    const e = thrown(() => map.unmap());
    expect(e).toBeInstanceOf(MappingInUseError);
    expect((e as MappingInUseError).code).toBe('ERR_KVM_MAPPING_IN_USE');
    expect((e as MappingInUseError).memslots).toEqual(['memslot 0 (address space 0)', 'memslot 1 (address space 0)']);
    expect(map.unmapped).toBe(false);

    // The owner lets go: the memslots keep the memory mapped and usable.
    gmem.close();
    expect(map.unmapped).toBe(false);
    b.view(0x200000, 2).set([0x6b, 0x76]);
    expect([...map.bytes(0x2000, 2)]).toEqual([0x6b, 0x76]);
    a.delete();
    expect(map.unmapped).toBe(false);
    b.delete();
    expect(map.unmapped).toBe(true);
  });

  both.test('unmaps as soon as no memslot uses it, and map() after unmap() maps anew', () => {
    using kvm = Kvm.open();
    using vm = kvm.createVm();
    const gmem = vm.createGuestMemfd({ size: 0x2000, flags: ['mmap', 'init-shared'] });
    const first = gmem.map();
    const slot = vm.addMemslot({ gpa: 0, size: 0x2000, guestMemfd: gmem, backing: { kind: 'guest-memfd' } });
    slot.delete();
    first.unmap();
    expect(first.unmapped).toBe(true);
    const second = gmem.map();
    expect(second.unmapped).toBe(false);
    second.bytes(0, 1)[0] = 1;
    // Closing the VM releases every memslot, then the guest_memfd: nothing stays mapped.
    const s2 = vm.addMemslot({ gpa: 0, size: 0x2000, guestMemfd: gmem, backing: { kind: 'guest-memfd' } });
    expect(s2.userspaceAddr).toBe(second.address);
    vm.close();
    expect(second.unmapped).toBe(true);
  });
});
