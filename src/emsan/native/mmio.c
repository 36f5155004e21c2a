/* Access checks without a global memory hook (--checks mmio). Unicorn sends every load and
 * store through its slow path as soon as one memory hook exists; here only emsan's heap pays.
 * The heap lives in host memory emsan owns, mapped at its guest address, and a second view of
 * it is an MMIO region whose callbacks check the shadow and then do the access. Unicorn's
 * virtual TLB picks the view per page: pages whose shadow is all zero (nothing to check) map
 * straight to memory, the others to the checking view.
 *
 * An MMIO callback does not know the exact PC (Unicorn syncs it only at block exits): a bad
 * access carries the registers and candidate PCs from QEMU, and the report finds the
 * instruction among them by decoding. */
#include <execinfo.h>
#include <sys/mman.h>
#include "internal.h"

typedef struct { uint64_t paddr; int perms; } tlb_entry;

#define MEM_WRITE 17

/* Returns the host memory behind the heap (the caller maps it at the heap's address). */
EXPORT void *emsan_mmio_init(emsan_heap *h, uint64_t view_pa, int nregs, const int *regs)
{
    void *host = mmap(NULL, h->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (host == MAP_FAILED) return NULL;
    struct mmio_state *m = calloc(1, sizeof *m);
    m->host = host;
    m->view = view_pa;
    m->direct = calloc(h->npages / 8 + 1, 1);
    m->nregs = nregs > EMSAN_MAX_REGS ? EMSAN_MAX_REGS : nregs;
    memcpy(m->reg_ids, regs, (size_t)m->nregs * sizeof *regs);
    h->mm = m;
    return host;
}

void mmio_destroy(heap_t *h)
{
    if (!h->mm) return;
    free(h->mm->direct);
    munmap(h->mm->host, h->size);
    free(h->mm);
    h->mm = NULL;
}

/* Is the shadow of heap page `page` all zero? */
static int page_clean(heap_t *h, uint64_t page)
{
    uint64_t addr = h->base + (page << PAGE_SHIFT);
    uint32_t pg = shadow_resolve(h, addr >> SHADOW_CHUNK_SHIFT);
    if (pg == SHADOW_ZERO) return 1;
    if (pg < SHADOW_FIRST_REAL) return 0;
    const uint64_t *s = (const uint64_t *)(shadow_page(h, pg) + ((addr & (SHADOW_CHUNK - 1)) >> 3));
    for (unsigned i = 0; i < (PAGE_SIZE >> 3) / 8; i++)
        if (s[i]) return 0;
    return 1;
}

EXPORT _Bool emsan_mmio_tlb_cb(void *uc, uint64_t vaddr, int type, void *entry, void *ud)
{
    (void)uc; (void)type;
    heap_t *h = ud;
    struct mmio_state *m = h->mm;
    tlb_entry *e = entry;
    uint64_t va = h->arm64 ? vaddr & UNTAG_MASK : vaddr;
    uint64_t off = va - h->base;
    e->perms = 7;
    if (off >= h->size) {
        e->paddr = va - m->view < h->size ? EMSAN_SHADOW_OFFSET - PAGE_SIZE : va;   /* the view is no guest memory */
        return 1;
    }
    uint64_t page = off >> PAGE_SHIFT;
    if (page_clean(h, page)) {
        m->direct[page >> 3] |= (uint8_t)(1 << (page & 7));
        e->paddr = va;
    } else {
        e->paddr = m->view + off;
    }
    return 1;
}

/* Shadow of [addr, addr+len) becomes poisoned: a page the TLB maps straight to memory must be
 * looked at again before the guest runs (shadow_sync flushes). */
void mmio_poisoned(heap_t *h, uint64_t addr, uint64_t len)
{
    struct mmio_state *m = h->mm;
    uint64_t first = (addr - h->base) >> PAGE_SHIFT, last = (addr + len - 1 - h->base) >> PAGE_SHIFT;
    for (uint64_t p = first; p <= last && p < h->npages; p++) {
        if (m->direct[p >> 3] & (1 << (p & 7))) {
            h->sm.must_flush = 1;
            memset(m->direct, 0, h->npages / 8 + 1);        /* the flush forgets every mapping */
            return;
        }
    }
}

/* Unicorn syncs the PC only at block exits. QEMU's cpu_restore_state() recovers it from the
 * host return address into the translated code, which is the outermost frame the unwinder
 * reaches from here (translated code has no unwind tables). */
typedef void *(*get_cpu_fn)(void *uc, int index);
typedef _Bool (*restore_fn)(void *cpu, uintptr_t host_pc, _Bool will_exit);

EXPORT void emsan_mmio_set_pc_recovery(emsan_heap *h, void *get_cpu, void *restore)
{
    h->mm->get_cpu = get_cpu;
    h->mm->restore = restore;
}

/* Where the access is, near enough: QEMU's cpu_restore_state() maps a host address in the
 * translated code to a guest PC. The unwinder's outermost frame is the helper's return
 * address: either in the block's code, right after the access (the PC is then that of the
 * access or the one before), or in the block's out-of-line slow path, which ends by jumping
 * back to the block's code (an x86-64 host's first `jmp rel32` after the return address).
 * Each gives a candidate; the report keeps the one whose instruction covers the address. */
static int restore_at(heap_t *h, void *cpu, uintptr_t host_pc, uint64_t *pc)
{
    struct mmio_state *m = h->mm;
    if (!((restore_fn)m->restore)(cpu, host_pc, 0)) return 0;
    *pc = reg_get(h->uc, h->regs[EMSAN_REG_PC]);
    return 1;
}

static int pc_candidates(heap_t *h, uint64_t *out, int max)
{
    struct mmio_state *m = h->mm;
    if (!m->get_cpu || !m->restore) return 0;
    void *cpu = ((get_cpu_fn)m->get_cpu)(h->uc, 0);
    if (!cpu) cpu = ((get_cpu_fn)m->get_cpu)(h->uc, -1);
    if (!cpu) return 0;
    void *frames[48];
    int n = backtrace(frames, 48), k = 0;
    if (n < 1) return 0;
    uintptr_t ret = (uintptr_t)frames[n - 1];
    if (restore_at(h, cpu, ret, &out[k])) k++;
#if defined(__x86_64__)
    const uint8_t *code = (const uint8_t *)ret;
    for (int i = 0; i < 48 && k < max; i++) {
        if (code[i] != 0xE9) continue;
        int32_t rel;
        memcpy(&rel, code + i + 1, 4);
        uintptr_t back = ret + (uintptr_t)i + 5 + (uintptr_t)(intptr_t)rel;
        if (back < ret && ret - back < 0x10000 && restore_at(h, cpu, back, &out[k])) {
            k++;
            break;
        }
    }
#endif
    return k;
}

static void bad_access(heap_t *h, uint64_t addr, unsigned size, int is_write)
{
    struct mmio_state *m = h->mm;
    uint64_t cand[4];
    int ncand = pc_candidates(h, cand, 4);
    /* Without a candidate, the PC Unicorn last synced (a block of this function or before it). */
    uint64_t pc = ncand ? cand[0] : reg_get(h->uc, h->regs[EMSAN_REG_PC]);
    /* Vector loads of optimized string code arrive as 4- or 8-byte pieces (see shadow.c). */
    if (!is_write && size >= 4 && shadow_tolerated(h, pc, addr, size))
        return;
    /* Registers are synced before every memory access: they locate the instruction. Kept for
     * the first error until the report has taken them. */
    if (!m->err_pending) {
        m->err_block = pc;
        m->err_ncand = ncand;
        memcpy(m->err_cand, cand, sizeof cand);
        for (int i = 0; i < m->nregs; i++) m->err_regs[i] = reg_get(h->uc, m->reg_ids[i]);
        m->err_pending = 1;
    }
    report_error(h, EMSAN_ERR_ACCESS, addr, size, is_write, pc, stack_here(h, pc, 0), 0, 0);
}

EXPORT uint64_t emsan_mmio_read(void *uc, uint64_t offset, unsigned size, void *ud)
{
    (void)uc;
    heap_t *h = ud;
    uint64_t addr = h->base + offset, v = 0;
    if (UNLIKELY(shadow_access_bad(h, addr, size))) bad_access(h, addr, size, 0);
    memcpy(&v, h->mm->host + offset, size);
    return v;
}

EXPORT void emsan_mmio_write(void *uc, uint64_t offset, unsigned size, uint64_t value, void *ud)
{
    (void)uc;
    heap_t *h = ud;
    uint64_t addr = h->base + offset;
    if (UNLIKELY(shadow_access_bad(h, addr, size))) bad_access(h, addr, size, 1);
    memcpy(h->mm->host + offset, &value, size);
}

/* The PC, registers and candidate PCs of the first bad access (for locating the instruction). */
EXPORT int emsan_mmio_last_error(emsan_heap *h, uint64_t *block, uint64_t *regs, uint64_t *cands, int *ncand)
{
    struct mmio_state *m = h->mm;
    if (!m || !m->err_pending) return 0;
    *block = m->err_block;
    *ncand = m->err_ncand;
    memcpy(cands, m->err_cand, sizeof m->err_cand);
    memcpy(regs, m->err_regs, (size_t)m->nregs * sizeof *regs);
    m->err_pending = 0;
    return m->nregs;
}
