/* The guest's page table (machine/vmem.py): one byte of protection per 4 KiB guest page, read
 * by the engine's TLB fill (Unicorn's virtual-TLB mode). Guest mappings live in a few large
 * engine regions; which of their pages exist, and with what protection, is said here, so that
 * mapping, unmapping and protecting cost what they change, not what the engine holds.
 *
 * Three levels like a real MMU's: a top slot per GiB, a middle slot per 2 MiB, a byte per page.
 * A top or middle slot holds either the next level or one value for its whole range, so a huge
 * PROT_NONE reservation costs one slot per GiB. A refused access is recorded (the engine only
 * says "exception") so that the caller can deliver SIGSEGV with the address and access kind. */
#include "runtime.h"

#define L1_SHIFT 30
#define L2_SHIFT 21
#define NSLOT 512
#define PRESENT 8

typedef uintptr_t slot_t;        /* a pointer to the next level, or (value << 1) | 1 (0 = value 0) */
typedef struct { uint64_t paddr; int perms; } tlb_entry;
typedef _Bool (*tlb_fill_fn)(void *uc, uint64_t vaddr, int type, void *entry, void *ud);

struct emsan_vm {
    int arm64;
    uint64_t task_size;
    slot_t *top;
    tlb_fill_fn inner;           /* a sanitizer's own TLB fill (choosing physical pages), or NULL */
    void *inner_ud;
    uint64_t fault_addr;
    int fault_type, fault_state; /* 0: none, 1: not mapped, 2: mapped without the permission */
    uint64_t tables;             /* middle and leaf tables allocated (for stats and tests) */
};

static inline int is_value(slot_t s) { return !s || (s & 1); }
static inline int value_of(slot_t s) { return (int)(s >> 1); }
static inline slot_t make_value(int v) { return v ? ((slot_t)v << 1) | 1 : 0; }

EXPORT emsan_vm *emsan_vm_new(int arm64, uint64_t task_size)
{
    emsan_vm *vm = calloc(1, sizeof *vm);
    if (!vm) return NULL;
    vm->arm64 = arm64;
    vm->task_size = task_size;
    vm->top = calloc((task_size + (1ULL << L1_SHIFT) - 1) >> L1_SHIFT, sizeof *vm->top);
    if (!vm->top) { free(vm); return NULL; }
    return vm;
}

static void free_mid(emsan_vm *vm, slot_t s)
{
    if (is_value(s)) return;
    slot_t *mid = (slot_t *)s;
    for (int i = 0; i < NSLOT; i++)
        if (!is_value(mid[i])) { free((void *)mid[i]); vm->tables--; }
    free(mid);
    vm->tables--;
}

EXPORT void emsan_vm_free(emsan_vm *vm)
{
    uint64_t n = (vm->task_size + (1ULL << L1_SHIFT) - 1) >> L1_SHIFT;
    for (uint64_t i = 0; i < n; i++) free_mid(vm, vm->top[i]);
    free(vm->top);
    free(vm);
}

static inline int pt_get(const emsan_vm *vm, uint64_t va)
{
    slot_t t = vm->top[va >> L1_SHIFT];
    if (is_value(t)) return value_of(t);
    slot_t m = ((slot_t *)t)[(va >> L2_SHIFT) & (NSLOT - 1)];
    if (is_value(m)) return value_of(m);
    return ((uint8_t *)m)[(va >> PAGE_SHIFT) & (NSLOT - 1)];
}

EXPORT int emsan_vm_get(emsan_vm *vm, uint64_t va)
{
    return va < vm->task_size ? pt_get(vm, va) : 0;
}

/* [lo, hi) of one 2 MiB slot. */
static int set_leaf(emsan_vm *vm, slot_t *slot, uint64_t lo, uint64_t hi, int v)
{
    uint64_t base = lo & ~((1ULL << L2_SHIFT) - 1);
    if (lo == base && hi == base + (1ULL << L2_SHIFT)) {
        if (!is_value(*slot)) { free((void *)*slot); vm->tables--; }
        *slot = make_value(v);
        return 0;
    }
    if (is_value(*slot)) {
        uint8_t *leaf = malloc(NSLOT);
        if (!leaf) return -1;
        memset(leaf, value_of(*slot), NSLOT);
        *slot = (slot_t)leaf;
        vm->tables++;
    }
    memset((uint8_t *)*slot + ((lo - base) >> PAGE_SHIFT), v, (hi - lo) >> PAGE_SHIFT);
    return 0;
}

/* [lo, hi) of one 1 GiB slot. */
static int set_mid(emsan_vm *vm, slot_t *slot, uint64_t lo, uint64_t hi, int v)
{
    uint64_t base = lo & ~((1ULL << L1_SHIFT) - 1);
    if (lo == base && hi == base + (1ULL << L1_SHIFT)) {
        free_mid(vm, *slot);
        *slot = make_value(v);
        return 0;
    }
    if (is_value(*slot)) {
        slot_t *mid = malloc(NSLOT * sizeof *mid);
        if (!mid) return -1;
        for (int i = 0; i < NSLOT; i++) mid[i] = *slot;
        *slot = (slot_t)mid;
        vm->tables++;
    }
    slot_t *mid = (slot_t *)*slot;
    while (lo < hi) {
        uint64_t end = (lo | ((1ULL << L2_SHIFT) - 1)) + 1;
        if (end > hi) end = hi;
        if (set_leaf(vm, &mid[(lo >> L2_SHIFT) & (NSLOT - 1)], lo, end, v)) return -1;
        lo = end;
    }
    return 0;
}

/* Pages [lo, hi) get protection `v` (UC_PROT_* bits | PRESENT; 0: not mapped). 0, or -1 when
 * emsan is out of host memory (the table is then as far as it got). */
EXPORT int emsan_vm_set(emsan_vm *vm, uint64_t lo, uint64_t hi, int v)
{
    if (lo >= hi || hi > vm->task_size || (lo | hi) & (PAGE_SIZE - 1)) return -1;
    while (lo < hi) {
        uint64_t end = (lo | ((1ULL << L1_SHIFT) - 1)) + 1;
        if (end > hi) end = hi;
        if (set_mid(vm, &vm->top[lo >> L1_SHIFT], lo, end, v)) return -1;
        lo = end;
    }
    return 0;
}

EXPORT uint64_t emsan_vm_tables(emsan_vm *vm) { return vm->tables; }

EXPORT void emsan_vm_set_inner(emsan_vm *vm, void *fill, void *ud)
{
    vm->inner = (tlb_fill_fn)fill;
    vm->inner_ud = ud;
}

/* The last access the page table refused since emsan_vm_clear_fault: 0 if none, else 1 (no
 * mapping) or 2 (a mapping without the permission), with its address and UC_MEM_* type. */
EXPORT int emsan_vm_fault(emsan_vm *vm, uint64_t *addr, int *type)
{
    *addr = vm->fault_addr;
    *type = vm->fault_type;
    return vm->fault_state;
}

EXPORT void emsan_vm_clear_fault(emsan_vm *vm) { vm->fault_state = 0; }

#define MEM_WRITE 17
#define MEM_FETCH 18

/* UC_HOOK_TLB_FILL: identity for guest pages the table allows (or what the sanitizer's own fill
 * chooses, with no more permission than the table gives), a refusal otherwise. Addresses at and
 * above task_size are no guest's: the sanitizer's fill decides (compiler-assisted mode maps its
 * shadow there), else they map 1:1 to physical addresses where nothing is, which the engine
 * faults on by itself. (They must not be refused here: the engine looks up its stop address,
 * emu_start's `until`, there after every run, and a refusal would end that run in an error.) */
EXPORT _Bool emsan_vm_tlb_cb(void *uc, uint64_t vaddr, int type, void *entry, void *ud)
{
    emsan_vm *vm = ud;
    tlb_entry *e = entry;
    uint64_t va = vm->arm64 ? vaddr & UNTAG_MASK : vaddr;
    int need = type == MEM_WRITE ? 2 : type == MEM_FETCH ? 4 : 1;
    int v = va < vm->task_size ? pt_get(vm, va) : 7 | PRESENT;
    if (UNLIKELY(!(v & need))) {
        vm->fault_addr = va;
        vm->fault_type = type;
        vm->fault_state = v & PRESENT ? 2 : 1;
        e->paddr = va;
        e->perms = 0;                     /* the engine raises its exception */
        return 1;
    }
    if (vm->inner) {
        if (!vm->inner(uc, vaddr, type, entry, vm->inner_ud)) return 0;
        e->perms &= v & 7;
    } else {
        e->paddr = va;                    /* the engine keeps the offset of its smaller pages (arm64) */
        e->perms = v & 7;
    }
    return 1;
}

/* UC_HOOK_BLOCK: stop at the start of a block once the waker (machine/engine.py) asked for it.
 * The engine itself must not be stopped asynchronously when the guest is to resume: Unicorn
 * 2.1.3 checks for a stop after every memory access and then reports the block's first PC
 * although the instructions before the access have run (they would run twice). At a block's
 * start the PC is exact. tick[0]: asked, tick[1]: done. */
EXPORT void emsan_tick_cb(void *uc, uint64_t address, uint32_t size, void *ud)
{
    (void)address; (void)size;
    volatile int *tick = ud;
    if (UNLIKELY(tick[0])) {
        tick[0] = 0;
        tick[1] = 1;
        emu_stop(uc);
    }
}
